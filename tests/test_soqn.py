from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clinreadnet_cli.archs.layers import Mish, mish_from_sigmoid
from clinreadnet_cli.archs.soqn import SOBEL_DIRECTIONS, SOBEL_KERNELS, SOQN, sobel_responses
from clinreadnet_cli.config import SOQNConfig


def test_kernels_are_the_four_directional_sobel_operators():
    smooth, diff = torch.tensor([1.0, 2.0, 1.0]), torch.tensor([-1.0, 0.0, 1.0])
    gx, gy = torch.outer(smooth, diff), torch.outer(diff, smooth)  # separable Sobel: x and y
    assert SOBEL_DIRECTIONS == (0, 90, 45, 135)
    assert torch.equal(SOBEL_KERNELS[0], gx) and torch.equal(SOBEL_KERNELS[1], gy)
    # The diagonal operators are the x/y operators rotated by 45 degrees (ring of 8 neighbours shifted by one).
    ring = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0)]

    def rotate45(k, steps):
        out = k.clone()
        for i, (r, c) in enumerate(ring):
            out[ring[(i + steps) % 8]] = k[r, c]
        return out

    assert torch.equal(SOBEL_KERNELS[2], rotate45(gx, 1))
    assert torch.equal(SOBEL_KERNELS[3], rotate45(gy, 1))
    for k in SOBEL_KERNELS:
        assert k.sum() == 0  # no response to flat regions


def _edge_image(direction: str, size: int = 16) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    step = {"vertical": x >= size // 2, "horizontal": y >= size // 2,
            "diag": (x + y) >= size, "antidiag": (y - x) >= 0}[direction]
    return step.float()[None, None]


@pytest.mark.parametrize("edge, strongest, silent", [
    ("vertical", 0, 1),  # intensity changes along x: the 0 deg operator fires, the 90 deg one is silent
    ("horizontal", 1, 0),
    ("diag", 2, 3),
    ("antidiag", 3, 2),
])
def test_each_operator_finds_its_edge(edge, strongest, silent):
    image = _edge_image(edge)
    responses = sobel_responses(image, SOBEL_KERNELS)[0, :, 0, 2:-2, 2:-2].abs()  # skip the zero-padded border
    energy = responses.sum(dim=(1, 2))
    assert energy.argmax() == strongest
    assert energy[silent] == 0
    assert energy[strongest] > 0


def test_responses_are_per_channel_and_direction_major():
    image = torch.stack([_edge_image("vertical")[0, 0], _edge_image("horizontal")[0, 0]])[None]  # 2 channels
    out = sobel_responses(image, SOBEL_KERNELS)
    assert out.shape == (1, 4, 2, 16, 16)
    inner = out[0, :, :, 2:-2, 2:-2].abs().sum(dim=(2, 3))  # (direction, channel)
    assert inner[0, 0] > 0 and inner[1, 0] == 0  # channel 0: vertical edge
    assert inner[1, 1] > 0 and inner[0, 1] == 0  # channel 1: horizontal edge


def test_sobel_kernels_are_fixed():
    soqn = SOQN(16, SOQNConfig())
    assert "sobel.kernels" not in dict(soqn.named_parameters())
    assert "sobel.kernels" not in soqn.state_dict()  # rebuilt from the constant, never loaded


@pytest.mark.parametrize("cfg", [SOQNConfig(), SOQNConfig(sobel_branch=False), SOQNConfig(ordinal_branch=False),
                                 SOQNConfig(weighted_residual=False)])
def test_soqn_keeps_channels_last_shape(cfg):
    soqn = SOQN(16, cfg).eval()
    x = torch.randn(2, 8, 8, 16)
    assert soqn(x).shape == x.shape


def test_weighted_residual_is_eq3():
    """Y = gamma * f_enh(F) + beta * X before the final norm: with gamma = 0 the output is norm(beta X)."""
    soqn = SOQN(16, SOQNConfig()).eval()
    with torch.no_grad():
        soqn.gamma.zero_()
    x = torch.randn(2, 8, 8, 16)
    assert torch.allclose(soqn(x), soqn.post_norm(0.8 * x), atol=1e-5)


def test_inference_mish_equals_atens_mish():
    x = torch.cat([torch.linspace(-60, 60, 20001), torch.tensor([-1e4, 1e4, 0.0])])
    assert torch.allclose(mish_from_sigmoid(x), F.mish(x), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(Mish()(x), F.mish(x), rtol=1e-5, atol=1e-6)


def test_mish_keeps_atens_gradient_in_training():
    x = torch.linspace(-5, 5, 101, requires_grad=True)
    Mish()(x).sum().backward()
    expected = torch.autograd.grad(F.mish(x).sum(), x)[0]
    assert torch.equal(x.grad, expected)
