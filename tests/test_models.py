from __future__ import annotations

import math

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.swin_transformer import WindowAttention

from clinreadnet_cli.archs import create_model
from clinreadnet_cli.archs.heads import GRADES, expected_score, grade_name
from clinreadnet_cli.archs.mtmsa import MTMSA
from clinreadnet_cli.config import ConfigError, MTMSAConfig, get_config, list_configs
from clinreadnet_cli.losses import create_loss
from clinreadnet_cli.losses.hrps import entropy, head_class_weights

from .conftest import TINY, tiny_config

PAPER_CONFIGS = [
    "swin_t-plain", "swin_t", "swin_t+soqn", "swin_t+soqn+mtmsa", "clinreadnet",
    "clinreadnet-no-sobel", "clinreadnet-no-ordinal", "clinreadnet-plain-residual",
    "clinreadnet-t-low", "clinreadnet-t-medium", "clinreadnet-t-high",
    "clinreadnet-t-low-medium", "clinreadnet-t-low-high", "clinreadnet-t-medium-high",
    "clinreadnet-no-fine-rps", "clinreadnet-no-ce", "clinreadnet-no-entropy", "clinreadnet-no-coarse-rps",
    "bam-channel", "bam-spatial",
]


def test_registry_has_every_paper_ablation():
    assert set(PAPER_CONFIGS) <= set(list_configs())


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_named_config_trains_one_step_and_scores(name, batch):
    model = create_model(tiny_config(name))
    heads = model.config.classifier_heads
    loss = create_loss(model.config)(model(batch), torch.tensor([0, 7, 14, 20]))
    loss.total.backward()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.optim.NAdam(model.parameters(), lr=1e-3).step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    logits = model(batch)
    assert logits.shape == (4, heads, 21)
    pred = model.predict(batch)
    assert pred.probs.shape == (4, 21) and pred.head_probs.shape == (4, heads, 21)
    assert torch.allclose(pred.probs.sum(-1), torch.ones(4), atol=1e-6)
    assert torch.allclose(pred.head_probs.sum(-1), torch.ones(4, heads), atol=1e-6)
    assert ((pred.score >= 0) & (pred.score <= 4)).all()
    assert ((pred.head_scores >= 0) & (pred.head_scores <= 4)).all()
    assert pred.label.dtype == torch.int64 and ((pred.label >= 0) & (pred.label <= 20)).all()
    # The averaged prediction is the mean of the heads' distributions.
    assert torch.allclose(pred.probs, pred.head_probs.mean(1))


def test_components_present_as_configured():
    full = create_model(tiny_config("clinreadnet"))
    assert set(full.soqn) == {"0", "1"}
    assert all(isinstance(b.attn, MTMSA) for b in full.backbone.layers[3].blocks)
    assert not any(isinstance(b.attn, MTMSA) for s in full.backbone.layers[:3] for b in s.blocks)
    # The second stage-4 block is a shifted-window block at this size: SW-MTMSA with a mask.
    shifted = full.backbone.layers[3].blocks[1]
    assert any(shifted.shift_size) and shifted.attn_mask is not None

    base = create_model(tiny_config("swin_t"))
    assert len(base.soqn) == 0
    assert not any(isinstance(b.attn, MTMSA) for b in base.backbone.layers[3].blocks)
    plain = create_model(tiny_config("swin_t-plain"))  # Swin-T as published: one head on the last stage
    assert len(plain.head.heads) == 1 and plain.head.heads[0].in_features == plain.backbone.num_features
    assert len(plain.soqn) == 0 and plain.bam is None
    for kind in ("channel", "spatial"):
        bam = create_model(tiny_config(f"bam-{kind}"))
        assert bam.bam is not None and set(bam.soqn) == {"0", "1"}
        assert not any(isinstance(b.attn, MTMSA) for b in bam.backbone.layers[3].blocks)
    assert create_model(tiny_config("clinreadnet-no-sobel")).soqn["0"].sobel is None
    assert create_model(tiny_config("clinreadnet-no-ordinal")).soqn["0"].ordinal is None
    plain = create_model(tiny_config("clinreadnet-plain-residual")).soqn["0"]
    assert "gamma" not in dict(plain.named_parameters()) and float(plain.gamma) == float(plain.beta) == 1.0


def test_paper_initial_values():
    model = create_model(tiny_config("clinreadnet"))
    for soqn in model.soqn.values():
        assert soqn.gamma.item() == pytest.approx(0.2) and soqn.beta.item() == pytest.approx(0.8)
    attn = model.backbone.layers[3].blocks[0].attn
    assert attn.temperature_values().tolist() == pytest.approx([0.5, 1.0, 2.0])
    assert attn.progressive_weights.tolist() == pytest.approx([0.3, 0.4, 0.3])
    subset = create_model(tiny_config("clinreadnet-t-low-high")).backbone.layers[3].blocks[0].attn
    assert subset.temperature_values().tolist() == pytest.approx([0.5, 2.0])
    assert subset.progressive_weights.tolist() == pytest.approx([0.3, 0.3])


