"""Labelled slices for training and evaluation: the LDCTIQAG2023 layouts, or a CSV.

Layouts:
  training  DIR/image/0000.tif ... + DIR/train.json   {"0000.tif": 2.8, ...}
            (+ optional DIR/manifest.csv with path,group: the patients, as ``simulate`` writes it)
  test      DIR/images/*.tif(f)  + DIR/test.json      (same shape)
  CSV       path,score[,group][,slice]  (paths relative to the CSV; any format ``score`` reads)

Scores are the mean radiologist score in [0, 4]; the class is round(score x 5), 0..20.
Images are read by the same readers and preprocessing as ``clinreadnet score``.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .archs.heads import CLASSES_PER_POINT
from .config import ClinReadNetConfig
from .preprocess import prepare_slice
from .readers import InputError, SliceRef, discover


class DatasetError(ValueError):
    """A dataset that cannot be used, with every problem found named in the message."""


@dataclass(frozen=True)
class LabelledSlice:
    key: str  # the name the labels file uses (e.g. "0000.tif") or the CSV path
    path: Path
    score: float
    group: str | None = None  # patient, when known: keeps a patient on one side of the split
    slice: int = 0  # index within the file's series / volume
    source: str | None = None  # the slice a simulated image was made from, when known

    @property
    def label(self) -> int:
        return score_to_class(self.score)


def score_to_class(score: float) -> int:
    return int(math.floor(score * CLASSES_PER_POINT + 0.5))


def _listed(problems: list[str]) -> str:
    shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
    return "; ".join(shown)


def _fail(source: Path, problems: list[str]) -> None:
    if problems:
        raise DatasetError(f"{source}: {_listed(problems)}")


def _read_labels_json(path: Path) -> dict[str, float]:
    problems: list[str] = []

    def no_duplicates(pairs):
        counts = Counter(k for k, _ in pairs)
        problems.extend(f"duplicate key {k!r}" for k, n in counts.items() if n > 1)
        return dict(pairs)

    try:
        labels = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=no_duplicates)
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read labels ({exc})") from None
    if not isinstance(labels, dict):
        raise DatasetError(f"{path}: expected an object {{\"0000.tif\": 2.8, ...}}")
    _fail(path, problems)
    return labels


def _check_scores(source: Path, entries: dict[str, object]) -> list[str]:
    problems = []
    for key, score in entries.items():
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not 0 <= float(score) <= 4:
            problems.append(f"score of {key!r} is {score!r}, not a number in [0, 4]")
    return problems


def _from_layout(root: Path, image_dirs: tuple[str, ...], labels_name: str) -> list[LabelledSlice]:
    labels_path = root / labels_name
    image_dir = next((root / d for d in image_dirs if (root / d).is_dir()), root / image_dirs[0])
    labels = _read_labels_json(labels_path)
    problems = _check_scores(labels_path, labels)
    problems += [f"{key!r} has no image {image_dir / key}" for key in labels if not (image_dir / key).is_file()]
    _fail(labels_path, problems)
    manifest = root / "manifest.csv"  # patients, where ``simulate`` wrote the folder
    rows = read_manifest(manifest, {"path", "group"}) if manifest.is_file() else {}
    return [LabelledSlice(key=k, path=image_dir / k, score=float(v), group=row.get("group") or None,
                          source=row.get("source") or None)
            for k, v in sorted(labels.items()) for row in [rows.get(k, {})]]


def read_manifest(path: Path, columns: set[str]) -> dict[str, dict]:
    """Image name -> row of a manifest as ``simulate`` writes it; it must have ``columns``."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not columns <= set(rows[0]):
        raise DatasetError(f"{path}: a manifest needs the columns {', '.join(sorted(columns))}")
    return {Path(r["path"]).name: r for r in rows}


