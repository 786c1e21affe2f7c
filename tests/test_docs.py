"""The front door: the documentation site builds with no dead link or missing page, its CLI
reference names every command and option the app has, and the README, the model card and the
tracked tree stay within their sizes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clinreadnet_cli.cli import app
from clinreadnet_cli.records import FIELD_MEANINGS, FIELDS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO,
                           capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert built.returncode == 0, built.stderr
    return out


def _text(page: Path) -> str:
    return re.sub(r"<[^>]+>", " ", page.read_text()).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def test_the_cli_reference_names_every_command_and_option_of_the_help(site):
    reference = _text(site / "cli" / "index.html")
    commands = re.findall(r"^│ (\S+)\s", _help().split("Commands", 1)[1], flags=re.M)
    assert {"score", "report", "score-archive", "listen", "train", "evaluate", "simulate", "configs"} <= set(commands)
    for command in commands:
        assert f"clinreadnet {command} " in reference, command
        options = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", _help(command)))
        assert "--help" in options
        section = reference.split(f"clinreadnet {command} ", 1)[1]
        missing = sorted(option for option in options if option not in section)
        assert not missing, (command, missing)


def test_the_record_table_is_the_code_s_field_list(site):
    assert list(FIELD_MEANINGS) == FIELDS
    page = _text(site / "scoring" / "index.html")
    for field in FIELDS:
        assert re.search(rf"\b{field}\b", page), field


def test_the_api_page_documents_the_entry_points(site):
    page = _text(site / "api" / "index.html")
    for name in ("score_paths", "score_array", "Scorer", "records"):
        assert name in page


def test_front_door_sizes():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
    assert len((REPO / "docs" / "model-card.md").read_text().splitlines()) <= 250
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    files = [REPO / name for name in listed.stdout.decode().split("\0") if name]
    assert sum(path.stat().st_size for path in files if path.is_file()) <= 60 * 2**20