def test_any_temperature_subset_and_bad_ones():
    assert MTMSAConfig(temperatures=("high", "low")).temperatures == ("low", "high")
    for bad in [(), ("warm",), ("low", "low")]:
        with pytest.raises(ConfigError):
            MTMSAConfig(temperatures=bad)
    with pytest.raises(ConfigError, match="unknown model config"):
        get_config("resnet50")


def test_eval_is_deterministic(batch):
    model = create_model(tiny_config("clinreadnet")).eval()
    first, second = model(batch), model(batch)
    assert torch.equal(first, second)


def test_training_mode_uses_gumbel_noise_and_eval_does_not():
    soqn = create_model(tiny_config("clinreadnet")).soqn["0"]
    s_out, o_out = torch.randn(4, 16, 32, 32), torch.randn(4, 16, 32, 32)
    soqn.train()
    draws = [soqn.branch_weights(s_out, o_out) for _ in range(3)]
    assert not torch.allclose(draws[0], draws[1]) and not torch.allclose(draws[1], draws[2])
    assert torch.allclose(draws[0].sum(1), torch.ones(4))
    soqn.eval()
    w1, w2 = soqn.branch_weights(s_out, o_out), soqn.branch_weights(s_out, o_out)
    assert torch.equal(w1, w2)
    logits = soqn.fuse(torch.cat([s_out, o_out], 1)).flatten(1)
    assert torch.allclose(w1, logits.softmax(1))