def _from_csv(path: Path) -> list[LabelledSlice]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    if not rows or not {"path", "score"} <= set(rows[0]):
        raise DatasetError(f"{path}: expected a CSV with columns path,score (and optionally group, slice)")
    problems: list[str] = []
    items, seen = [], Counter()
    for n, row in enumerate(rows, start=2):
        key = f"{row['path']}#{row.get('slice') or 0}"
        seen[key] += 1
        try:
            score = float(row["score"])
        except ValueError:
            problems.append(f"line {n}: score {row['score']!r} is not a number")
            continue
        file = (path.parent / row["path"]).resolve() if not Path(row["path"]).is_absolute() else Path(row["path"])
        if not file.exists():
            problems.append(f"line {n}: no file {file}")
        items.append(LabelledSlice(key=key, path=file, score=score, group=row.get("group") or None,
                                   slice=int(row.get("slice") or 0)))
    problems += _check_scores(path, {i.key: i.score for i in items})
    problems += [f"duplicate row for {k}" for k, c in seen.items() if c > 1]
    _fail(path, problems)
    return items


def load_labelled(source: str | Path, split: str = "train") -> list[LabelledSlice]:
    """Every labelled slice of one split of a dataset: ``test`` reads images/ + test.json; ``train``
    and ``val`` read image/ + train.json; ``all`` whichever the folder holds. The layout may sit
    in ``source`` or in a folder below it (``ldct/`` holding ``LDCTIQAG2023_train/``). A split the
    data does not have is an error, never a substitute."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return _from_csv(source)
    if not source.is_dir():
        raise DatasetError(f"{source}: no such dataset (a folder in the LDCTIQAG2023 layout or a .csv)")
    if split == "all":
        names = [n for n in ("train.json", "test.json") if (source / n).is_file()] or ["train.json", "test.json"]
    else:
        names = ["test.json" if split == "test" else "train.json"]
    root, labels_name = find_layout(source, names)
    image_dirs = ("images",) if labels_name == "test.json" else ("image", "images")
    return _from_layout(root, image_dirs, labels_name)


def find_layout(source: Path, labels_names: list[str]) -> tuple[Path, str]:
    """The folder holding one of ``labels_names``: ``source`` itself, else the one folder below it
    (up to two levels) that does. Raises DatasetError when there is none or more than one."""
    for name in labels_names:
        if (source / name).is_file():
            return source, name
    below = sorted({(p.parent, name) for name in labels_names for depth in ("*", "*/*")
                    for p in source.glob(f"{depth}/{name}")})
    if len(below) == 1:
        return below[0]
    wanted = " or ".join(labels_names)
    if below:
        raise DatasetError(f"{source}: {len(below)} datasets with {wanted} below it "
                           f"({', '.join(str(p) for p, _ in below[:4])}); pass one of them")
    split = "test" if labels_names == ["test.json"] else "training"
    raise DatasetError(f"{source}: no {split} split ({wanted} beside its image folder) in it or below it")


# --- split --------------------------------------------------------------------------------
def class_quotas(labels: list[int], fraction: float, rng: np.random.Generator) -> Counter:
    """How many of each class go to the validation side: round(N x fraction) in all, each class
    its share by largest remainder (ties broken at random)."""
    counts = Counter(labels)
    classes = sorted(counts)
    exact = np.array([counts[c] * fraction for c in classes])
    quota = np.floor(exact).astype(int)
    left = int(round(len(labels) * fraction)) - int(quota.sum())
    remainders = exact - quota + rng.random(len(classes)) * 1e-9
    for i in np.argsort(-remainders)[:max(left, 0)]:
        quota[i] += 1
    return Counter(dict(zip(classes, quota.tolist())))


def split_train_val(items: list[LabelledSlice], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Keys for (train, validation), stratified by class and fixed by ``seed``.

    Without groups every class sends exactly its quota to validation (1,000 images at 0.2 give
    the paper's 800/200). Slices sharing a group (patient) are placed together: groups are taken
    in a seeded random order (so validation holds a sample of patients, not just the largest) and
    a group goes to validation while the classes it holds still have quota left there and it fits.
    """
    rng = np.random.default_rng(seed)
    groups: dict[str, list[LabelledSlice]] = defaultdict(list)
    for item in items:
        groups[item.group if item.group is not None else f"\0{item.key}"].append(item)
    quota = class_quotas([i.label for i in items], val_fraction, rng)
    n_val = sum(quota.values())
    order = list(groups)
    rng.shuffle(order)
    val_keys: list[str] = []
    train_keys: list[str] = []
    for g in order:
        members = groups[g]
        fits = sum(min(quota[m.label], 1) for m in members) >= len(members) / 2
        if fits and len(val_keys) + len(members) <= n_val:
            val_keys += [m.key for m in members]
            quota.subtract(m.label for m in members)
        else:
            train_keys += [m.key for m in members]
    return sorted(train_keys), sorted(val_keys)


