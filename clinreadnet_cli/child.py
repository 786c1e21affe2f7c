"""A module of this package run in a child Python process that imports this very package.

``python -m`` would put the current folder first on the import path, so a stray ``json.py`` there,
or another checkout's ``clinreadnet_cli/``, would be imported in place of the real one."""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])


def module_command(module: str, *args: str) -> list[str]:
    """The command that runs ``module`` as ``__main__`` with ``args`` as its ``sys.argv[1:]``."""
    code = (f"import sys; sys.path[0] = {PACKAGE_PARENT!r}; import runpy; "
            f"runpy.run_module({module!r}, run_name='__main__')")
    return [sys.executable, "-c", code, *args]
