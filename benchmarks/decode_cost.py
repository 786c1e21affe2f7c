"""The CPU cost of decoding one slice, stage by stage (``decoding.prepare``), in one process.

    python benchmarks/decode_cost.py --json benchmarks/results/decode_cost.json

On a ``scoring.build_series`` series of 512² slices: CPU ms per slice (time.process_time, so a
busy machine inflates it less than wall time would, though still some: each row notes the load
average) of reading the pixels (pydicom parses the file again, header included, after discovery
read the headers), the content checks, the network input (``sample_slice``, the weights' input
path), the 9 x 9 mean that the noise figure and the patient size both threshold
(``noise.smoothed_hu``, computed once), the noise figure and the patient size; then ``prepare``
itself, all of them in one call. Every stage's best of ``--repeats`` passes over the series is
reported. Freed memory is kept for reuse as in a decoding worker (``engine.allocator.reuse_freed_memory``;
``--system-malloc`` measures without). Measures only; nothing here passes or fails on a time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import write_json
from scoring import build_series

from clinreadnet_cli.checkpoint import default_weights, read_config
from clinreadnet_cli.decoding import prepare
from clinreadnet_cli.engine.allocator import reuse_freed_memory
from clinreadnet_cli.noise import measure_noise, smoothed_hu
from clinreadnet_cli.patient_size import measure_diameter
from clinreadnet_cli.preprocess import sample_slice
from clinreadnet_cli.readers import discover
from clinreadnet_cli.readers.content import content_problem

STAGES = ("read (pydicom decode + HU)", "content checks", "sample_slice", "smoothed_hu (9 x 9 mean, shared)",
          "measure_noise", "measure_diameter")


def stage_pass(refs, cfg) -> list[float]:
    """CPU seconds of each stage of ``prepare``, summed over ``refs``."""
    totals = [0.0] * len(STAGES)
    for ref in refs:
        start = time.process_time()
        image = ref.decode()
        marks = [time.process_time()]
        assert content_problem(image, ref.value_range) is None
        marks.append(time.process_time())
        sample_slice(image, ref.value_range, cfg)
        marks.append(time.process_time())
        smoothed = smoothed_hu(image)
        marks.append(time.process_time())
        measure_noise(image, ref.value_range, smoothed)
        marks.append(time.process_time())
        measure_diameter(image, ref.value_range, ref.pixel_spacing_mm, smoothed)
        marks.append(time.process_time())
        for k, (before, after) in enumerate(zip([start, *marks], marks)):
            totals[k] += after - before
    return totals


def prepare_pass(series, cfg) -> float:
    """CPU seconds of ``prepare`` over every slice of ``series``."""
    start = time.process_time()
    for s in series:
        for ref in s.slices:
            prepare(ref, s, cfg)
    return time.process_time() - start


def decode_cost(series_dir: Path, cfg, repeats: int) -> list[dict]:
    load = os.getloadavg()[0]
    start = time.process_time()
    series = discover([series_dir]).series
    discovery = time.process_time() - start
    refs = [ref for s in series for ref in s.slices]
    n = len(refs)
    stage_passes = [stage_pass(refs, cfg) for _ in range(repeats)]
    best = [min(p[k] for p in stage_passes) for k in range(len(STAGES))]
    whole = min(prepare_pass(series, cfg) for _ in range(repeats))
    grids = f", {cfg.sampling_grids} grids" if cfg.sampling_grids > 1 else ""
    label = f"{n} x 512² DICOM, {cfg.input_path} {cfg.img_size}²{grids}"
    measures = [*zip(STAGES, best), ("sum of the stages", sum(best)), ("prepare (all stages in one call)", whole),
                ("discovery (headers, once, not in prepare)", discovery)]
    return [{"benchmark": "decode_cost", "measure": f"{label}: {measure}", "value": 1000 * seconds / n,
             "unit": "CPU ms/slice", "load_avg_1min": load} for measure, seconds in measures]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the series; the best is reported")
    parser.add_argument("--weights", default=None, help="whose input path (default: the shipped weights)")
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--system-malloc", action="store_true", help="leave glibc's default of returning "
                        "freed memory to the system, as decoding workers did before")
    args = parser.parse_args()
    if not args.system_malloc:
        reuse_freed_memory()

    cfg = read_config(args.weights or default_weights())
    with tempfile.TemporaryDirectory() as tmp:
        rows = decode_cost(build_series(Path(tmp) / "series", args.slices), cfg, args.repeats)
    print(f"load average {rows[0]['load_avg_1min']:.1f} on {os.cpu_count()} CPUs")
    for row in rows:
        print(f"{row['measure']:<90}{row['value']:>8.2f} {row['unit']}")
    write_json(args.json_path, rows, args)


if __name__ == "__main__":
    main()