class SourceRunSampler(Sampler[int]):
    """Every index once an epoch, in shuffled runs of ``run`` images made from one source slice, so
    that each batch compares acquisitions of the same slice (the ranking term's pairs). Images of
    no known source run alone. Seeded by (seed, epoch) like DistributedSampler, and split the same
    way over ``num_replicas`` processes: each takes every num_replicas-th block of ``block`` indices
    (its batch), so runs are not cut between processes when ``block`` is a multiple of ``run``."""

    def __init__(self, items: list[LabelledSlice], run: int, block: int, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0):
        self.run, self.block, self.seed, self.num_replicas, self.rank = run, block, seed, num_replicas, rank
        by_source: dict[str, list[int]] = defaultdict(list)
        for index, item in enumerate(items):
            by_source[item.source if item.source is not None else f"\0{index}"].append(index)
        self.by_source = list(by_source.values())
        self.blocks = len(items) // (block * num_replicas)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.blocks * self.block

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        runs = [[members[i] for i in order[start:start + self.run]]
                for members in self.by_source
                for order in [rng.permutation(len(members))]
                for start in range(0, len(members), self.run)]
        order = [index for r in rng.permutation(len(runs)) for index in runs[r]]
        mine = [order[b * self.block:(b + 1) * self.block]
                for b in range(self.rank, self.blocks * self.num_replicas, self.num_replicas)]
        return iter([index for block in mine for index in block])


# --- torch dataset ------------------------------------------------------------------------
def slice_ref(item: LabelledSlice, input_range: str) -> SliceRef:
    found = discover([item.path], input_range)
    if found.errors:
        raise found.errors[0]
    slices = [ref for s in found.series for ref in s.slices]
    if not 0 <= item.slice < len(slices):
        raise InputError(item.path, f"has {len(slices)} slice(s); slice {item.slice} was asked for")
    return slices[item.slice]


def check_readable(items: list[LabelledSlice], input_range: str) -> None:
    """Read every image once in this process, header and pixels through the readers' checks, so that
    each file that cannot be read, needs ``--input-range`` or holds no CT image (``score`` would
    refuse it) is named in one error before training or evaluation starts, not a crash inside a
    loader worker mid-epoch (about 10 ms an image)."""
    problems = []
    for item in {(item.path, item.slice): item for item in items}.values():  # an image drawn N times, once
        try:
            slice_ref(item, input_range).load()
        except InputError as exc:
            problems.append(f"{exc.path}: {exc.reason}")
    if problems:
        raise DatasetError(f"{len(problems)} image(s) cannot be used: {_listed(problems)}")


class SliceDataset(Dataset):
    """(image (C, S, S) in [0, 1], target) pairs, through the score command's readers and preprocessing.

    The target is the item's class, or with ``targets`` the item's row of it (a teacher's class
    probabilities, for distillation) and its class."""

    def __init__(self, items: list[LabelledSlice], cfg: ClinReadNetConfig, transform=None, input_range: str = "auto",
                 random_grids: int = 0, targets: torch.Tensor | None = None):
        self.items, self.cfg, self.transform, self.input_range = items, cfg, transform, input_range
        # > 1: each item is read through one of the first random_grids sampling grids, drawn at
        # random (a training step), instead of the config's grids
        self.random_grids = random_grids
        self.targets = targets

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | tuple[torch.Tensor, int]]:
        item = self.items[index]
        ref = slice_ref(item, self.input_range)
        grid = int(torch.randint(self.random_grids, ())) if self.random_grids > 1 else None
        image = prepare_slice(ref.load(), ref.value_range, self.cfg, grid)
        if self.transform is not None:
            image = self.transform(image)
        return image, item.label if self.targets is None else (self.targets[index], item.label)
