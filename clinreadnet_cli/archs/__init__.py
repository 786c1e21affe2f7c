"""Architectures: ClinReadNet and its ablations, built from named configurations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ClinReadNetConfig, resolve_config
from .clinreadnet import ClinReadNet, Prediction

__all__ = ["ClinReadNet", "Prediction", "create_model"]


def create_model(
    config: str | ClinReadNetConfig = "clinreadnet",
    backbone_checkpoint: str | Path | None = None,
    **overrides: Any,
) -> ClinReadNet:
    """Build a model from a registered name (see ``clinreadnet_cli.config.list_configs``) or a config.

    ``overrides`` replace top-level config fields, e.g. ``create_model("clinreadnet", img_size=512)``.
    ``backbone_checkpoint`` is an optional local timm/official Swin-T ``.safetensors`` file.
    """
    return ClinReadNet(resolve_config(config, **overrides), backbone_checkpoint=backbone_checkpoint)
