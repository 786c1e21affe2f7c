"""clinreadnet models: the named model configurations."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from ..config import get_config, list_configs
from .app import ListFormat, app, stdout


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
