"""clinreadnet train: the paper's protocol on the LDCTIQAG2023 layout or a CSV."""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import MofNCompleteColumn, Progress, TextColumn

from ..config import input_overrides
from .app import DEFAULT_WEIGHTS_NAME, Device, app, print_messages, stderr, usage_error


class TrainOnly(str, Enum):  # training.TRAIN_ONLY
    heads = "heads"
    detail_channel = "detail-channel"
    other_grids = "other-grids"
    patch_embedding = "patch-embedding"


@app.command()
def train(
    data: Optional[Path] = typer.Option(
        None, help="Labelled images: a folder in the LDCTIQAG2023 layout (image/ + train.json), or one holding "
                   "it (ldct/ with LDCTIQAG2023_train/), or a CSV of path,score[,group]."),
    out: Optional[Path] = typer.Option(None, help="Run folder for checkpoints and logs. Default: runs/clinreadnet."),
    config: Optional[str] = typer.Option(None, help="A named model configuration (`clinreadnet configs`: the paper's "
                                                    "rows), or a TOML/YAML file of these options; flags override it."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last finished epoch."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again in an --out that already holds a run "
                                                              "(its files are replaced)."),
    model: Optional[str] = typer.Option(None, help="Model configuration by name (`clinreadnet configs`). "
                                                   "Default: clinreadnet."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Passes over the training images. Default: 80 (paper)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Images per optimiser step. Default: 8 (paper)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate of NAdam. Default: 1e-4 (paper)."),
    img_size: Optional[int] = typer.Option(None, help="Network input size in pixels. Default: 224."),
    input_path: Optional[str] = typer.Option(None, help="How a slice becomes the input: decimate, decimate-stack "
                                                        "(every grid in one forward), decimate-detail, crop or "
                                                        "resize (weights v1). Default: decimate. See "
                                                        "docs/model.md."),
    val_fraction: Optional[float] = typer.Option(None, help="Share of the images held out for validation, whole "
                                                            "patients where known. Default: 0.2."),
    seed: Optional[int] = typer.Option(None, help="Seeds the split, the initialisation and the shuffling. Default: 0."),
    device: Optional[Device] = typer.Option(None, help="auto picks CUDA when present. Default: auto."),
    workers: Optional[int] = typer.Option(None, min=0, help="Processes reading images. Default: 2."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision (bf16 autocast): on CUDA, or "
                                                                    "CPUs with AVX512-BF16/AMX. Default: off."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Random rotation, scale and flips "
                                                                                "(paper Tab. 1). Default: on."),
    loss_off: Optional[list[str]] = typer.Option(None, help="Switch off one term of the loss [HRPS]: cross_entropy, "
                                                            "fine_rps, coarse_rps, entropy (repeatable). Default: none."),
    backbone_checkpoint: Optional[Path] = typer.Option(None, help="Start the Swin-T backbone from a local "
                                                                  ".safetensors checkpoint. Default: random."),
    half_weights: Optional[bool] = typer.Option(None, "--half-weights/--full-weights",
                                                help="Store best.safetensors in fp16: half the size, loaded back "
                                                     "as fp32. Default: full (fp32)."),
    init_weights: Optional[str] = typer.Option(None, help="Fine-tune from clinreadnet weights: a file or a name "
                                                          f"({DEFAULT_WEIGHTS_NAME}); tensors that fit are copied. Default: none."),
    split_file: Optional[Path] = typer.Option(None, help="Train and validate on the images of another run's split.json "
                                                         "(to compare runs on the same patients). Default: a new split."),
    train_only: Optional[TrainOnly] = typer.Option(None, help="Train these alone, the rest frozen as --init-weights "
                                                           "has it: the four heads (a read-out refit), the "
                                                           "detail channel's patch-embedding weights, a "
                                                           "stacked-grid path's other grids (started at zero: the "
                                                           "first grid reads as --init-weights does) or the whole "
                                                           "patch embedding. Default: "
                                                           "every layer."),
    distil_from: Optional[str] = typer.Option(None, help="Distil: train toward these weights' class distributions "
                                                         "(read through all their sampling grids) instead of the "
                                                         "labels, which then only pick the epoch. Default: labels."),
) -> None:
    """Train a model on the LDCTIQAG2023 layout (image/*.tif + train.json) or a CSV of path,score."""
    from ..checkpoint import WeightsError
    from ..config import ConfigError, list_configs
    from ..data import DatasetError
    from ..training import TrainConfig, read_config_file
    from ..training import train as run_training

    if config is not None and not Path(config).exists() and config in list_configs():
        if model not in (None, config):
            usage_error(f"--config {config} and --model {model} name two configurations; give one")
        model, config = config, None

    flags = {
        "data": data, "out": out, "model": model, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "img_size": img_size, "val_fraction": val_fraction, "seed": seed, "device": device and device.value,
        "workers": workers, "amp": amp, "augment": augment, "loss_off": loss_off,
        "backbone_checkpoint": backbone_checkpoint, "init_weights": init_weights, "half_weights": half_weights,
        "split_file": split_file, "train_only": train_only and train_only.value, "distil_from": distil_from,
    }
    options: dict = {}
    try:
        from_file = read_config_file(config) if config else {}
        run_dir = Path(out or from_file.get("out") or "runs/clinreadnet")
        if resume:  # the run's own options first; the file and the flags may change some (e.g. epochs)
            saved = run_dir / "config.json"
            if not saved.is_file():
                usage_error(f"--resume: no run to continue in {run_dir} (no config.json)")
            try:
                stored = json.loads(saved.read_text())
                if not isinstance(stored, dict):
                    raise ValueError("not a table of options")
            except (OSError, ValueError) as exc:
                usage_error(f"--resume: {saved} is damaged ({exc}); this run cannot resume: "
                             "start a fresh run with a new --out")
            options.update(stored)
        options.update(from_file)
        options.update({k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items() if v is not None})
        if input_path is not None:
            options["model_overrides"] = {**options.get("model_overrides", {}), **input_overrides(input_path)}
        if "data" not in options:
            usage_error("--data is required (an LDCTIQAG2023 folder or a CSV)")
        cfg = TrainConfig.from_dict(options)
    except ConfigError as exc:
        usage_error(str(exc))

    show = os.environ.get("RANK", "0") == "0"
    progress = Progress(*Progress.get_default_columns(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                        console=stderr, transient=True, disable=not (show and stderr.is_terminal))
    task = None

    def on_event(kind: str, info: dict) -> None:
        nonlocal task
        if not show:
            return
        if kind == "start":
            stderr.print(f"training {cfg.model} on {info['train']} images, validating on {info['val']}, "
                         f"{info['steps']} steps/epoch, device {info['device']} x{info['world']}"
                         + (", bf16 autocast" if info["amp"] else ""))
        elif kind == "warning":
            print_messages(warnings=[info["message"]])
        elif kind == "teacher":
            stderr.print(f"teacher {info['weights']}: {info['images']} images"
                         + (f" scored in {info['seconds']:.0f} s" if "seconds" in info else
                            f" through {info['grids']} sampling grid(s)"))
        elif kind == "backbone":
            stderr.print(f"backbone checkpoint {info['message']}")
        elif kind == "init":
            stderr.print(f"starting from {info['weights']}: {info['copied']} tensors copied, "
                         f"{len(info['fresh'])} freshly initialised" + (f" ({', '.join(info['fresh'][:4])}"
                         + (", ..." if len(info["fresh"]) > 4 else "") + ")" if info["fresh"] else ""))
        elif kind == "batch":
            if task is None or info["step"] == 0:
                if task is not None:
                    progress.remove_task(task)
                task = progress.add_task(f"epoch {info['epoch'] + 1}/{cfg.epochs}", total=info["steps"], info="")
            progress.update(task, advance=1, info=f"loss {info['loss']:.3f} lr {info['lr']:.2e}")
        elif kind == "epoch":
            names = {"val_plcc": "PLCC", "val_srocc": "SROCC", "val_krocc": "KROCC", "val_score": "Score"}
            val = " ".join(f"{name} {info[k]:.4f}" for k, name in names.items() if k in info)
            stderr.print(f"epoch {info['epoch']}/{cfg.epochs}  loss {info['train_loss']:.4f}  lr {info['lr']:.2e}  "
                         f"{val}{'  (best)' if info.get('best') else ''}  {info['train_seconds']:.0f} s")

    try:
        with progress:
            result = run_training(cfg, resume=resume, on_event=on_event, overwrite=overwrite)
    except (ConfigError, DatasetError, WeightsError) as exc:
        usage_error(str(exc))
    if show:
        stderr.print(f"done: {escape(str(result.out / 'best.safetensors'))} (best validation PLCC + SROCC + KROCC "
                     f"{result.best_score:.4f}); `clinreadnet evaluate --split val` evaluates it")
