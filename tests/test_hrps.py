from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from clinreadnet_cli.archs import create_model
from clinreadnet_cli.config import ConfigError, LossConfig, get_config
from clinreadnet_cli.losses import create_loss
from clinreadnet_cli.losses.hrps import (
    ClinReadNetLoss, coarse_probabilities, head_class_weights, metabalance, ranked_probability_score,
)
from clinreadnet_cli.losses.ranking import pairwise_ranking

from .conftest import tiny_config


def onehot(k, n=21):
    return F.one_hot(torch.tensor([k]), n).float()


def test_rps_is_zero_for_a_perfect_prediction():
    for k in range(21):
        assert ranked_probability_score(onehot(k), torch.tensor([k])).item() == 0


def test_rps_grows_with_distance_of_the_predicted_mass():
    y = torch.tensor([10])
    # All the mass on class j: the cumulative curves differ at exactly |j - y| thresholds.
    for j in range(21):
        assert ranked_probability_score(onehot(j), y).item() == abs(j - 10)
    # Spreading mass further away costs more than spreading it nearby.
    near, far = torch.zeros(1, 21), torch.zeros(1, 21)
    near[0, [9, 11]] = 0.5
    far[0, [5, 15]] = 0.5
    assert ranked_probability_score(far, y) > ranked_probability_score(near, y) > 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.01, 1.0), min_size=21, max_size=21), st.integers(0, 20), st.integers(1, 5))
def test_rps_moving_mass_toward_the_truth_never_hurts(weights, y, shift):
    p = torch.tensor([weights]) / sum(weights)
    target = torch.tensor([y])
    base = ranked_probability_score(p, target)
    # Move the mass of the class farthest from y one step toward y.
    k = 0 if abs(0 - y) >= abs(20 - y) else 20
    if k == y:
        return
    moved = p.clone()
    step = 1 if k < y else -1
    moved[0, k + step] += moved[0, k]
    moved[0, k] = 0
    assert ranked_probability_score(moved, target) <= base + 1e-6


def test_coarse_mapping_is_k_div_3():
    for k in range(21):
        coarse = coarse_probabilities(onehot(k), 3)
        assert coarse.shape == (1, 7)
        assert coarse.argmax().item() == k // 3 and coarse.sum().item() == 1
    p = torch.rand(5, 21).softmax(-1)
    assert torch.allclose(coarse_probabilities(p, 3).sum(-1), torch.ones(5))


def test_head_class_weights():
    w = head_class_weights(21, 4)
    sizes = [6, 5, 5, 5]  # numpy.array_split(21 classes, 4)
    start = 0
    for h, size in enumerate(sizes):
        own = torch.zeros(21, dtype=torch.bool)
        own[start:start + size] = True
        assert (w[h, own] == 4).all() and (w[h, ~own] == 0.25).all()
        start += size


def test_metabalance_changes_magnitude_not_sign():
    theta = torch.randn(10, requires_grad=True)
    rps = (theta ** 2).sum() * 7.0
    ce = theta.abs().sum() * 0.1
    (g_plain,) = torch.autograd.grad(rps, theta, retain_graph=True)
    balanced = metabalance(rps, ce)
    (g_balanced,) = torch.autograd.grad(balanced, theta)
    assert balanced.item() == pytest.approx(ce.item(), rel=1e-5)  # rescaled to the CE magnitude
    ratio = g_balanced / g_plain
    assert torch.allclose(ratio, ratio[0].expand_as(ratio))  # same direction...
    assert ratio[0] > 0  # ...and same sign
    assert ratio[0].item() == pytest.approx(ce.item() / rps.item(), rel=1e-5)


def _inputs():
    torch.manual_seed(1)
    return torch.randn(6, 4, 21) * 2, torch.randint(0, 21, (6,))


@pytest.mark.parametrize("switch, term", [
    ("cross_entropy", "ce"), ("fine_rps", "fine_rps"), ("coarse_rps", "coarse_rps"), ("entropy", "entropy"),
])
def test_each_ablation_switch_removes_exactly_its_term(switch, term):
    logits, y = _inputs()
    full = ClinReadNetLoss(LossConfig(), 21, 4)(logits, y)
    ablated = ClinReadNetLoss(LossConfig(**{switch: False}), 21, 4)(logits, y)
    assert term in full.parts and term not in ablated.parts
    assert (full.total - ablated.total).item() == pytest.approx(full.parts[term].item() / 2, abs=1e-6)
    for other in set(full.parts) - {term, "hrps"}:
        assert ablated.parts[other].item() == pytest.approx(full.parts[other].item(), rel=1e-6)


