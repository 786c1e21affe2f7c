"""ClinReadNet: timm's Swin-T with SOQN after stages 1-2, (S)W-MTMSA in stage 4, four heads (§3.1, Fig. 1)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.models._manipulate import adapt_input_conv
from timm.models.swin_transformer import checkpoint_filter_fn
from torch import nn

from ..config import ClinReadNetConfig, ConfigError
from .bam import BAM
from .heads import MultiHeadClassifier, argmax_class, average_probabilities, expected_score, head_probabilities
from .mtmsa import use_mtmsa
from .soqn import SOQN

TIMM_SWIN = "swin_tiny_patch4_window7_224"


@dataclass
class Prediction:
    """What the model says about a batch of slices."""

    probs: torch.Tensor  # (B, K) head-averaged class probabilities
    head_probs: torch.Tensor  # (B, H, K)

    @classmethod
    def from_logits(cls, head_logits: torch.Tensor) -> "Prediction":
        """From per-head logits (B, H, K), computed in fp32 whatever precision produced them."""
        head_logits = head_logits.float()
        return cls(probs=average_probabilities(head_logits), head_probs=head_probabilities(head_logits))

    @property
    def score(self) -> torch.Tensor:  # (B,) 0-4
        return expected_score(self.probs)

    @property
    def label(self) -> torch.Tensor:  # (B,) arg-max class 0..K-1
        return argmax_class(self.probs)

    @property
    def head_scores(self) -> torch.Tensor:  # (B, H) each head's own 0-4 score
        return expected_score(self.head_probs)

    @property
    def head_sd(self) -> torch.Tensor:  # (B,) how much the four heads disagree, in score points
        return self.head_scores.std(dim=1, unbiased=False)

    @property
    def entropy(self) -> torch.Tensor:  # (B,) of the averaged distribution, / log(classes): 0 sure .. 1 flat
        p = self.probs.clamp_min(1e-12)
        return -(p * p.log()).sum(dim=1) / math.log(p.shape[1])


@dataclass
class BackboneLoad:
    """What loading a backbone checkpoint did, for the caller to report."""

    path: Path
    loaded: int  # tensors copied into the backbone
    missing: list[str]  # backbone tensors the checkpoint lacks (they keep their initialisation)
    unexpected: list[str]  # checkpoint tensors the backbone has no place for (ignored)
    adapted: list[str]  # what was converted on the way (input channels, patch size, window tables)

    def describe(self) -> str:
        def names(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")

        parts = [f"{self.path}: {self.loaded} backbone tensors loaded"]
        parts += [f"adapted: {'; '.join(self.adapted)}"] if self.adapted else []
        parts += [f"{len(self.missing)} missing (left as initialised): {names(self.missing)}"] if self.missing else []
        parts += [f"{len(self.unexpected)} unexpected (ignored): {names(self.unexpected)}"] if self.unexpected else []
        return "; ".join(parts)


def create_backbone(cfg: ClinReadNetConfig, checkpoint: str | Path | None = None) -> tuple[nn.Module, BackboneLoad | None]:
    """Headless timm Swin built from ``cfg``; optionally initialised from a local Swin checkpoint.

    Nothing is downloaded. timm's Swin filter converts an official or timm checkpoint (window
    tables resized, patch embedding resampled), timm's ``adapt_input_conv`` sums a 3-channel
    patch embedding to the 1-channel one, the ImageNet classifier is dropped. Tensors whose shapes
    do not fit are refused (ConfigError, one line); missing and unexpected ones are reported.
    """
    backbone = timm.create_model(
        TIMM_SWIN, pretrained=False, img_size=cfg.img_size, in_chans=cfg.in_chans, patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim, depths=cfg.depths, num_heads=cfg.num_heads, window_size=cfg.window_size,
        num_classes=0, drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate,
    )
    if checkpoint is None:
        return backbone, None
    path = Path(checkpoint)
    if path.suffix != ".safetensors":
        raise ConfigError(f"{path}: backbone checkpoints are read from .safetensors files only (no pickles)")
    if not path.is_file():
        raise ConfigError(f"{path}: backbone checkpoint not found")
    try:
        raw = load_file(str(path))
    except Exception as exc:  # safetensors raises its own types for damaged files
        raise ConfigError(f"{path}: not a readable safetensors file ({exc})") from None
    expected = backbone.state_dict()
    adapted = []
    try:
        state = checkpoint_filter_fn(raw, backbone)
        conv = "patch_embed.proj.weight"
        if conv in state and state[conv].shape[1] != cfg.in_chans:
            adapted.append(f"patch embedding {state[conv].shape[1]} -> {cfg.in_chans} input channel(s)")
            state[conv] = adapt_input_conv(cfg.in_chans, state[conv])
    except (RuntimeError, KeyError, ValueError, AttributeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: not a Swin checkpoint that fits config {cfg.name!r} ({reason})") from None
    state = {k: v for k, v in state.items() if not k.startswith("head.")}  # the ImageNet classifier
    resized = [k for k in state if "relative_position_bias_table" in k and k in raw and raw[k].shape != state[k].shape]
    if resized:
        adapted.append(f"{len(resized)} relative position tables resized to window {cfg.window_size}")
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in state
             if k in expected and state[k].shape != expected[k].shape]
    if wrong:
        more = f" and {len(wrong) - 1} more" if len(wrong) > 1 else ""
        raise ConfigError(f"{path}: not a Swin checkpoint that fits config {cfg.name!r} (shape {wrong[0]}{more})")
    result = backbone.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if "relative_position_index" not in k and "attn_mask" not in k]
    loaded = len(state) - len(result.unexpected_keys)
    if loaded == 0:
        raise ConfigError(f"{path}: no tensor of it belongs to a Swin backbone")
    return backbone, BackboneLoad(path, loaded, missing, list(result.unexpected_keys), adapted)


class ClinReadNet(nn.Module):
    def __init__(self, cfg: ClinReadNetConfig, backbone_checkpoint: str | Path | None = None):
        super().__init__()
        self.config = cfg
        self.backbone, self.backbone_load = create_backbone(cfg, backbone_checkpoint)
        widths = [info["num_chs"] for info in self.backbone.feature_info]
        self.soqn = nn.ModuleDict(
            {str(stage): SOQN(widths[stage], cfg.soqn) for stage in cfg.soqn_stages} if cfg.soqn else {}
        )
        if cfg.mtmsa is not None:
            use_mtmsa(self.backbone.layers[-1], cfg.mtmsa)
        self.bam = BAM(widths[-1], cfg.bam) if cfg.bam is not None else None  # Tab. 7
        pooled = sum(widths) if cfg.pooling == "stages" else widths[-1]
        self.head = MultiHeadClassifier(pooled, cfg.classifier_heads, cfg.num_classes, cfg.drop_rate)

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, C, H, W) in [0, 1] -> (per-head logits, every stage's feature map (B, h, w, C) as pooled)."""
        x = self.backbone.patch_embed((x - 0.5) / 0.5)  # windowed [0, 1] slice -> zero-centred [-1, 1]
        maps = []
        last = len(self.backbone.layers) - 1
        for i, stage in enumerate(self.backbone.layers):
            x = stage(x)
            if str(i) in self.soqn:
                x = self.soqn[str(i)](x)  # in line: the next stage receives SOQN's output
            if i == last and self.bam is not None:
                x = self.bam(x)
            maps.append(self.backbone.norm(x) if i == last else x)  # timm's final norm belongs to stage 4
        pooled_maps = maps if self.config.pooling == "stages" else maps[-1:]
        pooled = torch.cat([m.mean(dim=(1, 2)) for m in pooled_maps], dim=1)  # (B, 96+192+384+768) or (B, 768)
        return self.head(pooled), maps

    def feature_modules(self) -> list[nn.Module]:
        """The module whose output is each stage's feature map in ``forward_intermediates`` (for hooks: CAMs)."""
        last = len(self.backbone.layers) - 1
        return [self.backbone.norm if i == last else self.soqn[str(i)] if str(i) in self.soqn else stage
                for i, stage in enumerate(self.backbone.layers)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> per-head logits (B, heads, classes), in training and in eval.

        C is ``in_chans`` (one sampling grid: training draws one at random, CAMs read the first) or
        ``in_chans x sampling_grids`` (every grid, stacked grid-major): each grid is scored and the
        logits returned are the log of the grids' mean class probabilities, per head.
        """
        channels, grids = self.config.in_chans, x.shape[1] // self.config.in_chans
        if x.shape[1] not in (channels, channels * self.config.sampling_grids):
            raise ValueError(f"expected {channels} or {channels * self.config.sampling_grids} input channels "
                             f"(one or every sampling grid), got {x.shape[1]}")
        if grids == 1:
            return self.forward_intermediates(x)[0]
        batch = x.shape[0]
        logits = self.forward_intermediates(x.reshape(batch * grids, channels, *x.shape[2:]))[0]
        log_probs = torch.log_softmax(logits.float(), dim=-1).unflatten(0, (batch, grids))
        return torch.logsumexp(log_probs, dim=1) - math.log(grids)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> Prediction:
        """Eval-mode prediction: head-averaged probabilities plus each head's own."""
        if self.training:
            raise RuntimeError("predict() needs eval mode: call model.eval() first")
        return Prediction.from_logits(self(x))
