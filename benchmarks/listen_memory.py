"""Peak memory of ``clinreadnet listen`` scoring a pushed series, beside ``clinreadnet score`` on the
same files, without and with ``--sr`` (the node always writes the series' Structured Report).

    python benchmarks/listen_memory.py --slices 300 --json benchmarks/results/listen_memory.json
    python benchmarks/listen_memory.py --slices 300 --series 3   # a node scoring series after series

Both run with the default weights and settings; score reads every series (the same files).
Memory is each process's high-water mark plus its children's (``scoring.process_peak_rss``; for the
node: its decoding processes and the largest of its short-lived Parquet writers, which run one
after another), and the most they held at one time (``together_mib``). The series are pushed with
pynetdicom's Storage SCU from this process; the node is stopped once its manifest records them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pynetdicom import AE

from common import write_json
from scoring import build_series, command_peak_rss, descendants, poll_peaks

from clinreadnet_cli.checkpoint import resolve_weights
from clinreadnet_cli.engine.base import MANIFEST


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def push(files: list[Path], port: int) -> int:
    ae = AE(ae_title="BENCH")
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
    association = ae.associate("127.0.0.1", port, ae_title="CLINREADNET")
    stored = sum(getattr(association.send_c_store(str(f)), "Status", None) == 0 for f in files)
    association.release()
    return stored


def listen_peak_rss(series: list[Path], weights: Path, out: Path) -> list[tuple[float, float, float, float, int]]:
    """Each series pushed once the node has scored the one before: for each, (the peaks so far of
    the node, of its decoding processes and of the largest of its short-lived children (the
    Parquet writer, one after another), summed, MiB; the most they held at one time so far; the
    node's own process's peak so far; seconds from its first push to it scored; instances stored)."""
    port = free_port()
    log = out.parent / "listen.log"
    node = subprocess.Popen([sys.executable, "-m", "clinreadnet_cli", "listen", "--out", str(out), "--port",
                             str(port), "--weights", str(weights), "--series-timeout", "2"],
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    peaks: dict[int, int] = {}
    together = 0
    results = []
    try:
        while "listening on" not in log.read_text():
            if node.poll() is not None:
                raise RuntimeError(log.read_text())
            together = max(together, poll_peaks(node.pid, peaks))
            time.sleep(0.05)
        for done, folder in enumerate(series, start=1):
            start = time.perf_counter()
            files = sorted(folder.glob("*.dcm"))
            stored = push(files, port)
            while not (out / MANIFEST).exists() or len((out / MANIFEST).read_text().splitlines()) < done:
                together = max(together, poll_peaks(node.pid, peaks))
                time.sleep(0.02)
            seconds = time.perf_counter() - start
            together = max(together, poll_peaks(node.pid, peaks))
            entry = json.loads((out / MANIFEST).read_text().splitlines()[done - 1])
            if entry["slices"] != len(files):
                raise RuntimeError(f"the node scored {entry['slices']} of {len(files)} slices: {log.read_text()[-2000:]}")
            alive = {node.pid, *descendants(node.pid)}
            passing = max((peak for pid, peak in peaks.items() if pid not in alive), default=0)
            summed = sum(peak for pid, peak in peaks.items() if pid in alive) + passing
            results.append((summed / 1024, together / 1024, peaks[node.pid] / 1024, seconds, stored))
    finally:
        node.terminate()
        node.wait(timeout=60)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--series", type=int, default=1,
                        help="series pushed to the node one after another (each of --slices); score reads them all")
    parser.add_argument("--weights", type=Path, default=None, help="default: the shipped default weights")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    weights = resolve_weights(args.weights)
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study"
        series = [build_series(study / f"series{k}", args.slices) for k in range(args.series)]
        score = command_peak_rss(study, weights, "auto", 8, [])
        sr = command_peak_rss(study, weights, "auto", 8, ["--sr", str(Path(tmp) / "sr")])
        node = listen_peak_rss(series, weights, Path(tmp) / "node")
    rows = [{"command": command, "slices": args.slices * args.series, "peak_rss_mib": round(run.mib),
             "together_mib": round(run.together_mib), "seconds": round(run.seconds, 1)}
            for command, run in (("score", score), ("score --sr", sr))]
    for k, (listen_mib, together_mib, node_mib, listen_seconds, stored) in enumerate(node, start=1):
        rows.append({"command": "listen" if args.series == 1 else f"listen, series {k} of {args.series}",
                     "slices": stored, "peak_rss_mib": round(listen_mib), "together_mib": round(together_mib),
                     "node_process_mib": round(node_mib),
                     "seconds": round(listen_seconds, 1),
                     "note": "peak from the node's start; seconds from the series' first push to it scored, "
                             "2 s timeout included"})
    for row in rows:
        print(row)
    write_json(args.json, rows, args)


if __name__ == "__main__":
    main()