def test_total_is_mean_of_heads_and_hrps_with_paper_lambdas():
    logits, y = _inputs()
    out = ClinReadNetLoss(LossConfig(), 21, 4)(logits, y)
    p = logits.softmax(-1).mean(1)
    ce = F.nll_loss(p.log(), y)
    h = -(p * p.log()).sum(-1).mean()
    # Both RPS terms are rescaled to the CE's magnitude: L_main = 3 CE numerically.
    assert out.parts["hrps"].item() == pytest.approx((3 * ce - 5e-5 * h).item(), rel=1e-5)
    heads = torch.stack([F.cross_entropy(logits[:, i], y, weight=head_class_weights(21, 4)[i]) for i in range(4)]).mean()
    assert out.parts["heads"].item() == pytest.approx(heads.item(), rel=1e-6)
    assert out.total.item() == pytest.approx((heads + out.parts["hrps"]).item() / 2, rel=1e-6)


def test_entropy_term_rewards_spread():
    y = torch.tensor([10])
    loss = ClinReadNetLoss(LossConfig(cross_entropy=False, fine_rps=False, coarse_rps=False), 21, 1)
    sharp = torch.zeros(1, 21)
    sharp[0, 10] = 1
    spread = sharp.softmax(-1)
    assert loss.hrps_contributions(spread, y)["entropy"] < loss.hrps_contributions(sharp.clamp_min(1e-9), y)["entropy"]


def test_ce_only_configs_train_heads_alone():
    logits, y = _inputs()
    loss = create_loss(get_config("swin_t"))
    out = loss(logits, y)
    assert set(out.parts) == {"heads"} and torch.equal(out.total, loss.heads_loss(logits, y))
    with pytest.raises(ConfigError):
        LossConfig(cross_entropy=False, fine_rps=False, coarse_rps=False, entropy=False)


@pytest.mark.parametrize("name", ["clinreadnet", "swin_t"])
def test_loss_trains_the_model(name, batch):
    cfg = tiny_config(name)
    model, loss = create_model(cfg).train(), create_loss(cfg)
    y = torch.tensor([0, 7, 14, 20])
    optim = torch.optim.NAdam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(15):
        out = loss(model(batch), y)
        optim.zero_grad()
        out.total.backward()
        optim.step()
        first = first if first is not None else out.total.item()
    assert torch.isfinite(out.total) and out.total.item() < first


# --- pairwise ranking term (this code's addition, off in every paper config) ----------------
def test_ranking_is_zero_when_scores_keep_half_the_label_gaps():
    target = torch.tensor([20, 15, 10, 0])  # 4, 3, 2, 0 points
    assert pairwise_ranking(torch.tensor([3.0, 2.5, 2.0, 1.0]), target).item() == 0
    # Ties in the labels are no pairs at all.
    assert pairwise_ranking(torch.tensor([1.0, 3.0]), torch.tensor([10, 10])).item() == 0


def test_ranking_charges_the_shortfall_and_pushes_the_pair_apart():
    target = torch.tensor([20, 10])  # 2 points apart: the better one must lead by 1
    scores = torch.tensor([2.2, 2.0], requires_grad=True)
    loss = pairwise_ranking(scores, target)
    assert loss.item() == pytest.approx(0.8)
    loss.backward()
    assert scores.grad[0] < 0 < scores.grad[1]  # descent raises the better image, lowers the worse


def test_rank_weight_adds_the_term_and_zero_leaves_hrps_alone():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 4, 21), torch.tensor([0, 4, 8, 12, 16, 20])
    plain = ClinReadNetLoss(LossConfig(), 21, 4)(logits, target)
    ranked = ClinReadNetLoss(LossConfig(rank_weight=2.0), 21, 4)(logits, target)
    assert "rank" not in plain.parts and ranked.parts["rank"] > 0
    assert ranked.total.item() == pytest.approx(plain.total.item() + 2.0 * ranked.parts["rank"].item(), rel=1e-6)
    with pytest.raises(ConfigError, match="rank_weight"):
        LossConfig(rank_weight=-1)
