"""Where a slice lost its score: class activation maps of the quality score (the grad-cam package).

The target of every map is the slice's *badness*, 4 - score (the score is the expected class of
the head-averaged distribution / 5), so a map shows where the features that pulled the score down
lie. Maps are computed on one stage's feature map, hooked through ``ClinReadNet.feature_modules``
(the outputs ``forward_intermediates`` pools), and come back at the input's size in [0, 1].
Which stage and which method: measured by ``research/cam_choice.py``, see docs/explain.md.
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus

from .archs import ClinReadNet
from .archs.heads import average_probabilities, expected_score
from .config import NUM_CLASSES

CAM_METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}
DEFAULT_METHOD = "gradcam"
DEFAULT_STAGE = 2  # 0-based: the output of stage 3, a 14 x 14 grid at 224²
MAX_SCORE = (NUM_CLASSES - 1) / 5


class Badness:
    """grad-cam target: 4 - score of one slice, from its per-head logits (heads, classes)."""

    def __call__(self, head_logits: torch.Tensor) -> torch.Tensor:
        return MAX_SCORE - expected_score(average_probabilities(head_logits.unsqueeze(0).float()))[0]


def _nchw(feature_map: torch.Tensor) -> torch.Tensor:
    return feature_map.permute(0, 3, 1, 2)  # Swin stages give (B, h, w, C)


def quality_maps(model: ClinReadNet, images: torch.Tensor, stage: int = DEFAULT_STAGE,
                 method: str = DEFAULT_METHOD) -> np.ndarray:
    """(B, C, S, S) network inputs -> (B, S, S) maps in [0, 1] of what lowered each slice's score."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    model = model.eval()
    layer = model.feature_modules()[stage]
    # Gradients are needed from the score back to the target layer's output only: every parameter
    # is frozen and that output alone is made to require grad (registered before grad-cam's own hook),
    # so autograd records nothing before it and computes no weight gradients.
    trainable = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    handle = layer.register_forward_hook(lambda module, inputs, output: output.requires_grad_(True))
    try:
        with CAM_METHODS[method](model=model, target_layers=[layer], reshape_transform=_nchw) as cam:
            # The first sampling grid alone: one map per slice (the other grids' are it, one pixel over).
            first_grid = images[:, :model.config.in_chans].float()
            maps = cam(input_tensor=first_grid, targets=[Badness() for _ in range(len(images))])
    finally:
        handle.remove()
        for parameter, flag in zip(model.parameters(), trainable):
            parameter.requires_grad_(flag)
    return np.asarray(maps, dtype=np.float32)
