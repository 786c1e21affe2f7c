"""Scoring throughput on a DICOM series built from the real CT sources.

    python benchmarks/score_series.py                 # 100 slices, clinreadnet at 224, CPU
    python benchmarks/score_series.py --slices 300 --json out.json

Measures, on the same series: decode-only (read + HU + preprocess), model-only (forward on
ready tensors) and end-to-end (the score workflow: threaded decode overlapped with the
model), plus the wall time of the ``clinreadnet score`` command. The weights are the real
configuration with random values: the compute is the same as for trained weights.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import SOURCES, print_rows, write_json

from clinreadnet_cli.archs import create_model
from clinreadnet_cli.checkpoint import save_weights
from clinreadnet_cli.dicom_export import write_series
from clinreadnet_cli.preprocess import prepare_slice
from clinreadnet_cli.readers import discover
from clinreadnet_cli.scoring import score_series



def build_series(out: Path, n: int) -> None:
    """n slices cycled from the first source file, written as one uncompressed series."""
    hu = np.load(SOURCES / "tcia-pancreatic-ct-cbct-seg_Pancreas-CT-CB_001.npz")["hu"]
    write_series(hu[np.arange(n) % len(hu)].astype(np.float32), out, thickness=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--model", default="clinreadnet")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    device = torch.device("cpu")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_series(tmp / "series", args.slices)
        torch.manual_seed(0)
        model = create_model(args.model, img_size=args.img_size).eval()
        weights = save_weights(model, tmp / "w.safetensors")
        series = discover([tmp / "series"]).series

        start = time.perf_counter()
        tensors = [prepare_slice(ref.load(), ref.value_range, model.config) for s in series for ref in s.slices]
        decode = time.perf_counter() - start

        batches = torch.stack(tensors).split(args.batch)
        with torch.inference_mode():
            model(batches[0])  # warm-up
            start = time.perf_counter()
            for batch in batches:
                model(batch)
            model_only = time.perf_counter() - start

        start = time.perf_counter()
        n = sum(1 for _ in score_series(discover([tmp / "series"]).series, model, device,
                                        batch_size=args.batch, workers=args.workers))
        end_to_end = time.perf_counter() - start
        assert n == args.slices

        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "clinreadnet_cli", "score", str(tmp / "series"), "--weights",
                        str(weights), "--format", "jsonl", "--device", "cpu", "--batch-size", str(args.batch)],
                       check=True, stdout=subprocess.DEVNULL)
        command = time.perf_counter() - start

    rows = {
        "decode_only_slices_per_s": args.slices / decode,
        "model_only_slices_per_s": args.slices / model_only,
        "end_to_end_slices_per_s": args.slices / end_to_end,
        "end_to_end_over_model_only": model_only / end_to_end,
        "command_wall_s": command,
        "command_slices_per_s": args.slices / command,
    }
    print(f"{args.slices}-slice DICOM series, {args.model} at {args.img_size}, batch {args.batch}, "
          f"{args.workers} decode workers, CPU ({torch.get_num_threads()} threads)")
    print_rows(rows, width=30)
    write_json(args.json_path, rows, args)


if __name__ == "__main__":
    main()
