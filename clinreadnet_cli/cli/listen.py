"""clinreadnet listen: a DICOM node that scores the CT series pushed to it."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .app import (
    DEFAULT_WEIGHTS_HELP,
    EXIT_OK,
    EXIT_PARTIAL,
    PRECISION_HELP,
    RUNTIME_HELP,
    Device,
    Precision,
    Runtime,
    app,
    stderr,
    usage_error,
    weights_file,
)

LEVEL_STYLE = {"info": "dim", "warning": "yellow", "error": "bold red"}


@app.command()
def listen(
    out: Path = typer.Option(..., "--out", "-o", help="Results folder (the score-archive layout: records/, "
                                                      "series.parquet, manifest.jsonl), with spool/ and sr/."),
    port: int = typer.Option(11112, min=1, max=65535, help="TCP port to listen on."),
    host: str = typer.Option("", help="Address to listen on. Default: every interface."),
    ae_title: str = typer.Option("CLINREADNET", help="This node's AE title."),
    allow: Optional[list[str]] = typer.Option(None, help="Calling AE titles allowed to send (repeatable). "
                                                         "Default: any."),
    series_timeout: float = typer.Option(30.0, min=0.0, help="Score a series once no instance of it has come for "
                                                             "this many seconds."),
    forward: Optional[str] = typer.Option(None, help="Send each series' Structured Report to this DICOM peer, "
                                                     "AE@HOST:PORT (C-STORE)."),
    max_spool_gib: float = typer.Option(10.0, min=1e-6, help="Refuse instances (out of resources) while the "
                                                              "received, unscored ones take this much disk."),
    weights: Optional[Path] = typer.Option(None, help=DEFAULT_WEIGHTS_HELP),
    device: Device = typer.Option(Device.auto, help="auto picks CUDA when present."),
    precision: Precision = typer.Option(Precision.auto, help=PRECISION_HELP),
    runtime: Runtime = typer.Option(Runtime.auto, help=RUNTIME_HELP),
    batch_size: int = typer.Option(8, min=1, help="Forward passes per model call."),
    workers: str = typer.Option("auto", help="Decoding processes (auto: on the CPU one, with a GPU every free "
                                             "core but one)."),
    threshold: float = typer.Option(2.0, help="series.parquet and the SRs count slices scoring below this."),
) -> None:
    """Receive CT studies by DICOM (C-STORE) and score each series once it is complete; stop with Ctrl-C
    or SIGTERM (series not yet scored stay spooled and are scored on the next start)."""
    from ..engine.allocator import run_on_system_allocator

    run_on_system_allocator()
    from ..api import ScorerSpec
    from ..dicomnet.dimse import Peer
    from ..engine.node import ListenError, Node
    from ..engine.tables import TableError
    from ..engine.base import ArchiveOptions
    from ..engine.local import decode_workers

    if len(ae_title) > 16 or any(t for t in (allow or []) if len(t) > 16):
        usage_error("AE titles are at most 16 characters")
    weights_path = weights_file(weights)
    try:
        peer = Peer.parse(forward) if forward else None
        options = ArchiveOptions(workers=decode_workers(workers, device.value), threshold=threshold)
        spec = ScorerSpec(weights_path, device.value, precision.value, None, batch_size, runtime=runtime.value)
        node = Node(out, spec, options, ae_title, series_timeout, int(max_spool_gib * 2**30), allow, peer, log=_log)
    except ValueError as exc:  # WeightsError, ConfigError, a malformed peer
        usage_error(str(exc))

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        node.serve(port, host, stop, on_listening=lambda: _log(
            "info", f"{ae_title} listening on {host or '*'}:{port}; results in {out}"))
    except KeyboardInterrupt:
        pass
    except ValueError as exc:  # ArchiveError (a folder of another run), WeightsError
        usage_error(str(exc))
    except ListenError as exc:  # the port is taken, or not ours to use
        usage_error(str(exc))
    except (OSError, TableError) as exc:  # the results folder could not be written (disk full, ...)
        _log("error", f"stopped: results not written ({exc}); series not yet scored stay in the spool")
        raise typer.Exit(EXIT_PARTIAL)
    _log("info", "stopped; series not yet scored stay in the spool for the next start")
    raise typer.Exit(EXIT_OK)


def _log(level: str, message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    stderr.print(f"[{LEVEL_STYLE[level]}]{stamp} {level}:[/] {escape(message)}", soft_wrap=True)
