from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from clinreadnet_cli import checkpoint
from clinreadnet_cli.archs import create_model
from clinreadnet_cli.checkpoint import WeightsError, load_model, load_weights, read_config, save_weights

from .conftest import tiny_config


@pytest.fixture
def trained(batch):
    """A tiny model whose batch-norm statistics and parameters have moved away from their init."""
    model = create_model(tiny_config("clinreadnet")).train()
    optim = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        optim.zero_grad()
        model(batch).logsumexp(-1).sum().backward()
        optim.step()
    return model.eval()


def test_round_trip_is_bit_exact(trained, batch, tmp_path):
    path = save_weights(trained, tmp_path / "w.safetensors")
    loaded = load_model(path)
    assert loaded.config == trained.config
    assert not loaded.training
    assert torch.equal(loaded(batch), trained(batch))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temp file left behind


def test_config_is_self_describing(trained, tmp_path):
    path = save_weights(trained, tmp_path / "w.safetensors")
    cfg = read_config(path)
    assert (cfg.name, cfg.img_size, cfg.window_size, cfg.num_classes) == ("clinreadnet", 128, 2, 21)
    assert (cfg.window_width, cfg.window_level) == (350.0, 40.0)


def test_fp16_storage_loads_as_fp32(trained, batch, tmp_path):
    full = save_weights(trained, tmp_path / "w32.safetensors")
    half = save_weights(trained, tmp_path / "w16.safetensors", dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_model(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert torch.allclose(loaded.predict(batch).probs, trained.predict(batch).probs, atol=2e-2)


def test_mismatched_config_is_refused(trained, tmp_path):
    path = save_weights(trained, tmp_path / "w.safetensors")
    other = create_model(tiny_config("clinreadnet", img_size=64))
    with pytest.raises(WeightsError) as err:
        load_weights(other, path)
    message = str(err.value)
    assert str(path) in message and "img_size" in message and "128" in message and "64" in message


def test_tensors_that_do_not_fit_the_stored_config_are_refused(trained, tmp_path):
    """A file claiming the full config but holding swin_t tensors: one clear error, not a crash."""
    plain = create_model(tiny_config("swin_t"))
    path = tmp_path / "forged.safetensors"
    save_file(
        {k: v.contiguous() for k, v in plain.state_dict().items()}, str(path),
        metadata={"format": checkpoint.FORMAT, "config": trained.config.to_json()},
    )
    with pytest.raises(WeightsError, match=r"tensors do not fit its config \(missing tensors: backbone\.layers\.3\.blocks\.0\.attn\..* and \d+ more\)"):
        load_model(path)
    wide = create_model(tiny_config("clinreadnet", embed_dim=32))
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(path),
              metadata={"format": checkpoint.FORMAT, "config": trained.config.to_json()})
    with pytest.raises(WeightsError, match="wrong shape tensors"):
        load_model(path)


@pytest.mark.parametrize("content, reason", [
    (b"", "not a readable safetensors file"),
    (b"\x80\x04\x95pickle", "not a readable safetensors file"),
    (b"hello, I am text", "not a readable safetensors file"),
])
def test_unreadable_files_name_the_file_and_reason(tmp_path, content, reason):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=reason) as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_foreign_safetensors_and_missing_file(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(WeightsError, match="not a clinreadnet weights file"):
        load_model(path)
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "absent.safetensors")


