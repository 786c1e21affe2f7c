"""clinreadnet configs: the named model configurations and the paper rows they reproduce."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from ..config import get_config, list_configs
from .app import ListFormat, app, stdout


@app.command()
def configs(fmt: ListFormat = typer.Option(ListFormat.table, "--format", help="table or json")) -> None:
    """List the named model configurations: ClinReadNet and every comparison of the paper (Tabs. 3-8)."""
    named = [get_config(name) for name in list_configs()]
    if fmt is ListFormat.json:
        typer.echo(json.dumps([c.to_dict() for c in named], indent=2))
        return
    table = Table("name", "what it is (paper table, row)", "loss")
    for c in named:
        table.add_row(c.name, c.description, "HRPS" if c.loss.hrps else "CE")
    stdout.print(table)


app.command("models", hidden=True)(configs)  # its earlier name, kept for scripts that use it
