"""The study report: one self-contained page, rebuilt without the model, and shown by a real browser."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clinreadnet_cli.archs import create_model
from clinreadnet_cli.checkpoint import save_weights
from clinreadnet_cli.cli import app
from clinreadnet_cli.dicom_export import write_series

from .conftest import ct_phantom, tiny_config

runner = CliRunner()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    return save_weights(create_model(tiny_config()), tmp_path_factory.mktemp("w") / "tiny.safetensors")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    paths = write_series(ct_phantom(4, 96), root / "chest", description="Chest low dose", z0=-10.0)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.KVP, ds.CTDIvol, ds.ConvolutionKernel = 100, 2.5, "B30f"
        ds.save_as(path)
    (root / "damaged.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    return root


@pytest.fixture(scope="module")
def page(study, weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("r") / "report.html"
    result = runner.invoke(app, ["report", str(study), "-o", str(out), "--weights", str(weights), "--worst", "2"])
    assert result.exit_code == 1, result.stderr  # the damaged file is an error; the series is reported
    return out


def _images(html: str) -> dict[str, list[np.ndarray]]:
    found: dict[str, list[np.ndarray]] = {}
    for css, data in re.findall(r'<img class="(\w+)" alt="[^"]*" src="data:image/png;base64,([^"]+)">', html):
        found.setdefault(css, []).append(np.asarray(Image.open(io.BytesIO(base64.b64decode(data)))))
    return found


def test_the_page_is_one_self_contained_file(page):
    html = page.read_text()
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing to fetch: every image is embedded
    images = _images(html)
    assert len(images["plot"]) == 1 and len(images["slice"]) == 2  # one series, its two lowest slices
    slice_png = images["slice"][0]
    assert slice_png.shape[1] > 2 * slice_png.shape[0]  # the slice and, beside it, its quality map
    assert "Chest low dose" in html and "B30f" in html and "100" in html  # acquisition from the records
    assert "damaged.dcm" in html and "Inputs that could not be scored" in html
    assert "tiny.safetensors" in html  # the weights used
    assert len(re.findall(r"patient \d+ mm water-equivalent", html)) == 2  # each shown slice's patient size


def test_a_report_is_rebuilt_from_records_without_the_model(study, weights, tmp_path):
    records = tmp_path / "records.jsonl"
    scored = runner.invoke(app, ["score", str(study), "--weights", str(weights), "--output", str(records)])
    assert scored.exit_code == 1
    out = tmp_path / "rebuilt.html"
    result = runner.invoke(app, ["report", "--records", str(records), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    images = _images(out.read_text())
    assert len(images["plot"]) == 1 and len(images["slice"]) == 2
    assert images["slice"][0].shape[1] == images["slice"][0].shape[0]  # no model, so no map beside it
    assert "rebuilt from records" in out.read_text()


def test_uncertainty_is_in_every_record(study, weights):
    lines = runner.invoke(app, ["score", str(study / "chest"), "--weights", str(weights)]).stdout.splitlines()
    for record in map(json.loads, lines):
        assert record["head_sd"] == pytest.approx(np.std(record["head_scores"]), abs=2e-4)
        assert 0 <= record["entropy"] <= 1 and isinstance(record["uncertain"], bool)


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's): the report was not opened in a browser")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    return chromium, playwright


def test_a_real_browser_renders_the_plot_and_images_without_errors(page, tmp_path):
    chromium, playwright = _browser()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1100, "height": 900})
        errors: list[str] = []
        tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.goto(page.as_uri())
        sizes = tab.eval_on_selector_all("img", "els => els.map(e => [e.className, e.naturalWidth, e.complete])")
        shot = tmp_path / "shot.png"
        tab.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert errors == []
    assert [c for c, *_ in sizes].count("plot") == 1 and all(width > 0 and done for _, width, done in sizes)
    pixels = np.asarray(Image.open(shot).convert("L"), float)
    assert pixels.std() > 20 and (pixels < 64).mean() > 0.01  # not blank: dark slice images are drawn
