"""Command line: parse, call the workflows, print. Data goes to stdout, messages to stderr.

Exit codes: 0 all good, 1 some inputs failed, 2 usage error or nothing to do.
"""

from __future__ import annotations

import json
from enum import Enum

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .config import get_config, list_configs

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2

app = typer.Typer(
    name="clinreadnet",
    help="No-reference CT image quality scores on the radiologists' 0-4 scale (ClinReadNet).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = Console()
stderr = Console(stderr=True)


class ListFormat(str, Enum):
    table = "table"
    json = "json"


def _not_available(command: str, missing: str) -> None:
    stderr.print(f"[bold red]clinreadnet {command}[/] is not available in this version yet: {missing}")
    raise typer.Exit(EXIT_USAGE)


@app.command()
def score() -> None:
    """Score every CT slice of the given files and folders (0 bad ... 4 excellent)."""
    _not_available("score", "the CT readers (DICOM, NIfTI, MHA, TIFF) and the shipped weights are still to come.")


@app.command()
def train() -> None:
    """Train a model on the LDCTIQAG2023 layout (image/*.tif + train.json)."""
    _not_available("train", "the dataset loader and training loop are still to come.")


@app.command()
def evaluate() -> None:
    """Report PLCC, SROCC, KROCC and Score of a model on a labelled split."""
    _not_available("evaluate", "the evaluation workflow is still to come.")


@app.command()
def models(fmt: ListFormat = typer.Option(ListFormat.table, "--format", help="table or json")) -> None:
    """List the named model configurations (ClinReadNet and the paper's ablations)."""
    configs = [get_config(name) for name in list_configs()]
    if fmt is ListFormat.json:
        typer.echo(json.dumps([c.to_dict() for c in configs], indent=2))
        return
    table = Table("name", "description", "loss")
    for c in configs:
        table.add_row(c.name, c.description, "HRPS" if c.loss.hrps else "heads CE")
    stdout.print(table)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"clinreadnet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass


def main() -> None:
    app()
