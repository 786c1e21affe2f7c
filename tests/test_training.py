from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import tifffile
from safetensors import safe_open
from scipy import stats
from typer.testing import CliRunner

from clinreadnet_cli.archs import create_model
from clinreadnet_cli.checkpoint import initialise_from, load_model, read_config
from clinreadnet_cli.config import ConfigError, get_config
from clinreadnet_cli.cli import app
from clinreadnet_cli.data import (DatasetError, LabelledSlice, SourceRunSampler, load_labelled, score_to_class,
                                  split_train_val)
from clinreadnet_cli.dicom_export import write_series
from clinreadnet_cli.losses.distillation import DistillationLoss
from clinreadnet_cli.metrics import correlation_metrics
from clinreadnet_cli.noise import measure_noise
from clinreadnet_cli.preprocess import prepare_slice
from clinreadnet_cli.training import StackedGridFlip, TrainConfig, freeze_all_but, read_config_file

from .conftest import TINY, ct_phantom, tiny_config, unit_phantom

runner = CliRunner()
TINY_TOML = f"""
model = "clinreadnet"
img_size = 64
batch_size = 4
workers = 0
restart_epochs = 2
[model_overrides]
embed_dim = {TINY['embed_dim']}
depths = {list(TINY['depths'])}
num_heads = {list(TINY['num_heads'])}
window_size = {TINY['window_size']}
"""


def _write_layout(root: Path, image_dir: str, labels_name: str, n: int, seed: int, ext: str = ".tif") -> dict:
    """float32 [0, 1] slices whose noise grows as the score falls, plus the labels JSON."""
    rng = np.random.default_rng(seed)
    (root / image_dir).mkdir(parents=True)
    y, x = np.mgrid[:64, :64]
    body = ((x - 32) ** 2 + (y - 32) ** 2 < 26 ** 2) * 0.5
    labels = {}
    for i in range(n):
        score = round(float(rng.integers(0, 21)) / 5, 1)
        image = np.clip(body + rng.normal(0, 0.02 + 0.1 * (4 - score), body.shape), 0, 1).astype(np.float32)
        tifffile.imwrite(root / image_dir / f"{i:04d}{ext}", image)
        labels[f"{i:04d}{ext}"] = score
    (root / labels_name).write_text(json.dumps(labels))
    return labels


@pytest.fixture(scope="module")
def ldct(tmp_path_factory) -> Path:
    """A small dataset in the exact LDCTIQAG2023 layouts: train/ and test/."""
    root = tmp_path_factory.mktemp("ldct")
    _write_layout(root / "train", "image", "train.json", 24, seed=0)
    _write_layout(root / "test", "images", "test.json", 8, seed=1, ext=".tiff")
    (root / "tiny.toml").write_text(TINY_TOML)
    return root


def train(*args):
    return runner.invoke(app, ["train", *map(str, args)])


