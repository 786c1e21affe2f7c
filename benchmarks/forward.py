"""Model-only forward throughput: clinreadnet vs plain timm swin_t on identical batches, and the
inference options of the fast path (threads, channels-last, int8 linear layers, autocast, compile).

Random weights: the compute does not depend on their values.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from clinreadnet_cli.archs import create_model
from clinreadnet_cli.inference import InferenceOptions, prepare_for_inference


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(run, x: torch.Tensor) -> float:
    """Wall time of one batch, device work included."""
    _sync(x.device)
    start = time.perf_counter()
    run(x)
    _sync(x.device)
    return time.perf_counter() - start


def slices_per_second(model, x: torch.Tensor, repeats: int, options: InferenceOptions | None = None) -> float:
    """Median over ``repeats`` timed batches, after two warm-up batches (compile, autotuning)."""
    run = prepare_for_inference(model, x.device, options or InferenceOptions())
    times = [_seconds(run, x) for _ in range(repeats + 2)][2:]
    return x.shape[0] / statistics.median(times)


def gflop_per_slice(model, size: int, device: torch.device) -> float:
    """Arithmetic of one forward pass of one slice (torch's FLOP counter: matmuls and convolutions)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 1, size, size, device=device))
    return counter.get_total_flops() / 1e9


def compare_models(device: torch.device, sizes: list[int], batch: int, repeats: int) -> list[dict]:
    """clinreadnet and swin_t at each size on the same random batch; ratio = time / swin_t's time.

    The two models run in alternation, batch by batch, so that drifts of a shared machine (other
    processes, clock, allocator state) fall on both alike; each rate is the median of its batches.
    Each row also names the model's GFLOP per slice, the arithmetic the ratio is read against.
    """
    rows = []
    for size in sizes:
        x = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        runs, gflop = {}, {}
        for name in ("swin_t", "clinreadnet"):
            torch.manual_seed(0)
            model = create_model(name, img_size=size).to(device).eval()
            gflop[name] = gflop_per_slice(model, size, device)
            runs[name] = prepare_for_inference(model, device, InferenceOptions())
        times = {name: [] for name in runs}
        for i in range(repeats + 2):
            for name, run in runs.items():
                seconds = _seconds(run, x)
                if i >= 2:  # two warm-up batches each
                    times[name].append(seconds)
        rates = {name: batch / statistics.median(t) for name, t in times.items()}
        for name, rate in rates.items():
            rows.append({"benchmark": "forward",
                         "measure": f"{name} {size}² {device.type} batch {batch}, {gflop[name]:.2f} GFLOP/slice",
                         "value": rate, "unit": "slices/s",
                         "ratio": rates["swin_t"] / rate})  # > 1: slower than swin_t
        del runs
    return rows


def compare_options(device: torch.device, size: int, batch: int, repeats: int,
                    variants: dict[str, tuple[int | None, InferenceOptions]]) -> list[dict]:
    """clinreadnet at ``size`` under each (torch threads, options) variant; ratio = speed-up over the first."""
    x = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    rows, base = [], None
    threads = torch.get_num_threads()
    for label, (variant_threads, options) in variants.items():
        torch.manual_seed(0)
        model = create_model("clinreadnet", img_size=size).to(device).eval()
        if variant_threads:
            torch.set_num_threads(variant_threads)
        try:
            rate = slices_per_second(model, x, repeats, options)
        finally:
            torch.set_num_threads(threads)
        base = base or rate
        rows.append({"benchmark": "options", "measure": f"clinreadnet {size}² {device.type}: {label}",
                     "value": rate, "unit": "slices/s", "ratio": rate / base})
    return rows
