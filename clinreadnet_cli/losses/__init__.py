"""Training objectives."""

from __future__ import annotations

from ..config import ClinReadNetConfig
from .hrps import ClinReadNetLoss, LossTerms

__all__ = ["ClinReadNetLoss", "LossTerms", "create_loss"]


def create_loss(config: ClinReadNetConfig) -> ClinReadNetLoss:
    """The loss a configuration trains with (its ``loss`` section, sized to its heads and classes)."""
    return ClinReadNetLoss(config.loss, config.num_classes, config.classifier_heads)
