"""What every command shares: the Typer app, the consoles, option choices, exit codes, messages.

Data goes to stdout, messages and progress to stderr. Exit codes: 0 all good, 1 some inputs
failed, 2 usage error or nothing to do, 3 quality gate not met (score --fail-below), 130
interrupted (Ctrl-C).
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..checkpoint import DEFAULT_WEIGHTS_NAME, WeightsError, resolve_weights

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_GATE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

app = typer.Typer(
    name="clinreadnet",
    help="No-reference CT image quality scores on the radiologists' 0-4 scale (ClinReadNet).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = Console()
stderr = Console(stderr=True, soft_wrap=True)  # never break a message across lines
# The --weights help of every command that scores, naming the default in one place.
WEIGHTS_HELP = (f"Weights file (.safetensors) or the shipped weights by name ({DEFAULT_WEIGHTS_NAME}, or "
                f"{DEFAULT_WEIGHTS_NAME.split('.')[1]}).")
DEFAULT_WEIGHTS_HELP = f"{WEIGHTS_HELP} Default: {DEFAULT_WEIGHTS_NAME}."
SAMPLING_GRIDS_HELP = ("Read each slice through N sampling grids (1 or 4, decimate input paths) instead of the "
                       "weights' own number (sim-v4: 4). 1 costs a quarter of the model time; records say which.")


class ListFormat(str, Enum):
    table = "table"
    json = "json"


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


PRECISION_HELP = ("auto: fp32 on the CPU, bf16 autocast on CUDA. bf16 on a CPU with AMX or AVX512-BF16 is 2-3x "
                  "faster; it moves scores by up to 0.02.")


class Runtime(str, Enum):
    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"
    openvino = "openvino"


RUNTIME_HELP = ("Inference runtime: auto takes OpenVINO on the CPU (the model is exported once to the cache "
                "folder, ~/.cache/clinreadnet or CLINREADNET_CACHE) and torch on CUDA; onnxruntime needs "
                "pip install 'clinreadnet[onnxruntime]'.")


WORKERS_HELP = ("Processes decoding slices beside the model: a count, or auto (with a GPU every free core but "
                "one, on the CPU one: the model takes the cores).")


class InputRangeChoice(str, Enum):
    auto = "auto"
    hu = "hu"
    unit = "unit"



def usage_error(message: str) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(EXIT_USAGE)


def stdout_descriptor() -> int | None:
    """stdout's file descriptor, or None where stdout is no real file (a test runner's capture)."""
    try:
        return sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def weights_file(value: Optional[str]) -> Path:
    """The file ``--weights`` names (a path or a shipped name; None: the default), or a usage error
    saying why there is none."""
    try:
        path = resolve_weights(value)
    except WeightsError as exc:
        usage_error(str(exc))
    if not path.is_file():
        usage_error(f"no weights at {path}; pass --weights FILE (a clinreadnet .safetensors file)")
    return path


def print_messages(notes=(), warnings=(), errors=()) -> None:
    """Notes (inputs skipped on purpose), warnings (read with a fallback) and errors, one line each."""
    for note in notes:
        stderr.print(f"[dim]note:[/] {escape(str(note))}")
    for warning in warnings:
        stderr.print(f"[yellow]warning:[/] {escape(str(warning))}")
    for err in errors:
        stderr.print(f"[bold red]error:[/] {escape(str(err))}")


def require_paths(paths) -> None:
    """A path on the command line that does not exist is a typo, not a damaged input: a usage error,
    before anything is loaded or scored (a broken link does exist: it becomes an error record)."""
    missing = [str(p) for p in paths if not (p.exists() or p.is_symlink())]
    if missing:
        usage_error(f"no such file or folder: {', '.join(missing)}")
