"""Training with the paper's protocol (§4.3, Tab. 1), resumable, single process or torchrun/DDP.

NAdam (lr 1e-4), cosine annealing with warm restarts to 0 (stepped every batch), batch 8,
80 epochs, rotation ±15°, affine scale 0.95-1.20, horizontal and vertical flips. The checkpoint
kept as ``best`` is the one with the highest signed PLCC + SROCC + KROCC on validation (the
challenge's Score adds absolute values, which would reward a model that ranks quality backwards).

A run directory holds: config.json (the resolved training config), split.json (train and
validation keys), metrics.jsonl (one line per epoch), best.safetensors (the weights the score
command loads) and last_state.safetensors (model, optimizer, scheduler and RNG state for
--resume). Nothing is written until the data, split and model are ready; checkpoints and
configs are written atomically; the metrics log is appended one line per finished epoch. The
parent folder's latest.json names the newest run (``evaluate`` uses it by default).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.transforms import v2

from .archs import ClinReadNet, create_model
from .archs.clinreadnet import Prediction
from .atomic import atomic_path, write_text_atomic
from .checkpoint import initialise_from, load_model, resolve_weights, save_weights, weights_identity
from .config import DECIMATE_PATHS, DETAIL_PATHS, STACK_PATHS, ClinReadNetConfig, ConfigError, resolve_config
from .data import (DatasetError, LabelledSlice, SliceDataset, SourceRunSampler, check_readable, load_labelled,
                   split_train_val)
from .losses import create_loss
from .losses.distillation import DistillationLoss
from .metrics import correlation_metrics
from .preprocess import GRID_OFFSETS
from .scoring import cuda_available, resolve_device

STATE_FORMAT = "clinreadnet-train-state/1"
HRPS_TERMS = ("cross_entropy", "fine_rps", "coarse_rps", "entropy")
TRAIN_ONLY = ("heads", "detail-channel", "other-grids", "patch-embedding")
Event = Callable[[str, dict], None]


@dataclass
class TrainConfig:
    data: str
    out: str = "runs/clinreadnet"
    model: str = "clinreadnet"
    img_size: int | None = None  # None: the model config's (224)
    epochs: int = 80
    batch_size: int = 8
    lr: float = 1e-4
    restart_epochs: float = 20.0  # period of the cosine warm restarts, in epochs
    val_fraction: float = 0.2  # 1,000 training images -> the paper's 800 / 200
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    amp: bool = False  # bf16 autocast (CUDA, or a CPU with AVX512-BF16 / AMX; slow on other CPUs)
    augment: bool = True
    loss_off: tuple[str, ...] = ()  # HRPS terms to switch off (Tab. 8): cross_entropy, fine_rps, ...
    backbone_checkpoint: str | None = None
    init_weights: str | None = None  # a clinreadnet weights file or name to fine-tune from
    half_weights: bool = False  # best.safetensors in fp16: half the size, loaded back as fp32
    input_range: str = "auto"
    split_file: str | None = None  # another run's split.json: train and validate on the same images (a fair comparison)
    images_per_source: int = 1  # > 1: batches drawn in runs of this many images of one simulated source slice
    # Train these parameters alone, the rest frozen as --init-weights has them: "heads" (a read-out refit on
    # frozen features), "detail-channel" (the detail channel's patch-embedding weights: a channel added to
    # trained weights starts at zero and, trained with everything else, stays almost unused),
    # "other-grids" (a stacked-grid path started as the one-grid weights through its first grid, the
    # other grids' patch-embedding weights at zero: they alone learn) or "patch-embedding" (the whole
    # first layer: how a stacked-grid path combines its grids)
    train_only: str | None = None
    # Train toward these weights' class distributions (read through all their sampling grids) instead
    # of the labels, which then only pick the epoch on validation (losses/distillation.py)
    distil_from: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)  # config fields, e.g. {"drop_path_rate": 0.2}

    def __post_init__(self) -> None:
        self.loss_off = tuple(self.loss_off)
        unknown = [t for t in self.loss_off if t not in HRPS_TERMS]
        if unknown:
            raise ConfigError(f"unknown loss term(s) {unknown}; choose from {', '.join(HRPS_TERMS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 <= self.val_fraction < 1:
            raise ConfigError("epochs and batch_size must be >= 1, lr > 0, val_fraction in [0, 1)")
        if self.images_per_source < 1:
            raise ConfigError(f"images_per_source must be >= 1, got {self.images_per_source}")
        if self.train_only is not None and self.train_only not in TRAIN_ONLY:
            raise ConfigError(f"train_only {self.train_only!r}: choose from {', '.join(TRAIN_ONLY)}")
        if self.train_only == "detail-channel" and self.model_config().input_path not in DETAIL_PATHS:
            raise ConfigError("train_only detail-channel needs a model whose input path has a detail channel "
                              f"({', '.join(sorted(DETAIL_PATHS))})")
        if self.train_only == "other-grids" and self.model_config().input_path not in STACK_PATHS:
            raise ConfigError("train_only other-grids needs a model whose input path stacks the sampling grids "
                              f"({', '.join(sorted(STACK_PATHS))})")
        if self.train_only and not (self.init_weights or self.backbone_checkpoint):
            raise ConfigError(f"train_only {self.train_only} freezes the rest: it needs --init-weights (or "
                              "--backbone-checkpoint) to take them from")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**data)

    def model_config(self) -> ClinReadNetConfig:
        sizes = {"img_size": self.img_size} if self.img_size else {}
        cfg = resolve_config(self.model, **{**self.model_overrides, **sizes})
        if self.loss_off:
            cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, **{t: False for t in self.loss_off}))
        return cfg


def read_config_file(path: str | Path, _children: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Training options from a TOML or YAML file (keys as in TrainConfig).

    ``base = "other.toml"`` (a path relative to the file) starts from that file's options: this
    file's replace them key by key, and its tables (``model_overrides`` and the tables inside it)
    merge into the base's, so a variant of a recipe states only what it changes.
    """
    path = Path(path)
    if path.resolve() in _children:
        raise ConfigError(f"{path}: its base files name it again ({' <- '.join(str(c) for c in _children)})")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib

            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{path}: config files are .toml, .yaml or .yml")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{path}: cannot parse ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of options")
    options = {k.replace("-", "_"): v for k, v in data.items()}
    base = options.pop("base", None)
    if base is None:
        return options
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a file name, got {base!r}")
    return merged_tables(read_config_file(path.parent / base, (*_children, path.resolve())), options)