def test_gradients_reach_soqn_and_mtmsa(batch):
    model = create_model(tiny_config("clinreadnet")).train()
    logits = model(batch)
    logits.logsumexp(-1).sum().backward()
    named = dict(model.named_parameters())
    must_learn = [
        "soqn.0.gamma", "soqn.0.beta", "soqn.1.gamma", "soqn.1.beta",
        "soqn.0.ordinal.ordinal_weight", "soqn.0.sobel.direction_maps.0.0.weight",
        "soqn.0.sobel.fusion1.1.weight", "soqn.0.fuse.3.weight", "soqn.1.enhance.0.0.weight",
    ]
    for block in ("0", "1"):
        prefix = f"backbone.layers.3.blocks.{block}.attn."
        must_learn += [prefix + p for p in ("log_temperatures", "log_mixing_sharpness", "progressive_weights",
                                            "modulator.0.weight", "qkv.weight")]
    for name in must_learn:
        grad = named[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_single_temperature_one_equals_timm_window_attention():
    """With T = 1 alone, (S)W-MTMSA must reduce to timm's (S)W-MSA, shift mask included."""
    attn = WindowAttention(dim=32, num_heads=4, window_size=(4, 4)).eval()
    mtmsa = MTMSA.replacing(attn, MTMSAConfig(temperatures=("medium",))).eval()
    windows, batch = 4, 2
    x = torch.randn(windows * batch, 16, 32)
    mask = torch.zeros(windows, 16, 16)
    mask[1:, :8, 8:] = mask[1:, 8:, :8] = -100.0  # timm's shift mask value
    for m in (None, mask):
        assert torch.allclose(mtmsa(x, m), attn(x, m), atol=1e-5)


def test_temperatures_smooth_and_sharpen():
    """softmax(T A): T < 1 spreads attention (higher entropy), T > 1 concentrates it."""
    attn = MTMSA(dim=32, num_heads=4, window_size=(4, 4), cfg=MTMSAConfig())
    logits = torch.randn(8, 4, 16, 16) * 3
    low, medium, high = (entropy((logits * t).softmax(-1)).mean() for t in attn.temperature_values().detach())
    assert low > medium > high
    alpha = attn.mixing_weights(torch.randn(8, 16, 32))
    assert alpha.shape == (8, 3) and torch.allclose(alpha.sum(1), torch.ones(8))


def test_temperatures_stay_positive_and_mixing_can_leave_uniform():
    attn = MTMSA(dim=32, num_heads=4, window_size=(4, 4), cfg=MTMSAConfig())
    with torch.no_grad():
        attn.log_temperatures.fill_(-30.0)  # where a plain T would have been pushed below zero
    assert (attn.temperature_values() > 0).all()
    x = torch.randn(8, 16, 32)
    with torch.no_grad():
        attn.modulator[2].bias.copy_(torch.tensor([6.0, -6.0, -6.0]))  # the modulator prefers T_low
        attn.log_mixing_sharpness.fill_(math.log(20.0))
    assert attn.mixing_weights(x)[:, 0].min() > 0.9
    legacy = MTMSA(dim=32, num_heads=4, window_size=(4, 4),
                   cfg=MTMSAConfig(log_temperatures=False, mixing_sharpness=False))
    assert {n for n, _ in legacy.named_parameters()} >= {"temperatures"}
    assert "log_mixing_sharpness" not in dict(legacy.named_parameters())


def test_grayscale_input_and_sizes():
    model = create_model(tiny_config("clinreadnet"))
    assert model.backbone.patch_embed.proj.in_channels == 1
    big = create_model(tiny_config("clinreadnet", img_size=256)).eval()
    assert big(torch.rand(1, 1, 256, 256)).shape == (1, 4, 21)


def test_every_sampling_grid_is_scored_and_their_probabilities_averaged():
    model = create_model(tiny_config("clinreadnet", sampling_grids=4)).eval()
    grids = torch.rand(2, 4, TINY["img_size"], TINY["img_size"])
    with torch.inference_mode():
        each = torch.stack([model(grids[:, g:g + 1]) for g in range(4)], dim=1)  # one grid at a time
        stacked = model(grids)
    assert stacked.shape == (2, 4, 21)
    torch.testing.assert_close(stacked.softmax(-1), each.softmax(-1).mean(dim=1))
    torch.testing.assert_close(model.predict(grids).score,
                               torch.stack([model.predict(grids[:, g:g + 1]).score for g in range(4)]).mean(0))
    with pytest.raises(ValueError, match="1 or 4 input channels"):
        model(grids[:, :2])


@pytest.mark.parametrize("img_size", [224, 512])
def test_real_input_sizes_build(img_size):
    """The full-size network accepts 224 and 512 inputs (timm pads windows where needed)."""
    model = create_model("clinreadnet", img_size=img_size, depths=(1, 1, 1, 1)).eval()
    with torch.inference_mode():
        assert model(torch.rand(1, 1, img_size, img_size)).shape == (1, 4, 21)


def test_local_backbone_checkpoint(tmp_path):
    """A 3-channel timm Swin checkpoint loads through timm: RGB patch weights summed to grayscale."""
    donor = timm.create_model("swin_tiny_patch4_window7_224", in_chans=3, num_classes=10, **TINY)
    path = tmp_path / "swin.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    model = create_model(tiny_config("clinreadnet"), backbone_checkpoint=path)
    rgb = donor.patch_embed.proj.weight
    assert torch.allclose(model.backbone.patch_embed.proj.weight, rgb.sum(1, keepdim=True))
    qkv = "layers.3.blocks.1.attn.qkv.weight"  # carried into the MTMSA that replaced it
    assert torch.equal(model.backbone.state_dict()[qkv], donor.state_dict()[qkv])
    with pytest.raises(ValueError, match="safetensors"):
        create_model(tiny_config("clinreadnet"), backbone_checkpoint=tmp_path / "swin.pth")
    wider = timm.create_model("swin_tiny_patch4_window7_224", in_chans=3, **{**TINY, "embed_dim": 32})
    save_file({k: v.contiguous() for k, v in wider.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match=r"swin\.safetensors: not a Swin checkpoint that fits config 'clinreadnet'"):
        create_model(tiny_config("clinreadnet"), backbone_checkpoint=path)


def test_head_partition_contiguous_or_seeded_shuffle():
    contiguous = head_class_weights(21, 4)
    assert (contiguous[0, :6] == 4).all() and (contiguous[0, 6:] == 0.25).all()
    shuffled = head_class_weights(21, 4, "shuffled", seed=0)
    assert torch.equal(shuffled, head_class_weights(21, 4, "shuffled", seed=0))
    assert not torch.equal(shuffled, contiguous) and not torch.equal(shuffled, head_class_weights(21, 4, "shuffled", 1))
    assert ((shuffled == 4).sum(0) == 1).all()  # every class is one head's own, in both partitions
    assert sorted((shuffled == 4).sum(1).tolist()) == sorted((contiguous == 4).sum(1).tolist())
    with pytest.raises(ConfigError, match="head_partition"):
        tiny_config(loss={"head_partition": "random"})


def test_backbone_checkpoint_keys_are_reported(tmp_path):
    donor = timm.create_model("swin_tiny_patch4_window7_224", in_chans=3, num_classes=10, **TINY)
    state = {k: v.contiguous() for k, v in donor.state_dict().items() if not k.startswith("layers.3.blocks.1.mlp")}
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    report = create_model(tiny_config("clinreadnet"), backbone_checkpoint=path).backbone_load
    assert sorted(report.missing) == sorted(k for k in donor.state_dict() if k.startswith("layers.3.blocks.1.mlp"))
    assert report.unexpected == ["extra.weight"]
    assert any("3 -> 1 input channel" in a for a in report.adapted)
    assert "missing (left as initialised)" in report.describe() and "extra.weight" in report.describe()


def test_score_helpers():
    probs = torch.zeros(3, 21)
    probs[0, 20] = probs[1, 0] = 1
    probs[2, 10] = probs[2, 11] = 0.5
    assert expected_score(probs).tolist() == pytest.approx([4.0, 0.0, 2.1])
    assert [grade_name(s) for s in (0.0, 0.49, 0.5, 2.1, 3.6, 4.0)] == ["bad", "bad", "poor", "fair", "excellent", "excellent"]
    assert GRADES == ("bad", "poor", "fair", "good", "excellent")
