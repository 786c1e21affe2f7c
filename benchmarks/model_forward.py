"""Parameter count and forward time per slice of named configs at given input sizes.

    python benchmarks/model_forward.py                      # swin_t and clinreadnet at 224 and 512
    python benchmarks/model_forward.py --models clinreadnet --sizes 224 --batch 8 --json out.json

Eval mode, inference_mode, fp32, random weights (timing does not depend on them). Prints a
table to stdout; ``--json`` also writes the numbers with the machine they were taken on.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import write_json

from clinreadnet_cli.archs import create_model


def time_forward(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> list[float]:
    """Seconds per slice of each of ``repeats`` timed batches, after one warm-up batch."""
    with torch.inference_mode():
        model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) / x.shape[0])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["swin_t", "clinreadnet"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 512])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for size in args.sizes:
        x = torch.rand(args.batch, 1, size, size)
        for name in args.models:
            torch.manual_seed(0)
            model = create_model(name, img_size=size).eval()
            times = time_forward(model, x, args.repeats)
            rows.append({
                "model": name, "img_size": size, "batch": args.batch,
                "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                "median_ms_per_slice": 1000 * statistics.median(times),
                "min_ms_per_slice": 1000 * min(times),
            })
    base = {(r["img_size"]): r["median_ms_per_slice"] for r in rows if r["model"] == "swin_t"}
    print(f"{'model':<22}{'size':>6}{'params (M)':>12}{'ms/slice':>10}{'min':>8}{'vs swin_t':>11}")
    for r in rows:
        ratio = r["median_ms_per_slice"] / base[r["img_size"]] if r["img_size"] in base else float("nan")
        r["ratio_vs_swin_t"] = ratio
        print(f"{r['model']:<22}{r['img_size']:>6}{r['params_m']:>12.2f}{r['median_ms_per_slice']:>10.1f}"
              f"{r['min_ms_per_slice']:>8.1f}{ratio:>10.2f}x")
    write_json(args.json_path, rows)


if __name__ == "__main__":
    main()
