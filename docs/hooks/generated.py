"""MkDocs hook: the pages that describe the code are generated from it, never typed twice.

A page holding ``<!-- generated: cli-reference -->`` gets every command, argument and option of the
Typer app; ``<!-- generated: record-fields -->`` gets the record table from ``records.FIELD_MEANINGS``.
"""

from __future__ import annotations

import html

import typer

from clinreadnet_cli.cli import app
from clinreadnet_cli.records import FIELD_MEANINGS, FIELDS

CLI_MARK = "<!-- generated: cli-reference -->"
FIELDS_MARK = "<!-- generated: record-fields -->"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _code(text: str) -> str:
    """Inline code inside a table cell: a code span would show an escaped ``|`` as typed."""
    return "<code>" + html.escape(text).replace("|", "&#124;") + "</code>"


def command_reference(name: str, command, parent) -> str:
    """One command: its help, usage and a row per argument and option, as ``--help`` words them
    (click's own help records, defaults and choices included)."""
    context = command.context_class(command, info_name=name, parent=parent)
    records = [param.get_help_record(context) for param in command.params if not param.hidden]
    rows = [f"| {_code(names)} | {_cell(help_text)} |" for names, help_text in filter(None, records)]
    rows.append("| `--help` | Show the command's help and exit. |")
    usage = " ".join(command.collect_usage_pieces(context))
    return "\n".join([f"## {name}", "", _cell(command.help or ""), "", "```text", f"clinreadnet {name} {usage}", "```",
                      "", "| argument / option | what it does |", "|---|---|", *rows, ""])


def cli_reference() -> str:
    group = typer.main.get_command(app)
    context = group.context_class(group, info_name="clinreadnet")
    names = group.list_commands(context)
    commands = [group.get_command(context, name) for name in names]
    overview = ["| command | what it does |", "|---|---|"]
    overview += [f"| [`{n}`](#{n}) | {_cell((c.help or '').strip().splitlines()[0])} |" for n, c in zip(names, commands)]
    return "\n".join([*overview, "", *(command_reference(n, c, context) for n, c in zip(names, commands))])


def record_fields() -> str:
    rows = [f"| `{name}` | {_cell(FIELD_MEANINGS[name])} |" for name in FIELDS]
    return "\n".join(["| field | meaning |", "|---|---|", *rows])


def on_page_markdown(markdown: str, **_) -> str:
    if CLI_MARK in markdown:
        markdown = markdown.replace(CLI_MARK, cli_reference())
    if FIELDS_MARK in markdown:
        markdown = markdown.replace(FIELDS_MARK, record_fields())
    return markdown
