"""One training folder from several ``simulate`` folders: ``image/`` links prefixed per folder,
one ``train.json``, one ``manifest.csv`` and a ``split.json`` for ``train --split-file``.

The split's val list is every labelled image of the held-out folder; its train list takes, from
each training folder, its untouched images REPEAT times and a KEEP share of its degraded ones
(drawn with --seed). A patient of the held-out folder is left out of every training folder: its
images are neither linked nor labelled. The manifest holds each linked image's row with its
path renamed, its ``score`` set to the label it trains on, and its ``source`` prefixed like its
link, so ``train --images-per-source`` and the ordering reports see one simulation's images of
a slice together and never pair them with another simulation's (each labels against its own
full dose).

    python scripts/mix_datasets.py OUT --heldout SIM_VAL --train SIM_A:2:0.4 --train SIM_B:3:0.5 \\
        --labels train-source.json

``--val-count 192`` keeps that many held-out images, drawn at random, in the split's val list.
``--again-filter hann:0.5`` draws a kernel's full reconstructions twice (the twenty-fourth
attempt): a second link of each, whose source slices form runs of their own as if simulated
again, so the ranking term pairs them among themselves.

Each folder needs ``manifest.csv`` and the labels file (``--labels``, e.g. the source-unit labels
``label_ordering.py --write`` saves). The links point at the folders' images, so OUT is small.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinreadnet_cli.atomic import write_text_atomic  # noqa: E402
from clinreadnet_cli.data import DatasetError, read_manifest  # noqa: E402
from clinreadnet_cli.simulate.dataset import manifest_csv  # noqa: E402


def training_folder(spec: str) -> tuple[Path, int, float]:
    """FOLDER[:REPEAT[:KEEP]] -> (folder, repeat, keep); by default every image once."""
    folder, repeat, keep = (spec.split(":") + ["1", "1"])[:3]
    repeat, keep = int(repeat), float(keep)
    if repeat < 0 or not 0 <= keep <= 1:
        raise argparse.ArgumentTypeError(f"{spec}: REPEAT must be >= 0 and KEEP in [0, 1]")
    return Path(folder), repeat, keep


def read_labels(folder: Path, labels_name: str, rows: dict[str, dict]) -> dict[str, float]:
    """``folder``'s labels; every labelled image needs its manifest row (its patient and kind)."""
    labels = json.loads((folder / labels_name).read_text())
    missing = sorted(set(labels) - set(rows))
    if missing:
        raise SystemExit(f"{folder / labels_name}: {len(missing)} labelled images have no row in "
                         f"{folder / 'manifest.csv'} (first: {missing[0]})")
    return labels


def link_images(out: Path, folder: Path, prefix: str, folder_labels: dict[str, float], rows: dict[str, dict],
                labels: dict[str, float], manifest: list[dict]) -> dict[str, str]:
    """Link the images of ``folder_labels`` into ``out/image`` as ``prefix + name``, adding their labels and
    manifest rows; name -> the link's."""
    links = {}
    for name, score in folder_labels.items():
        link, target = out / "image" / f"{prefix}{name}", (folder / "image" / name).resolve()
        if link.is_symlink() and Path(os.readlink(link)) != target:
            link.unlink()  # OUT reused with other folders
        if not link.is_symlink():
            os.symlink(target, link)
        labels[link.name] = score
        row = rows[name]
        manifest.append({**row, "path": f"image/{link.name}", "score": float(score),
                         "source": f"{prefix}{row['source']}" if row.get("source") else ""})
        links[name] = link.name
    return links


def main() -> None:
    try:
        mix()
    except (DatasetError, OSError) as exc:  # a missing or incomplete manifest: one line, no traceback
        raise SystemExit(str(exc)) from None


def mix() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--heldout", type=Path, required=True, help="simulate folder of the held-out patients (val)")
    parser.add_argument("--train", type=training_folder, action="append", required=True,
                        help="FOLDER[:REPEAT[:KEEP]], repeatable")
    parser.add_argument("--again-filter", action="append", default=[], metavar="FILTER",
                        help="full reconstructions with this filter (e.g. hann:0.5) enter training a second "
                             "time, linked again as a simulation of their own; repeatable")
    parser.add_argument("--labels", default="train.json", help="labels file inside each folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-count", type=int, metavar="N",
                        help="validate on N held-out images drawn with --seed (validation only picks the epoch); "
                             "default: all of them")
    args = parser.parse_args()
    draw = random.Random(args.seed)
    (args.out / "image").mkdir(parents=True, exist_ok=True)
    labels: dict[str, float] = {}
    manifest: list[dict] = []
    held_rows = read_manifest(args.heldout / "manifest.csv", {"group"})
    held_patients = {row["group"] for row in held_rows.values()}
    held_labels = read_labels(args.heldout, args.labels, held_rows)
    val = sorted(link_images(args.out, args.heldout, "h_", held_labels, held_rows, labels, manifest).values())
    if args.val_count is not None:
        random.Random(args.seed).shuffle(val)
        val = sorted(val[:args.val_count])
    train: list[str] = []
    for k, (folder, repeat, keep) in enumerate(args.train):
        rows = read_manifest(folder / "manifest.csv", {"group", "kind"})
        # A held-out patient's images in a training folder are neither linked nor labelled.
        folder_labels = {name: score for name, score in read_labels(folder, args.labels, rows).items()
                         if rows[name]["group"] not in held_patients}
        for name, link in link_images(args.out, folder, f"t{k}_", folder_labels, rows, labels, manifest).items():
            if rows[name]["kind"] == "source":
                train += [link] * repeat
            elif draw.random() < keep:
                train.append(link)
        again = {name: score for name, score in folder_labels.items()
                 if rows[name]["kind"] == "full" and rows[name].get("filter") in args.again_filter}
        train += link_images(args.out, folder, f"t{k}again_", again, rows, labels, manifest).values()
    columns = tuple(dict.fromkeys(column for row in manifest for column in row))  # folders may differ
    rows = [{column: row.get(column, "") for column in columns} for row in manifest]
    write_text_atomic(args.out / "manifest.csv", manifest_csv(rows, columns))
    write_text_atomic(args.out / "train.json", json.dumps(labels) + "\n")
    write_text_atomic(args.out / "split.json", json.dumps({"train": train, "val": val}, indent=0) + "\n")
    print(f"{len(train)} training entries, {len(val)} held-out images of {len(held_patients)} patients")


if __name__ == "__main__":
    main()
