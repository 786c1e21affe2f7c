"""A training split in which every untouched source image of a ``simulate`` folder appears N times
(``train`` reads a split's list as given, so a repeated name is drawn N times an epoch). The
untouched images are 3 % of the simulated data and the only ones at the top of the scale.

    python research/repeat_untouched.py RUN/split.json SIM/manifest.csv --times 5 --out split.json

With ``--untouched-val`` the split's ``val`` list becomes the untouched training images instead,
so that ``clinreadnet evaluate --split val --split-file`` scores what the model was shown at the
top of the scale (has it fitted the noisy scanners among its training patients?).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinreadnet_cli.atomic import write_text_atomic  # noqa: E402
from clinreadnet_cli.data import read_manifest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("split", type=Path, help="a training run's split.json")
    parser.add_argument("manifest", type=Path, help="the simulate folder's manifest.csv")
    parser.add_argument("--times", type=int, default=5)
    parser.add_argument("--untouched-val", action="store_true",
                        help="write the untouched training images (once each) as the val list")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    untouched = {name for name, row in read_manifest(args.manifest, {"path", "kind"}).items() if row["kind"] == "source"}
    split = json.loads(args.split.read_text())
    repeated = [name for name in split["train"] if name in untouched]
    if args.untouched_val:
        split["val"] = sorted(set(repeated))
        write_text_atomic(args.out, json.dumps(split, indent=1) + "\n")
        print(f"{len(split['val'])} untouched training images as the val list")
        return
    split["train"] = split["train"] + repeated * (args.times - 1)
    write_text_atomic(args.out, json.dumps(split, indent=1) + "\n")
    print(f"{len(repeated)} untouched training images x {args.times}: {len(split['train'])} training entries")


if __name__ == "__main__":
    main()