def _tensors(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# --- data --------------------------------------------------------------------------------------
def test_layouts_load(ldct):
    train_items = load_labelled(ldct / "train")
    test_items = load_labelled(ldct / "test", split="test")
    assert len(train_items) == 24 and len(test_items) == 8
    assert all(i.path.parent.name == "image" for i in train_items)
    assert all(i.path.suffix == ".tiff" and i.path.parent.name == "images" for i in test_items)
    assert score_to_class(2.8) == 14 and score_to_class(0.2) == 1 and score_to_class(4.0) == 20


def test_bad_labels_are_one_error_naming_them(tmp_path):
    root = tmp_path / "d"
    _write_layout(root, "image", "train.json", 3, seed=0)
    (root / "train.json").write_text('{"0000.tif": 2.8, "0001.tif": 4.6, "0009.tif": 1.0, "0002.tif": 1, "0002.tif": 2}')
    with pytest.raises(DatasetError) as err:
        load_labelled(root)
    assert "duplicate key '0002.tif'" in str(err.value)
    (root / "train.json").write_text('{"0000.tif": 2.8, "0001.tif": 4.6, "0009.tif": 1.0, "0002.tif": "x"}')
    with pytest.raises(DatasetError) as err:
        load_labelled(root)
    message = str(err.value)
    assert str(root / "train.json") in message
    assert "'0001.tif' is 4.6" in message and "'0002.tif' is 'x'" in message and "'0009.tif' has no image" in message


def test_csv_dataset_reads_dicom_through_the_score_readers(tmp_path):
    hu = ct_phantom(2)
    paths = write_series(hu, tmp_path / "dcm")
    (tmp_path / "labels.csv").write_text(
        "path,score,group\n" + "".join(f"dcm/{p.name},{s},patient-{k}\n" for k, (p, s) in enumerate(zip(paths, (3.2, 1.4))))
    )
    items = load_labelled(tmp_path / "labels.csv")
    assert [(i.path, i.score, i.group) for i in items] == [(paths[0], 3.2, "patient-0"), (paths[1], 1.4, "patient-1")]


def test_split_is_800_200_stratified_and_seeded():
    rng = np.random.default_rng(3)
    items = [LabelledSlice(f"{i:04d}.tif", Path(f"{i:04d}.tif"), float(rng.integers(0, 21)) / 5) for i in range(1000)]
    train_keys, val_keys = split_train_val(items, 0.2, seed=7)
    assert (len(train_keys), len(val_keys)) == (800, 200) and not set(train_keys) & set(val_keys)
    labels = {i.key: i.label for i in items}
    total, val = Counter(labels.values()), Counter(labels[k] for k in val_keys)
    assert all(abs(val[c] - 0.2 * total[c]) < 1 for c in total)  # each class its share, within rounding
    assert split_train_val(items, 0.2, seed=7) == (train_keys, val_keys)
    assert split_train_val(items, 0.2, seed=8) != (train_keys, val_keys)


def test_split_keeps_each_patient_on_one_side():
    rng = np.random.default_rng(0)
    items = [LabelledSlice(f"s{i}", Path(f"s{i}"), float(rng.integers(0, 21)) / 5, group=f"p{i // 5}")
             for i in range(200)]
    train_keys, val_keys = split_train_val(items, 0.2, seed=0)
    side = {}
    for item in items:
        side.setdefault(item.group, set()).add(item.key in val_keys)
    assert all(len(s) == 1 for s in side.values())
    assert 30 <= len(val_keys) <= 40


# --- metrics -----------------------------------------------------------------------------------
def test_source_runs_cover_every_image_once_in_batches_of_one_slice():
    items = [LabelledSlice(f"s{s}-{i}", Path("x"), 1.0, source=f"s{s}") for s in range(6) for i in range(8)]
    sampler = SourceRunSampler(items, run=4, block=8, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(48)) and len(sampler) == 48
    batches = [order[b:b + 8] for b in range(0, 48, 8)]
    # Every batch is two runs of four images, each run one source slice.
    assert all(len({items[i].source for i in batch[:4]}) == 1 and len({items[i].source for i in batch[4:]}) == 1
               for batch in batches)
    assert list(SourceRunSampler(items, 4, 8, seed=0)) == order  # seeded
    sampler.set_epoch(1)
    assert list(sampler) != order  # reshuffled each epoch
    # Two processes: disjoint halves, whole batches each; an image of no known source runs alone.
    halves = [list(SourceRunSampler(items + [LabelledSlice("lone", Path("x"), 1.0)], 4, 4, 0, 2, r)) for r in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == 24 and not set(halves[0]) & set(halves[1])


def test_metrics_match_hand_computed_values_with_ties():
    pred, target = [1.0, 1.0, 2.0, 3.0], [1.0, 2.0, 2.0, 3.0]
    m = correlation_metrics(pred, target)
    # Pearson: deviations (-0.75, -0.75, 0.25, 1.25) and (-1, 0, 0, 1): 2 / sqrt(2.75 * 2)
    assert m["plcc"] == pytest.approx(2 / math.sqrt(2.75 * 2))
    # Spearman = Pearson of the average ranks (1.5, 1.5, 3, 4) and (1, 2.5, 2.5, 4):
    # deviations (-1, -1, 0.5, 1.5) and (-1.5, 0, 0, 1.5): 3.75 / sqrt(4.5 * 4.5)
    assert m["srocc"] == pytest.approx(3.75 / 4.5)
    # Kendall tau-b: 6 pairs, 4 concordant, 0 discordant, 1 tie in pred only, 1 tie in target only
    assert m["krocc"] == pytest.approx(4 / math.sqrt((4 + 0 + 1) * (4 + 0 + 1)))
    assert m["score"] == pytest.approx(abs(m["plcc"]) + abs(m["srocc"]) + abs(m["krocc"]))
    assert math.isnan(correlation_metrics([2.0, 2.0], [1.0, 3.0])["score"])  # constant prediction


# --- train / evaluate --------------------------------------------------------------------------
def test_two_epoch_run_writes_checkpoints_logs_and_config(ldct, tmp_path):
    out = tmp_path / "run"
    result = train("--data", ldct / "train", "--config", ldct / "tiny.toml", "--epochs", 2, "--out", out, "--seed", 3)
    assert result.exit_code == 0, result.stderr
    assert {p.name for p in out.iterdir()} == {
        "config.json", "split.json", "metrics.jsonl", "best.safetensors", "last_state.safetensors"}
    assert json.loads((tmp_path / "latest.json").read_text())["run"] == str(out.resolve())
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert all(set(r) >= {"train_loss", "lr", "val_plcc", "val_srocc", "val_krocc", "val_score", "val_selection"}
               for r in log)
    best_epoch = max(log, key=lambda r: r["val_selection"])  # signed, unlike the challenge's Score
    assert best_epoch["best"] and best_epoch["val_selection"] == pytest.approx(
        best_epoch["val_plcc"] + best_epoch["val_srocc"] + best_epoch["val_krocc"])
    saved = json.loads((out / "config.json").read_text())
    assert saved["epochs"] == 2 and saved["seed"] == 3 and saved["img_size"] == 64 and saved["lr"] == 1e-4
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 24 and len(split["val"]) == 5
    # The exported model is what `score` loads.
    scored = runner.invoke(app, ["score", str(ldct / "test"), "--weights", str(out / "best.safetensors"),
                                 "--format", "json"])
    assert scored.exit_code == 0 and len(json.loads(scored.stdout)) == 8


def test_head_only_refits_the_heads_and_leaves_every_other_tensor_as_it_was(ldct, tmp_path):
    common = ["--data", ldct / "train", "--config", ldct / "tiny.toml", "--epochs", 1]
    assert train(*common, "--out", tmp_path / "first").exit_code == 0
    first = tmp_path / "first" / "best.safetensors"
    result = train(*common, "--out", tmp_path / "refit", "--init-weights", first, "--train-only", "heads",
                   "--lr", 1e-2)
    assert result.exit_code == 0, result.stderr
    before, after = _tensors(first), _tensors(tmp_path / "refit" / "best.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("head."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("head."))
    refused = train(*common, "--out", tmp_path / "nothing", "--train-only", "heads")
    assert refused.exit_code == 2 and "needs --init-weights" in refused.stderr


def test_detail_channel_alone_trains_only_the_new_channels_patch_weights(ldct, tmp_path):
    common = ["--data", ldct / "train", "--config", ldct / "tiny.toml", "--epochs", 1]
    assert train(*common, "--out", tmp_path / "first").exit_code == 0
    first = _tensors(tmp_path / "first" / "best.safetensors")
    result = train(*common, "--out", tmp_path / "detail", "--input-path", "decimate-detail", "--init-weights",
                   tmp_path / "first" / "best.safetensors", "--train-only", "detail-channel", "--lr", 1e-2)
    assert result.exit_code == 0, result.stderr
    after = _tensors(tmp_path / "detail" / "best.safetensors")
    conv = "backbone.patch_embed.proj.weight"
    assert after[conv].shape[1] == 2
    assert torch.equal(after[conv][:, :1], first[conv])  # the image channel as it was
    assert after[conv][:, 1].abs().sum() > 0  # the detail channel, zero at the start, learnt
    assert all(torch.equal(first[k], after[k]) for k in first if k != conv)
    refused = train(*common, "--out", tmp_path / "one-channel", "--init-weights",
                    tmp_path / "first" / "best.safetensors", "--train-only", "detail-channel")
    assert refused.exit_code == 2 and "detail channel" in refused.stderr


def test_other_grids_start_as_the_first_grid_and_alone_learn(ldct, tmp_path):
    common = ["--data", ldct / "train", "--config", ldct / "tiny.toml", "--epochs", 1]
    assert train(*common, "--out", tmp_path / "one-grid").exit_code == 0
    one_grid = tmp_path / "one-grid" / "best.safetensors"
    # Started, the stacked model reads as the one-grid weights through the first grid.
    source = load_model(one_grid)
    stacked = create_model(dataclasses.replace(source.config, input_path="decimate-stack", in_chans=4,
                                                 sampling_grids=1))
    initialise_from(stacked, one_grid, deal_grids=False)
    image = unit_phantom(1)[0]
    stack_input = prepare_slice(image, "unit", stacked.config)[None]
    first_grid = prepare_slice(image, "unit", source.config, grid=0)[None]
    assert torch.equal(stack_input[:, :1], first_grid)
    assert torch.allclose(stacked.eval()(stack_input), source.eval()(first_grid), atol=1e-5)
    result = train(*common, "--out", tmp_path / "stack", "--input-path", "decimate-stack", "--init-weights",
                   one_grid, "--train-only", "other-grids", "--lr", 1e-2)
    assert result.exit_code == 0, result.stderr
    before, after = _tensors(one_grid), _tensors(tmp_path / "stack" / "best.safetensors")
    conv = "backbone.patch_embed.proj.weight"
    assert after[conv].shape[1] == 4
    assert torch.equal(after[conv][:, :1], before[conv])  # the first grid as the one-grid weights have it
    assert all(after[conv][:, grid].abs().sum() > 0 for grid in (1, 2, 3))  # zero at the start, learnt
    assert all(torch.equal(before[k], after[k]) for k in before if k != conv)
    refused = train(*common, "--out", tmp_path / "one-channel", "--init-weights", one_grid,
                    "--train-only", "other-grids")
    assert refused.exit_code == 2 and "stacks the sampling grids" in refused.stderr


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(ldct, tmp_path):
    common = ["--data", ldct / "train", "--config", ldct / "tiny.toml", "--seed", 1]
    assert train(*common, "--epochs", 2, "--out", tmp_path / "straight").exit_code == 0
    assert train(*common, "--epochs", 1, "--out", tmp_path / "paused").exit_code == 0
    resumed = train("--resume", "--out", tmp_path / "paused", "--epochs", 2)
    assert resumed.exit_code == 0, resumed.stderr
    a = _tensors(tmp_path / "straight" / "last_state.safetensors")
    b = _tensors(tmp_path / "paused" / "last_state.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a if k.startswith("model."))
    log = [json.loads(line) for line in (tmp_path / "paused" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]


def test_config_file_yaml_and_flags_override_it(ldct, tmp_path):
    (tmp_path / "c.yaml").write_text(TINY_TOML_AS_YAML)
    out = tmp_path / "run"
    result = train("--data", ldct / "train", "--config", tmp_path / "c.yaml", "--epochs", 1, "--out", out,
                   "--loss-off", "entropy", "--model", "clinreadnet-no-sobel")
    assert result.exit_code == 0, result.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["batch_size"] == 4 and saved["loss_off"] == ["entropy"]
    with safe_open(str(out / "best.safetensors"), framework="pt") as f:
        stored = json.loads(f.metadata()["config"])
    assert stored["name"] == "clinreadnet-no-sobel" and stored["loss"]["entropy"] is False
    assert stored["soqn"]["sobel_branch"] is False


def test_config_file_extends_its_base_key_by_key_and_table_by_table(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "base.toml").write_text(
        'epochs = 2\nlr = 5e-5\n[model_overrides]\ninput_path = "decimate"\nsampling_grids = 4\n'
        '[model_overrides.loss]\nrank_weight = 5.0\nentropy = false\n')
    (tmp_path / "variant.toml").write_text(
        'base = "recipes/base.toml"\nepochs = 1\n[model_overrides]\nwindow_width = 180.0\n'
        '[model_overrides.loss]\nrank_weight = 2.0\n')
    assert read_config_file(tmp_path / "variant.toml") == {
        "epochs": 1, "lr": 5e-5, "model_overrides": {"input_path": "decimate", "sampling_grids": 4,
                                                     "window_width": 180.0,
                                                     "loss": {"rank_weight": 2.0, "entropy": False}}}
    (tmp_path / "recipes" / "base.toml").write_text('base = "../variant.toml"\n')
    with pytest.raises(ConfigError, match="base files name it again"):
        read_config_file(tmp_path / "variant.toml")
    (tmp_path / "orphan.toml").write_text('base = "missing.toml"\n')
    with pytest.raises(ConfigError, match="missing.toml: cannot read"):
        read_config_file(tmp_path / "orphan.toml")


RECIPES = [*(Path(__file__).parents[1] / "scripts" / "default_weights").glob("*.toml"),
           *(Path(__file__).parents[1] / "research" / "recipes").glob("*.toml")]


@pytest.mark.parametrize("recipe", sorted(RECIPES), ids=lambda p: p.name)
def test_shipped_recipes_read_into_training_options(recipe):
    TrainConfig.from_dict({"data": "ldct", **read_config_file(recipe)}).model_config()


def test_ranking_term_source_runs_detail_path_and_four_grids_train_and_score(ldct, tmp_path):
    (tmp_path / "c.toml").write_text(TINY_TOML.replace("[model_overrides]", "images_per_source = 2\n"
                                                        "[model_overrides]\nloss = {rank_weight = 1.0}\n"
                                                        "sampling_grids = 4"))
    out = tmp_path / "run"
    result = train("--data", ldct / "train", "--config", tmp_path / "c.toml", "--epochs", 1, "--out", out,
                   "--input-path", "decimate-detail")
    assert result.exit_code == 0, result.stderr
    assert "names no source slices" in result.stderr  # this layout has no manifest: plain shuffles, said so
    assert json.loads((out / "config.json").read_text())["images_per_source"] == 2
    with safe_open(str(out / "best.safetensors"), framework="pt") as f:
        stored = json.loads(f.metadata()["config"])
    assert stored["loss"]["rank_weight"] == 1.0
    assert (stored["input_path"], stored["in_chans"], stored["sampling_grids"]) == ("decimate-detail", 2, 4)
    scored = runner.invoke(app, ["score", str(ldct / "test"), "--weights", str(out / "best.safetensors"),
                                 "--format", "json"])
    assert scored.exit_code == 0 and all(0 <= r["score"] <= 4 for r in json.loads(scored.stdout))


def test_a_flipped_stacked_input_is_the_stacked_input_of_the_flipped_slice():
    """The training flips of the stack path keep each channel the grid it is: mirrored, the grid one
    native pixel right of another is the one left of it."""
    image = np.random.default_rng(0).random((512, 512), dtype=np.float32)
    cfg = get_config("clinreadnet", input_path="decimate-stack", in_chans=4)
    stacked = prepare_slice(image, "unit", cfg)
    for dim, axis in ((-1, 1), (-2, 0)):
        flip, mirrored = StackedGridFlip(dim), prepare_slice(np.ascontiguousarray(np.flip(image, axis)), "unit", cfg)
        assert not torch.equal(stacked.flip(dim), mirrored)  # a plain flip would swap the grids
        torch.manual_seed(0)
        drawn = [flip(stacked) for _ in range(8)]
        assert any(torch.equal(d, mirrored) for d in drawn) and any(torch.equal(d, stacked) for d in drawn)
        assert all(torch.equal(d, mirrored) or torch.equal(d, stacked) for d in drawn)


def test_patch_embedding_alone_leaves_only_the_first_layer_trainable():
    model = create_model(tiny_config("clinreadnet", input_path="decimate-stack", in_chans=4))
    freeze_all_but(model, "patch-embedding")
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == [
        "backbone.patch_embed.proj.bias", "backbone.patch_embed.proj.weight"]


def test_the_stack_path_trains_and_scores(ldct, tmp_path):
    (tmp_path / "c.toml").write_text(TINY_TOML)
    out = tmp_path / "run"
    result = train("--data", ldct / "train", "--config", tmp_path / "c.toml", "--epochs", 1, "--out", out,
                   "--input-path", "decimate-stack")
    assert result.exit_code == 0, result.stderr
    stored = read_config(out / "best.safetensors")
    assert (stored.input_path, stored.in_chans, stored.sampling_grids) == ("decimate-stack", 4, 1)
    scored = runner.invoke(app, ["score", str(ldct / "test"), "--weights", str(out / "best.safetensors"),
                                 "--format", "json"])
    assert scored.exit_code == 0 and all(0 <= r["score"] <= 4 for r in json.loads(scored.stdout))


def test_config_by_name_trains_that_paper_row(ldct, tmp_path):
    out = tmp_path / "plain"
    result = train("--data", ldct / "train", "--config", "swin_t-plain", "--img-size", 64, "--epochs", 1,
                   "--batch-size", 4, "--workers", 0, "--out", out)
    assert result.exit_code == 0, result.stderr
    with safe_open(str(out / "best.safetensors"), framework="pt") as f:
        stored = json.loads(f.metadata()["config"])
    assert stored["name"] == "swin_t-plain" and stored["classifier_heads"] == 1 and stored["pooling"] == "last"
    clash = train("--data", ldct / "train", "--config", "bam-channel", "--model", "bam-spatial", "--out", tmp_path / "x")
    assert clash.exit_code == 2 and "two configurations" in clash.stderr


TINY_TOML_AS_YAML = "\n".join([
    "model: clinreadnet", "img_size: 64", "batch_size: 4", "workers: 0", "restart_epochs: 2", "model_overrides:",
    f"  embed_dim: {TINY['embed_dim']}", f"  depths: {list(TINY['depths'])}",
    f"  num_heads: {list(TINY['num_heads'])}", f"  window_size: {TINY['window_size']}",
])


def test_bad_training_options_are_usage_errors(ldct, tmp_path):
    result = train("--data", ldct / "train", "--loss-off", "warmth", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "unknown loss term" in result.stderr
    result = train("--data", tmp_path / "nothing", "--config", ldct / "tiny.toml", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "no such dataset" in result.stderr
    result = train("--resume", "--out", tmp_path / "never")
    assert result.exit_code == 2 and "no run to continue" in result.stderr


def test_evaluate_reproduces_scipy_on_its_predictions(ldct, tmp_path):
    out = tmp_path / "run"
    assert train("--data", ldct / "train", "--config", ldct / "tiny.toml", "--epochs", 1, "--out", out).exit_code == 0
    for split, data, count in [("test", ldct / "test", 8), ("val", ldct / "train", 5), ("all", ldct / "train", 24)]:
        preds = tmp_path / f"{split}.csv"
        result = runner.invoke(app, ["evaluate", "--data", str(data), "--split", split, "--weights",
                                     str(out / "best.safetensors"), "--format", "json", "--predictions", str(preds)])
        assert result.exit_code == 0, result.stderr
        reported = json.loads(result.stdout)
        rows = list(csv.DictReader(preds.open()))
        assert reported["images"] == len(rows) == count
        assert set(rows[0]) == {"path", "label", "prediction", "class", "head_sd", "noise_hu"}
        p, y = [float(r["prediction"]) for r in rows], [float(r["label"]) for r in rows]
        assert set(reported["noise_hu_baseline"]) == {"plcc", "srocc", "krocc", "score", "images"}
        assert reported["plcc"] == pytest.approx(stats.pearsonr(p, y).statistic, abs=1e-12)
        assert reported["srocc"] == pytest.approx(stats.spearmanr(p, y).statistic, abs=1e-12)
        assert reported["krocc"] == pytest.approx(stats.kendalltau(p, y).statistic, abs=1e-12)
        deciles = reported["error_by_uncertainty"]  # ten groups by head_sd, lowest first
        if count >= 10:
            assert len(deciles) == 10 and sum(d["images"] for d in deciles) == count
            assert all(a["head_sd_to"] <= b["head_sd_from"] for a, b in zip(deciles, deciles[1:]))
            errors = np.abs(np.array(p) - np.array(y))
            assert np.mean([d["mean_abs_error"] for d in deciles]) == pytest.approx(errors.mean(), rel=0.1)
        # each image's noise figure, measured from the same read as its score: the windowed TIFF back in HU
        window = read_config(out / "best.safetensors")
        for row in rows:
            hu = tifffile.imread(row["path"]) * window.window_width + window.window_level - window.window_width / 2
            expected = measure_noise(hu, "hu").noise_hu
            assert (row["noise_hu"] == "") if expected is None else float(row["noise_hu"]) == pytest.approx(expected,
                                                                                                           abs=1e-3)
    split = json.loads((out / "split.json").read_text())
    val_rows = list(csv.DictReader((tmp_path / "val.csv").open()))
    assert [Path(r["path"]).name for r in val_rows] == split["val"]  # the run's own validation images
    best = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][0]
    assert json.loads(runner.invoke(app, ["evaluate", "--data", str(ldct / "train"), "--split", "val", "--weights",
                                          str(out / "best.safetensors"), "--format", "json"]).stdout)["score"] \
        == pytest.approx(best["val_score"], abs=1e-5)  # other batch size, other float summation order


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="needs torchrun")
def test_two_process_gloo_run(ldct, tmp_path):
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "clinreadnet_cli", "train", "--data",
         str(ldct / "train"), "--config", str(ldct / "tiny.toml"), "--epochs", "1", "--out", str(out),
         "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "best.safetensors").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert "x2" in proc.stderr  # both processes took part


@pytest.mark.parametrize("damage, message", [
    ("truncate-state", "damaged training state"),
    ("garbage-config", "config.json is damaged"),
    ("missing-split", "split.json: missing or damaged"),
])
def test_a_broken_run_folder_is_one_line_saying_what_to_do(ldct, tmp_path, damage, message):
    out = tmp_path / "run"
    assert train("--data", ldct / "train", "--config", ldct / "tiny.toml", "--epochs", 1, "--out", out).exit_code == 0
    if damage == "truncate-state":
        state = out / "last_state.safetensors"
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif damage == "garbage-config":
        (out / "config.json").write_text("{not json")
    else:
        (out / "split.json").unlink()
    result = train("--resume", "--out", out, "--epochs", 2)
    assert result.exit_code == 2 and message in result.stderr and "start a fresh run" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_card_commands_run_as_written(ldct, tmp_path, monkeypatch):
    """`clinreadnet train --data ldct/` then `clinreadnet evaluate --split test`, nothing else."""
    monkeypatch.chdir(tmp_path)
    trained = train("--data", ldct, "--config", ldct / "tiny.toml", "--epochs", 1)  # the parent of the layouts
    assert trained.exit_code == 0, trained.stderr
    assert (tmp_path / "runs" / "clinreadnet" / "best.safetensors").is_file()
    evaluated = runner.invoke(app, ["evaluate", "--split", "test", "--format", "json"])
    assert evaluated.exit_code == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["images"] == 8  # ldct/test, found below the run's data
    assert "runs/clinreadnet/best.safetensors" in evaluated.stderr and "training run" in evaluated.stderr
    val = runner.invoke(app, ["evaluate", "--split", "val", "--format", "json"])
    assert val.exit_code == 0 and json.loads(val.stdout)["images"] == 5


def test_evaluate_reads_a_runs_images_as_the_run_did(ldct, tmp_path):
    """8-bit TIFFs (the ablation subset's model-input images) need input_range = "unit": a run trained
    on them is evaluated with its own setting; --data alone must be told."""
    data = tmp_path / "eight-bit"
    (data / "image").mkdir(parents=True)
    for source in sorted((ldct / "train" / "image").iterdir()):
        tifffile.imwrite(data / "image" / source.name, np.round(tifffile.imread(source) * 255).astype(np.uint8))
    (data / "train.json").write_text((ldct / "train" / "train.json").read_text())
    options = tmp_path / "options.toml"
    options.write_text(TINY_TOML.replace("workers = 0", 'workers = 0\ninput_range = "unit"'))
    out = tmp_path / "run"
    assert train("--data", data, "--config", options, "--epochs", 1, "--out", out).exit_code == 0
    evaluated = runner.invoke(app, ["evaluate", "--run", str(out), "--split", "val", "--format", "json"])
    assert evaluated.exit_code == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["images"] == 5
    weights = ["--weights", str(out / "best.safetensors"), "--split", "all", "--format", "json"]
    refused = runner.invoke(app, ["evaluate", "--data", str(data), *weights])
    assert refused.exit_code == 2 and "integer TIFF (uint8)" in refused.stderr
    told = runner.invoke(app, ["evaluate", "--data", str(data), "--input-range", "unit", *weights])
    assert told.exit_code == 0 and json.loads(told.stdout)["images"] == 24


def _split(run: Path) -> dict:
    return {k: json.loads((run / "split.json").read_text())[k] for k in ("train", "val")}


def test_split_file_trains_on_another_runs_patients(ldct, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert train("--data", ldct / "train", "--config", ldct / "tiny.toml", "--epochs", 1, "--out", first).exit_code == 0
    result = train("--data", ldct / "train", "--config", ldct / "tiny.toml", "--epochs", 1, "--out", second,
                   "--seed", 7, "--split-file", first / "split.json")
    assert result.exit_code == 0, result.stderr
    assert _split(second) == _split(first)
    (tmp_path / "bad.json").write_text("[]")
    refused = train("--data", ldct / "train", "--config", ldct / "tiny.toml", "--out", tmp_path / "third",
                    "--split-file", tmp_path / "bad.json")
    assert refused.exit_code == 2 and "bad.json: missing or damaged" in refused.stderr
    assert not (tmp_path / "third").exists()


def test_evaluate_never_substitutes_another_split(ldct, tmp_path):
    result = runner.invoke(app, ["evaluate", "--data", str(ldct / "train"), "--split", "test"])
    assert result.exit_code == 2 and "no test split" in result.stderr
    nothing = runner.invoke(app, ["evaluate", "--run", str(tmp_path / "no-run")])
    assert nothing.exit_code == 2 and "not a training run folder" in nothing.stderr


def test_train_refuses_a_used_run_folder_and_leaves_nothing_half_made(ldct, tmp_path):
    out = tmp_path / "run"
    common = ["--data", ldct / "train", "--config", ldct / "tiny.toml", "--epochs", 1, "--out", out]
    assert train(*common).exit_code == 0
    again = train(*common)
    assert again.exit_code == 2 and "already holds a training run" in again.stderr and "--overwrite" in again.stderr
    assert train(*common, "--overwrite").exit_code == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # started over, not appended
    broken = train("--data", ldct / "train", "--config", ldct / "tiny.toml", "--out", tmp_path / "new",
                   "--backbone-checkpoint", tmp_path / "missing.safetensors")
    assert broken.exit_code == 2 and "missing.safetensors" in broken.stderr and "Traceback" not in broken.stderr
    assert not (tmp_path / "new").exists()


def test_images_no_score_would_read_stop_train_and_evaluate_before_they_start(tmp_path):
    """Every unusable image is named in one error before the first step, not found by a loader
    worker mid-epoch: here pure noise (no spatial structure) and a truncated file."""
    root = tmp_path / "d"
    _write_layout(root, "image", "train.json", 24, seed=0)
    tifffile.imwrite(root / "image" / "0003.tif", np.random.default_rng(0).random((64, 64), dtype=np.float32))
    (root / "image" / "0007.tif").write_bytes((root / "image" / "0007.tif").read_bytes()[:100])
    (root / "tiny.toml").write_text(TINY_TOML)
    refused = train("--data", root, "--config", root / "tiny.toml", "--epochs", 1, "--out", tmp_path / "run")
    assert refused.exit_code == 2 and "Traceback" not in refused.stderr
    assert "2 image(s) cannot be used" in refused.stderr
    assert "0003.tif" in refused.stderr and "no spatial structure" in refused.stderr and "0007.tif" in refused.stderr
    assert not (tmp_path / "run").exists()
    evaluated = runner.invoke(app, ["evaluate", "--data", str(root), "--weights", "sim-v4", "--split", "all"])
    assert evaluated.exit_code == 2 and "Traceback" not in evaluated.stderr
    assert "2 image(s) cannot be used" in evaluated.stderr and "0003.tif" in evaluated.stderr


def test_a_validation_set_without_two_classes_is_an_error(tmp_path):
    root = tmp_path / "flat"
    (root / "image").mkdir(parents=True)
    for i, image in enumerate(unit_phantom(10, 64)):
        tifffile.imwrite(root / "image" / f"{i:04d}.tif", image)
    (root / "train.json").write_text(json.dumps({f"{i:04d}.tif": 3.0 for i in range(10)}))
    result = train("--data", root, "--epochs", 1, "--out", tmp_path / "run", "--img-size", 64)
    assert result.exit_code == 2 and "1 class(es)" in result.stderr and not (tmp_path / "run").exists()


def test_half_weights_halve_the_best_checkpoint(ldct, tmp_path):
    common = ["--data", ldct / "train", "--config", ldct / "tiny.toml", "--epochs", 1]
    assert train(*common, "--out", tmp_path / "full").exit_code == 0
    assert train(*common, "--out", tmp_path / "half", "--half-weights").exit_code == 0
    full, half = (tmp_path / d / "best.safetensors" for d in ("full", "half"))
    assert {t.dtype for t in _tensors(half).values() if t.is_floating_point()} == {torch.float16}
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert runner.invoke(app, ["score", str(ldct / "test"), "--weights", str(half)]).exit_code == 0


def test_distillation_trains_one_grid_toward_the_teachers_four_grid_distributions(ldct, tmp_path):
    four = tmp_path / "four.toml"
    four.write_text(TINY_TOML + "sampling_grids = 4\n")
    common = ["--data", ldct / "train", "--epochs", 1]
    assert train(*common, "--config", four, "--out", tmp_path / "teacher").exit_code == 0
    teacher_weights = tmp_path / "teacher" / "best.safetensors"
    out = tmp_path / "student"
    ranked = tmp_path / "ranked.toml"  # the ranking term beside the distillation, on the items' classes
    ranked.write_text(TINY_TOML + "[model_overrides.loss]\nrank_weight = 5.0\n")
    result = train(*common, "--config", ranked, "--out", out, "--distil-from", teacher_weights,
                   "--init-weights", teacher_weights)
    assert result.exit_code == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["model_overrides"]["loss"]["rank_weight"] == 5.0
    assert "teacher" in result.stderr and "scored in" in result.stderr
    assert read_config(out / "best.safetensors").sampling_grids == 1
    # The targets are the teacher's own per-head distributions, read through all four grids.
    with safe_open(str(out / "teacher.safetensors"), framework="pt") as f:
        keys, targets = json.loads(f.metadata()["keys"]), f.get_tensor("head_probs")
    assert keys == json.loads((out / "split.json").read_text())["train"]
    teacher = load_model(teacher_weights).eval()
    first = [LabelledSlice(k, ldct / "train" / "image" / k, 0.0) for k in keys[:3]]
    images = torch.stack([prepare_slice(tifffile.imread(i.path), "unit", teacher.config) for i in first])
    assert images.shape[1] == 4
    assert torch.allclose(teacher.predict(images).head_probs, targets[:3], atol=1e-5)
    # A resumed run reads them back instead of scoring the teacher again.
    resumed = train("--resume", "--out", out, "--epochs", 2)
    assert resumed.exit_code == 0, resumed.stderr
    assert "scored in" not in resumed.stderr


def test_distillation_loss_is_zero_at_the_teacher_and_pulls_toward_it():
    teacher = torch.softmax(torch.randn(5, 4, 21) * 2, dim=-1)
    loss = DistillationLoss()
    assert loss(torch.log(teacher), teacher).total.item() == pytest.approx(0.0, abs=1e-5)
    logits = torch.zeros(5, 4, 21, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=0.1)
    start = loss(logits, teacher).total.item()
    for _ in range(300):
        optimiser.zero_grad()
        loss(logits, teacher).total.backward()
        optimiser.step()
    assert loss(logits, teacher).total.item() < 0.01 * start
    assert torch.allclose(torch.softmax(logits, -1), teacher, atol=0.02)


def test_distillation_adds_the_ranking_term_on_the_items_classes_when_asked():
    teacher = torch.full((3, 4, 21), 1 / 21)
    classes = torch.tensor([0, 10, 20])  # the first image the worst
    in_order = torch.zeros(3, 4, 21)
    in_order[torch.arange(3), :, classes] = 10.0  # each image scored at its own class
    backwards = in_order.flip(0)
    plain, ranked = DistillationLoss(), DistillationLoss(rank_weight=5.0)
    assert "rank" not in plain(backwards, teacher, classes).parts
    assert ranked(in_order, teacher, classes).parts["rank"].item() == 0.0
    wrong = ranked(backwards, teacher, classes)
    assert wrong.parts["rank"].item() > 0.5
    assert wrong.total.item() == pytest.approx(plain(backwards, teacher).total.item() + 5 * wrong.parts["rank"].item(),
                                               rel=1e-5)
    with pytest.raises(ValueError, match="label classes"):
        ranked(in_order, teacher)