def test_failed_save_keeps_the_old_file(trained, tmp_path, monkeypatch):
    path = save_weights(trained, tmp_path / "w.safetensors")
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", broken)  # what save_weights imports when it writes
    with pytest.raises(OSError, match="disk full"):
        save_weights(trained, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_fine_tuning_starts_from_older_weights_with_another_parameterisation(trained, tmp_path):
    """v1 weights (temperatures stored as T, no mixing sharpness, resize path) seed a v2 model."""
    legacy_cfg = dataclasses.replace(
        tiny_config("clinreadnet", input_path="resize"),
        mtmsa=dataclasses.replace(tiny_config().mtmsa, log_temperatures=False, mixing_sharpness=False))
    legacy = create_model(legacy_cfg)
    legacy.load_state_dict(trained.state_dict(), strict=False)
    with torch.no_grad():
        legacy.backbone.layers[3].blocks[0].attn.temperatures.copy_(torch.tensor([0.4, 1.1, 2.5]))
    path = save_weights(legacy, tmp_path / "v1.safetensors")

    model = create_model(tiny_config("clinreadnet"))
    copied, fresh = checkpoint.initialise_from(model, path)
    assert fresh == [f"backbone.layers.3.blocks.{i}.attn.log_mixing_sharpness" for i in (0, 1)]
    assert copied == len(model.state_dict()) - 2
    attn = model.backbone.layers[3].blocks[0].attn
    assert torch.allclose(attn.temperature_values(), torch.tensor([0.4, 1.1, 2.5]))
    assert torch.equal(model.state_dict()["head.heads.0.weight"], legacy.state_dict()["head.heads.0.weight"])


def test_fine_tuning_onto_the_detail_path_starts_where_the_stored_model_was(trained, batch, tmp_path):
    """A one-channel model's weights seed a decimate-detail model: the new channel's patch-embedding
    weights are zero, so whatever the detail channel holds, the scores start as the stored model's."""
    path = save_weights(trained, tmp_path / "one-channel.safetensors")
    widened = create_model(tiny_config("clinreadnet", input_path="decimate-detail", in_chans=2)).eval()
    copied, fresh = checkpoint.initialise_from(widened, path)
    assert fresh == [] and copied == len(widened.state_dict())
    assert not widened.backbone.patch_embed.proj.weight[:, 1:].any()
    detail = torch.rand_like(batch)
    with torch.no_grad():
        torch.testing.assert_close(widened(torch.cat([batch, detail], dim=1)), trained(batch))


def test_fine_tuning_onto_the_stack_path_deals_the_embedding_across_the_grids(trained, batch, tmp_path):
    """A one-channel model's weights seed a decimate-stack model: each embedding dimension reads one
    grid with the stored weights, so four identical grids score as the stored model scores one."""
    path = save_weights(trained, tmp_path / "one-channel.safetensors")
    stacked = create_model(tiny_config("clinreadnet", input_path="decimate-stack", in_chans=4)).eval()
    copied, fresh = checkpoint.initialise_from(stacked, path)
    assert fresh == [] and copied == len(stacked.state_dict())
    weight = stacked.backbone.patch_embed.proj.weight
    assert [int(weight[d].abs().sum(dim=(1, 2)).nonzero()[0]) for d in range(8)] == [0, 1, 2, 3] * 2
    with torch.no_grad():
        torch.testing.assert_close(stacked(batch.repeat(1, 4, 1, 1)), trained(batch))


def test_fine_tuning_refuses_weights_of_another_architecture(tmp_path):
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="not a clinreadnet weights file"):
        checkpoint.initialise_from(create_model(tiny_config()), tmp_path / "other.safetensors")


def _hostile(tmp_path, trained, name, config=None, tensors=None, raw_config=None):
    """A weights file built from a real one with its header config or tensors replaced."""
    stored = trained.config.to_dict()
    if config:
        stored.update(config)
    values = {k: v.detach().clone() for k, v in trained.state_dict().items()}
    if tensors:
        values.update(tensors(values))
    text = raw_config if raw_config is not None else json.dumps(stored)
    path = tmp_path / f"{name}.safetensors"
    save_file(values, str(path), metadata={"format": checkpoint.FORMAT, "config": text})
    return path


@pytest.mark.parametrize("name, change, message", [
    ("null", dict(raw_config="null"), "must be a JSON object"),
    ("list", dict(raw_config="[1, 2]"), "must be a JSON object"),
    ("deep", dict(raw_config="[" * 10000 + "]" * 10000), "nested too deeply"),
    ("zero-heads", dict(config={"classifier_heads": 0}), "classifier_heads 0"),
    ("huge-input", dict(config={"img_size": 100000}), "img_size 100000"),
    ("window-zero", dict(config={"window_width": 0}), "window_width"),
    ("window-nan", dict(raw_config='{"name": "clinreadnet", "window_width": NaN}'), "finite number"),
    ("deep-stage", dict(config={"depths": [1, 1, 600, 2]}), "depths"),
    ("string-size", dict(config={"img_size": "128"}), "img_size must be int"),
    ("nan-tensor", dict(tensors=lambda v: {"head.heads.0.weight": torch.full_like(v["head.heads.0.weight"], float("nan"))}),
     "non-finite"),
])
def test_hostile_weights_are_refused_in_one_line(tmp_path, trained, name, change, message):
    path = _hostile(tmp_path, trained, name, **change)
    with pytest.raises(WeightsError, match=message) as err:
        load_model(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_export_weights_interpolates_two_fine_tunes_by_their_shares(trained, tmp_path):
    """scripts/export_weights.py --average-with B --shares: each floating tensor is the shares'
    weighted sum (source first), integer buffers stay the source's; shares that do not fit are a
    usage error."""
    other = create_model(tiny_config("clinreadnet"))  # same config, other tensors
    source_path = save_weights(trained, tmp_path / "a.safetensors")
    other_path = save_weights(other, tmp_path / "b.safetensors")
    script = Path(__file__).resolve().parents[1] / "scripts" / "export_weights.py"

    def export(*extra):
        return subprocess.run([sys.executable, str(script), str(source_path), str(tmp_path / "soup.safetensors"),
                               "--fp32", "--average-with", str(other_path), *extra], capture_output=True, text=True)

    assert export("--shares", "0.25", "0.75").returncode == 0
    soup = load_model(tmp_path / "soup.safetensors").state_dict()
    a, b = trained.state_dict(), other.state_dict()
    floating = [k for k, v in a.items() if v.is_floating_point() and not torch.equal(v, b[k])]
    assert floating  # the two models really differ
    for key, value in soup.items():
        expected = 0.25 * a[key] + 0.75 * b[key] if a[key].is_floating_point() else a[key]
        assert torch.allclose(value, expected, atol=1e-6), key
    assert export("--shares", "0.5", "0.6").returncode == 2
    assert "--shares" in export("--shares", "1.0").stderr
