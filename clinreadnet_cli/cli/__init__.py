"""Command line: a thin layer over the workflows, one module per command (parse, call, print)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings

import typer

from ..version import __version__
from . import configs, evaluate, listen, report, score, score_archive, simulate, train  # noqa: F401  (each registers its command)
from .app import app

__all__ = ["app", "main"]


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
    # Damaged inputs are reported once each by the readers; pydicom's own warnings would repeat them.
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    warnings.filterwarnings("ignore", message=r"Invalid value for VR", category=UserWarning)
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # its complaints become our error records
    # `clinreadnet score ... | head`: a closed pipe ends the process quietly, as for any Unix filter.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        app()
    except SystemExit as done:
        code = done.code
    else:
        code = 0
    # Every command has closed its outputs and its processes by now. What is left is the
    # interpreter's teardown of torch, timm and their thousands of modules: 0.6-1.2 s of every
    # run, 3-4 % of scoring a whole study. Skip it, except after Ray, whose local cluster is
    # stopped by an exit handler, and for a message exit (a string code prints on the normal path).
    if (code is None or isinstance(code, int)) and "ray" not in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    raise SystemExit(code)