def merged_tables(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied: tables merge key by key, any other value replaces."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = merged_tables(merged[key], value)
        merged[key] = value
    return merged


def augmentation(model_cfg: ClinReadNetConfig) -> v2.Compose:
    """Tab. 1: RandomRotation ±15°, RandomAffine scale (0.95, 1.20), horizontal and vertical flips.

    Nearest-neighbour resampling: bilinear interpolation averages neighbouring pixels by a random
    sub-pixel amount, which cuts the FBP noise SD by up to half at random, so a training image's
    noise would no longer match its label. Nearest moves pixels and keeps their values.
    """
    nearest = v2.InterpolationMode.NEAREST
    flips = [StackedGridFlip(-1), StackedGridFlip(-2)] if model_cfg.input_path in STACK_PATHS \
        else [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    return v2.Compose([
        v2.RandomRotation(15, interpolation=nearest),
        v2.RandomAffine(degrees=0, scale=(0.95, 1.20), interpolation=nearest),
        *flips,
    ])


class StackedGridFlip(torch.nn.Module):
    """A random flip of a stacked-grid input (C = the four grids of GRID_OFFSETS): mirrored, the grid
    one native pixel right (or down) of another becomes the one left (or up) of it, so the channels
    swap with the pixels and each keeps its place in the 2 x 2 cell."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        shift = (0, 1) if dim == -1 else (1, 0)  # the offset a flip along dim reverses
        self.order = [GRID_OFFSETS.index(((dy + shift[0]) % 2, (dx + shift[1]) % 2)) for dy, dx in GRID_OFFSETS]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) < 0.5:
            return image.flip(self.dim)[..., self.order, :, :]
        return image


# --- state files (safetensors; no pickles) -----------------------------------------------------
def save_state(path: Path, model: ClinReadNet, optimizer, scheduler, epoch: int, best: float) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    scalars = {}
    opt = optimizer.state_dict()
    for index, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if cuda_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    metadata = {
        "format": STATE_FORMAT, "epoch": str(epoch), "best": json.dumps(best),
        "param_groups": json.dumps(opt["param_groups"]), "optim_scalars": json.dumps(scalars),
        "scheduler": json.dumps(scheduler.state_dict()), "config": model.config.to_json(),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_state(path: Path, model: ClinReadNet, optimizer, scheduler) -> tuple[int, float]:
    """Restore everything ``save_state`` wrote; returns (epochs done, best validation Score).

    A damaged state file (truncated by a kill, edited) is one ConfigError saying what to do.
    """
    try:
        return _load_state(path, model, optimizer, scheduler)
    except ConfigError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: damaged training state ({reason[:200]}); this run cannot resume: start a fresh "
                          f"run with a new --out (add --init-weights {path.parent / 'best.safetensors'} "
                          "to keep what it learnt)") from None


def _load_state(path: Path, model: ClinReadNet, optimizer, scheduler) -> tuple[int, float]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != STATE_FORMAT:
            raise ConfigError(f"{path}: not a clinreadnet training state")
        if ClinReadNetConfig.from_json(meta["config"]) != model.config:
            raise ConfigError(f"{path}: the run was trained with another model config; resume with the same options")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in json.loads(meta["optim_scalars"]).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    scheduler.load_state_dict(json.loads(meta["scheduler"]))
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and cuda_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(meta["epoch"]), json.loads(meta["best"])


# --- the loop ------------------------------------------------------------------------------------
@dataclass
class RunResult:
    out: Path
    epochs_done: int
    best_score: float
    history: list[dict] = field(default_factory=list)


def _device(name: str, local_rank: int) -> torch.device:
    """The score command's device choice; under torchrun each process takes its own GPU."""
    device = resolve_device(name)
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


def predict_scores(model: ClinReadNet, loader: DataLoader, device: torch.device) -> list[float]:
    """Expected 0-4 scores of every image the loader yields, in order."""
    model.eval()
    return [score for images, _ in loader for score in model.predict(images.to(device)).score.tolist()]


RUN_FILES = ("config.json", "split.json", "metrics.jsonl", "best.safetensors", "last_state.safetensors")
TEACHER_FORMAT = "clinreadnet-teacher/1"
LATEST = "latest.json"  # beside the run folders: {"run": ..., "data": ...} of the newest run


def freeze_all_but(model: ClinReadNet, train_only: str) -> None:
    """Leave only the ``train_only`` parameters trainable (TrainConfig.train_only)."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(train_only == "heads" and name.startswith("head.")
                                 or train_only == "patch-embedding" and name.startswith("backbone.patch_embed.proj."))
    if train_only in ("detail-channel", "other-grids"):
        weight = model.backbone.patch_embed.proj.weight  # (out, channels, k, k): the image (first grid) channel first
        channel = torch.arange(weight.shape[1], device=weight.device)
        learns = channel % model.config.in_chans != 0 if train_only == "detail-channel" else channel != 0
        mask = learns.to(weight.dtype)[None, :, None, None]
        weight.requires_grad_(True)
        weight.register_hook(lambda grad: grad * mask)  # the first channel's slice of the same tensor stays put


def train(cfg: TrainConfig, resume: bool = False, on_event: Event | None = None, overwrite: bool = False) -> RunResult:
    """Train as ``cfg`` says; with ``resume`` continue the run in ``cfg.out`` from its last epoch.

    A folder that already holds a run is refused unless ``resume`` or ``overwrite``."""
    emit = on_event or (lambda kind, data: None)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(cfg.device, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    out = Path(cfg.out)
    try:
        return _train(cfg, resume, overwrite, emit, out, device, world, rank)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def teacher_targets(cfg: TrainConfig, items: list[LabelledSlice], saved: Path, device: torch.device,
                    emit: Event) -> tuple[torch.Tensor, dict | None]:
    """(N, heads, classes): the ``distil_from`` weights' per-head class probabilities for each item,
    read through all their sampling grids, unaugmented; from ``saved`` (a resumed run's, or one
    copied into a new run's folder) when it holds the same teacher's answers for the same items.
    Each distinct image is scored once. Also the metadata to save them with, None when read back."""
    weights = resolve_weights(cfg.distil_from)
    metadata = {"format": TEACHER_FORMAT, "weights": str(cfg.distil_from), "keys": json.dumps([i.key for i in items]),
                "sha256": weights_identity(weights)["weights_sha256"]}
    if saved.is_file():
        with safe_open(str(saved), framework="pt") as f:
            stored = f.metadata() or {}
            if all(stored.get(k) == metadata[k] for k in ("format", "sha256")) and \
                    json.loads(stored.get("keys", "null")) == json.loads(metadata["keys"]):
                return f.get_tensor("head_probs"), None
    teacher = load_model(weights).to(device).eval()
    distinct = list({(i.path, i.slice): i for i in items}.values())
    loader = DataLoader(SliceDataset(distinct, teacher.config, None, cfg.input_range), batch_size=cfg.batch_size,
                        num_workers=cfg.workers)
    emit("teacher", {"weights": cfg.distil_from, "images": len(distinct), "grids": teacher.config.sampling_grids})
    began, probs = time.perf_counter(), []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
        for images, _ in loader:
            probs.append(Prediction.from_logits(teacher(images.to(device))).head_probs.cpu())
    emit("teacher", {"weights": cfg.distil_from, "images": len(distinct), "seconds": time.perf_counter() - began})
    by_image = dict(zip(((i.path, i.slice) for i in distinct), torch.cat(probs)))
    return torch.stack([by_image[(i.path, i.slice)] for i in items]), metadata


def save_teacher(path: Path, head_probs: torch.Tensor, metadata: dict) -> None:
    with atomic_path(path) as tmp:
        save_file({"head_probs": head_probs.contiguous()}, str(tmp), metadata=metadata)


def read_split(path: Path, remedy: str) -> dict:
    """A run's split.json ({"train": [...], "val": [...]}); DatasetError naming it and ``remedy``."""
    try:
        split = json.loads(path.read_text())
        if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in ("train", "val")):
            raise ValueError("no train and val lists")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: missing or damaged ({exc}); {remedy}") from None
    return split


def _train(cfg: TrainConfig, resume: bool, overwrite: bool, emit: Event, out: Path, device, world: int,
           rank: int) -> RunResult:
    torch.manual_seed(cfg.seed + rank)
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not (resume or overwrite):
        raise ConfigError(f"{out} already holds a training run ({', '.join(existing)}); pass --resume to continue "
                          "it or --overwrite to start it again")
    items = {i.key: i for i in load_labelled(cfg.data)}
    split_path = out / "split.json"
    if resume:
        if not (out / "last_state.safetensors").is_file():
            raise DatasetError(f"{out}: nothing to resume (no last_state.safetensors)")
        split = read_split(split_path, "this run cannot resume without the split it was trained on: "
                                       "start a fresh run with a new --out")
    elif cfg.split_file:
        split = {**read_split(Path(cfg.split_file), "pass the split.json of a training run"), "data": str(cfg.data)}
    else:
        train_keys, val_keys = split_train_val(list(items.values()), cfg.val_fraction, cfg.seed)
        split = {"data": str(cfg.data), "seed": cfg.seed, "train": train_keys, "val": val_keys}
    missing = [k for k in split["train"] + split["val"] if k not in items]
    if missing:
        raise DatasetError(f"{split_path}: {len(missing)} split image(s) not in {cfg.data}, e.g. {missing[0]!r}")
    train_items: list[LabelledSlice] = [items[k] for k in split["train"]]
    val_items: list[LabelledSlice] = [items[k] for k in split["val"]]
    val_classes = len({i.label for i in val_items})
    if len(val_items) < 2 or val_classes < 2:
        raise DatasetError(f"{cfg.data}: the validation set holds {len(val_items)} image(s) of {val_classes} "
                           "class(es), so its correlations are undefined; use more data or a larger --val-fraction")
    check_readable(train_items + val_items, cfg.input_range)

    model_cfg = cfg.model_config()
    model = create_model(model_cfg, backbone_checkpoint=cfg.backbone_checkpoint)
    if model.backbone_load is not None and not resume:
        emit("backbone", {"message": model.backbone_load.describe()})
    if cfg.init_weights and not resume:
        copied, fresh = initialise_from(model, resolve_weights(cfg.init_weights),
                                        deal_grids=cfg.train_only != "other-grids")
        emit("init", {"weights": cfg.init_weights, "copied": copied, "fresh": fresh})
    model = model.to(device)
    teacher, teacher_metadata = None, None
    if cfg.distil_from:
        teacher, teacher_metadata = teacher_targets(cfg, train_items, out / "teacher.safetensors", device, emit)
    loss_fn = (DistillationLoss(rank_weight=model_cfg.loss.rank_weight) if teacher is not None
               else create_loss(model_cfg)).to(device)
    # Everything is ready: only now does the run folder get written.
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite and not resume:
            for name in existing:
                (out / name).unlink()
        write_text_atomic(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
        write_text_atomic(split_path, json.dumps(split, indent=2) + "\n")
        if teacher_metadata is not None:  # computed afresh: kept for --resume
            save_teacher(out / "teacher.safetensors", teacher, teacher_metadata)
        write_text_atomic(out.parent / LATEST, json.dumps({"run": str(out.resolve()),
                                                          "data": str(Path(cfg.data).resolve())}, indent=2) + "\n")
    # A training step reads one sampling grid, drawn at random; a student distilled from every grid
    # is shown all four whatever it reads at inference, so no grid's noise draw is learnt as its own.
    # A stacked-grid path reads all four in every step.
    grids = len(GRID_OFFSETS) if teacher is not None and model_cfg.input_path in DECIMATE_PATHS - STACK_PATHS \
        else model_cfg.sampling_grids
    train_set = SliceDataset(train_items, model_cfg, augmentation(model_cfg) if cfg.augment else None, cfg.input_range,
                             random_grids=grids, targets=teacher)
    # One sampler for one or many processes: its shuffle is seeded by (seed, epoch), so a resumed
    # run sees the same order as an uninterrupted one.
    per_process = max(1, cfg.batch_size // world)
    if cfg.images_per_source > 1:
        if rank == 0 and all(i.source is None for i in train_items):
            emit("warning", {"message": f"images_per_source {cfg.images_per_source}: {cfg.data} names no source "
                                        "slices (a simulate folder's manifest.csv does), so batches are plain "
                                        "shuffles"})
        sampler = SourceRunSampler(train_items, cfg.images_per_source, per_process, cfg.seed, world, rank)
    else:
        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                     drop_last=True)
    loader = DataLoader(train_set, batch_size=per_process, sampler=sampler, num_workers=cfg.workers,
                        drop_last=len(train_set) // world > per_process, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    val_loader = DataLoader(SliceDataset(val_items, model_cfg, None, cfg.input_range), batch_size=cfg.batch_size,
                            num_workers=cfg.workers)
    if cfg.train_only:
        freeze_all_but(model, cfg.train_only)
    optimizer = torch.optim.NAdam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=1, eta_min=0.0)
    start, best = 0, float("-inf")
    if resume:
        start, best = load_state(out / "last_state.safetensors", model, optimizer, scheduler)
    try:
        return _epochs(cfg, model, loss_fn, loader, val_loader, sampler, optimizer, scheduler, start, best, emit, out,
                       device, world, rank, len(train_items), [i.score for i in val_items])
    except BaseException:
        if rank == 0 and not resume and not (out / "last_state.safetensors").exists():
            for name in ("config.json", "split.json"):  # failed before its first epoch: leave nothing half-made
                (out / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _epochs(cfg: TrainConfig, model, loss_fn, loader, val_loader, sampler, optimizer, scheduler, start: int,
            best: float, emit: Event, out: Path, device, world: int, rank: int, n_train: int,
            val_targets: list[float]) -> RunResult:
    net = DistributedDataParallel(model) if world > 1 else model
    steps = len(loader)
    history: list[dict] = []
    emit("start", {"train": n_train, "val": len(val_targets), "steps": steps, "start_epoch": start,
                   "epochs": cfg.epochs, "device": str(device), "world": world, "amp": cfg.amp})
    for epoch in range(start, cfg.epochs):
        sampler.set_epoch(epoch)
        net.train()
        if cfg.train_only:  # the frozen layers as scoring reads them: no drop-path, no dropout
            model.eval()
            model.head.train(cfg.train_only == "heads")
        began, total, count = time.perf_counter(), 0.0, 0
        for step, (images, targets) in enumerate(loader):
            # a class per image, or under distillation the teacher's distributions and the classes
            targets = targets if isinstance(targets, (list, tuple)) else [targets]
            images = images.to(device, non_blocking=True)
            targets = [t.to(device, non_blocking=True) for t in targets]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                logits = net(images)
            terms = loss_fn(logits.float(), *targets)
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            optimizer.step()
            # Warm restarts every `restart_epochs`, stepped fractionally every batch.
            scheduler.step((epoch + step / steps) / cfg.restart_epochs)
            total, count = total + terms.total.item() * len(images), count + len(images)
            emit("batch", {"epoch": epoch, "step": step, "steps": steps, "loss": terms.total.item(),
                           "lr": optimizer.param_groups[0]["lr"]})
        record = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "lr": optimizer.param_groups[0]["lr"],
                  "train_seconds": time.perf_counter() - began}
        if rank == 0:
            predicted = predict_scores(model, val_loader, device)
            record.update({f"val_{k}": v for k, v in
                           correlation_metrics(predicted, val_targets).items()})
            # Signed: a model that ranks quality backwards must not look good (see the module docstring).
            selection = record["val_plcc"] + record["val_srocc"] + record["val_krocc"]
            record["val_selection"] = selection
            if selection < 0:
                emit("warning", {"message": f"epoch {epoch + 1}: validation correlations are negative "
                                            f"(PLCC {record['val_plcc']:.3f}): the model ranks quality backwards"})
            improved = selection == selection and selection > best
            if improved:
                best = selection
                save_weights(model, out / "best.safetensors", torch.float16 if cfg.half_weights else None)
            save_state(out / "last_state.safetensors", model, optimizer, scheduler, epoch + 1, best)
            record["best"] = improved
            with (out / "metrics.jsonl").open("a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")
        if world > 1:
            dist.barrier()
        history.append(record)
        emit("epoch", record)
    return RunResult(out=out, epochs_done=cfg.epochs, best_score=best, history=history)
