"""Named configurations of ClinReadNet and its ablations (paper Tables 3-8).

A configuration describes one trainable recipe: the architecture (backbone size,
SOQN and (S)W-MTMSA variants, heads), the HRPS loss terms it is trained with and
the CT intensity window its inputs are mapped through. It is stored inside every
weights file, so a file alone says how to rebuild and feed its model.

This module imports no torch: the CLI and the readers can use it cheaply.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

MAX_CONFIG_CHARS = 100_000  # a stored config is about 1,000
NUM_CLASSES = 21  # mean radiologist score x 5, rounded: 0..20 (paper §4.1)
TEMPERATURES = {"low": 0.5, "medium": 1.0, "high": 2.0}  # initial T_i (§4.3)
PROGRESSIVE_WEIGHTS = {"low": 0.3, "medium": 0.4, "high": 0.3}  # initial w_i^proj (§4.3)


class ConfigError(ValueError):
    """A configuration name, override or stored config that cannot be used."""


@dataclass(frozen=True)
class SOQNConfig:
    """Sobel ordinal quality network (§3.2). Ablations: Tab. 4 and Tab. 5."""

    sobel_branch: bool = True
    ordinal_branch: bool = True
    weighted_residual: bool = True  # False: plain Y = f_enh(F) + X (Tab. 5, 1#)
    beta: float = 0.8  # initial weight of the identity path (Eq. 3)
    gamma: float = 0.2  # initial weight of the enhanced path (Eq. 3)
    hidden_ratio: float = 0.5  # width of the internal 1x1/3x3 bottlenecks, as a fraction of C
    dropout: float = 0.1  # dropout of the ordinal branch's fully connected layers

    def __post_init__(self) -> None:
        if not (self.sobel_branch or self.ordinal_branch):
            raise ConfigError("SOQN needs at least one of its two branches")
        if not 0 < self.hidden_ratio <= 4:
            raise ConfigError(f"SOQN hidden_ratio must be in (0, 4], got {self.hidden_ratio}")


@dataclass(frozen=True)
class MTMSAConfig:
    """Multi-temperature window attention of stage 4 (§3.3). Ablation: Tab. 6."""

    temperatures: tuple[str, ...] = ("low", "medium", "high")
    modulator_ratio: float = 0.25  # hidden width of the quality-aware modulator (Eq. 13), fraction of C
    # Learn log T, so a temperature stays positive (weights v1 learnt T itself).
    log_temperatures: bool = True
    # A learnt sharpness s in alpha = softmax(s * q * S(w_proj)) (Eq. 14), initialised to the number of
    # temperatures: without it the logits q * S(w_proj) lie in (0, 0.4) and alpha can hardly leave
    # uniform (weights v1, trained without it, ended at 0.323-0.344).
    mixing_sharpness: bool = True

    def __post_init__(self) -> None:
        unknown = [t for t in self.temperatures if t not in TEMPERATURES]
        if unknown or not self.temperatures or len(set(self.temperatures)) != len(self.temperatures):
            raise ConfigError(
                f"MTMSA temperatures must be a non-empty subset of {list(TEMPERATURES)}, "
                f"got {list(self.temperatures)}"
            )
        # Keep the paper's low -> medium -> high order whatever order the subset was given in.
        ordered = tuple(t for t in TEMPERATURES if t in self.temperatures)
        object.__setattr__(self, "temperatures", ordered)


BAM_KINDS = ("channel", "spatial")
POOLINGS = {
    "stages": "each stage's map averaged and concatenated (ClinReadNet's multi-stage pooling)",
    "last": "the last stage's map averaged (Swin-T as published)",
}
HEAD_PARTITIONS = ("contiguous", "shuffled")


@dataclass(frozen=True)
class BAMConfig:
    """One branch of BAM (Park et al. 2018) on stage 4's output, in place of (S)W-MTMSA (Tab. 7)."""

    kind: str = "channel"  # channel | spatial
    reduction: int = 16  # BAM's r: the branch's bottleneck is C / r wide
    dilation: int = 4  # BAM's d: the spatial branch's two 3 x 3 convolutions

    def __post_init__(self) -> None:
        if self.kind not in BAM_KINDS:
            raise ConfigError(f"BAM kind must be one of {', '.join(BAM_KINDS)}, got {self.kind!r}")
        if not (1 <= self.reduction <= 64 and 1 <= self.dilation <= 8):
            raise ConfigError(f"BAM reduction must be 1..64 and dilation 1..8, got {self.reduction}, {self.dilation}")


@dataclass(frozen=True)
class LossConfig:
    """Training objective (§3.1, §3.4). ``hrps=False`` trains the heads' CE alone (Tab. 3 rows 1-3)."""

    hrps: bool = True
    cross_entropy: bool = True  # L_CE of Eq. 17 inside L_main (Tab. 8, 2#)
    fine_rps: bool = True  # Eq. 20/26 (Tab. 8, 1#)
    coarse_rps: bool = True  # Eq. 25/27 (Tab. 8, 4#)
    entropy: bool = True  # Eq. 29-30 (Tab. 8, 3#)
    lambda_ce: float = 1.0
    lambda_fine: float = 1.0
    lambda_coarse: float = 1.0
    lambda_entropy: float = 5e-5
    coarse_group: int = 3  # fine classes per coarse class: 21 -> 7
    # Which classes each head weights up in its CE (§3.1): contiguous shares (the reading in
    # docs/model.md) or a seeded shuffle of the classes split into shares, as the multi-head
    # RPS loss this follows does.
    head_partition: str = "contiguous"
    partition_seed: int = 0
    # Not the paper's: weight of the pairwise ranking term (losses/ranking.py) added to the total.
    rank_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.head_partition not in HEAD_PARTITIONS:
            raise ConfigError(f"head_partition must be one of {', '.join(HEAD_PARTITIONS)}, got {self.head_partition!r}")
        if self.rank_weight < 0:
            raise ConfigError(f"rank_weight must be >= 0, got {self.rank_weight}")
        if self.hrps and not (self.cross_entropy or self.fine_rps or self.coarse_rps or self.entropy):
            raise ConfigError("HRPS needs at least one of its terms; set hrps=False to train the heads' CE alone")


INPUT_PATHS = {
    "resize": "pad to square, antialiased resize to img_size (weights v1; filters out most FBP noise)",
    "decimate": "pad to square, area-resample to 512 if larger, keep every s-th pixel (s = round(side / "
                "256): 2 for 512), centre crop or pad to img_size",
    "crop": "pad to square, native-resolution centre crop (or pad) to img_size",
    "decimate-detail": "as decimate, plus a second channel holding the native-resolution detail energy "
                       "that sampling drops (mean |pixel - diagonal neighbour| per kept cell); in_chans 2",
    "decimate-stack": "as decimate, the four sampling grids of the 2x sampling stacked as four input channels "
                      "of one forward: every native pixel of a 512² slice's central 448² at one forward's price; "
                      "in_chans 4",
}
DETAIL_PATHS = {"decimate-detail"}  # input paths that feed a second (detail) channel
STACK_PATHS = {"decimate-stack"}  # input paths that feed every sampling grid to one forward, as channels
DECIMATE_PATHS = {"decimate", *DETAIL_PATHS, *STACK_PATHS}  # input paths that sample grids of native pixels
SAMPLING_GRIDS = (1, 4)  # one grid, or all four offset by one native pixel (see preprocess.py)


def slices_per_batch(forwards: int, sampling_grids: int) -> int:
    """Slices in a model call of ``forwards`` forward passes: each slice costs one per sampling grid,
    so the batch size bounds memory whatever the weights' number of grids."""
    return max(1, forwards // sampling_grids)


def input_channels(input_path: str) -> int:
    """How many channels an input path feeds the patch embedding."""
    return 2 if input_path in DETAIL_PATHS else 4 if input_path in STACK_PATHS else 1


def input_overrides(input_path: str) -> dict[str, Any]:
    """Config fields for an input path: the path and the number of channels it feeds."""
    return {"input_path": input_path, "in_chans": input_channels(input_path)}


# Stored configs written before a field existed get the behaviour they were trained with.
LEGACY_FIELDS = {"input_path": "resize"}
LEGACY_MTMSA_FIELDS = {"log_temperatures": False, "mixing_sharpness": False}


@dataclass(frozen=True)
class ClinReadNetConfig:
    name: str
    description: str = ""
    img_size: int = 224  # network input size
    input_path: str = "decimate"  # how a slice becomes the network input: one of INPUT_PATHS
    in_chans: int = 1  # grayscale patch embedding (see docs/model.md)
    # Decimate paths: how many sampling grids a slice is read through, their predictions averaged
    # (one of SAMPLING_GRIDS). Four read every native pixel of a 512² slice's central 448², not one in four.
    sampling_grids: int = 1
    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    num_classes: int = NUM_CLASSES
    classifier_heads: int = 4
    soqn: SOQNConfig | None = field(default_factory=SOQNConfig)
    soqn_stages: tuple[int, ...] = (0, 1)  # SOQN after stage 1 and stage 2 (0-based)
    mtmsa: MTMSAConfig | None = field(default_factory=MTMSAConfig)
    bam: BAMConfig | None = None  # Tab. 7: a BAM branch on stage 4 instead of (S)W-MTMSA
    pooling: str = "stages"  # one of POOLINGS
    loss: LossConfig = field(default_factory=LossConfig)
    window_width: float = 350.0  # HU intensity window (W350/L40, soft tissue)
    window_level: float = 40.0

    def __post_init__(self) -> None:
        _check_ranges(self)
        if len(self.depths) != len(self.num_heads):
            raise ConfigError("depths and num_heads must have one entry per stage")
        if any(s < 0 or s >= len(self.depths) - 1 for s in self.soqn_stages):
            raise ConfigError(f"soqn_stages must name stages before the last, got {self.soqn_stages}")
        if self.img_size % (self.patch_size * 2 ** (len(self.depths) - 1)):
            raise ConfigError(
                f"img_size {self.img_size} must be divisible by {self.patch_size * 2 ** (len(self.depths) - 1)}"
            )
        if self.num_classes % self.loss.coarse_group:
            raise ConfigError("num_classes must be a multiple of the coarse group size")
        if self.mtmsa is not None and self.bam is not None:
            raise ConfigError("stage 4 takes either (S)W-MTMSA or a BAM branch, not both")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.input_path not in INPUT_PATHS:
            raise ConfigError(f"input_path must be one of {', '.join(INPUT_PATHS)}, got {self.input_path!r}")
        if self.in_chans != input_channels(self.input_path):
            raise ConfigError(f"input_path {self.input_path!r} with in_chans {self.in_chans}: it feeds "
                              f"{input_channels(self.input_path)} (the detail paths two channels, the stacked "
                              "grids four, the others one)")
        if type(self.sampling_grids) is not int or self.sampling_grids not in SAMPLING_GRIDS:
            raise ConfigError(f"sampling_grids must be one of {SAMPLING_GRIDS}, got {self.sampling_grids!r}")
        if self.sampling_grids > 1 and self.input_path in STACK_PATHS:
            raise ConfigError(f"input_path {self.input_path!r} already reads every sampling grid in one forward: "
                              "sampling_grids must be 1")
        if self.sampling_grids > 1 and self.input_path not in DECIMATE_PATHS:
            raise ConfigError(f"sampling_grids {self.sampling_grids} needs a decimate input path, not "
                              f"{self.input_path!r}")

    # --- serialisation (stored as JSON inside weights files) ---
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ClinReadNetConfig":
        """A stored config; fields it predates take the values it was trained with (LEGACY_*)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a stored config must be a JSON object, got {type(data).__name__}")
        data = {**LEGACY_FIELDS, **data}
        if isinstance(data.get("mtmsa"), Mapping):
            data["mtmsa"] = {**LEGACY_MTMSA_FIELDS, **data["mtmsa"]}
        return _build(cls, data)

    @classmethod
    def from_json(cls, text: str) -> "ClinReadNetConfig":
        if not isinstance(text, str) or len(text) > MAX_CONFIG_CHARS:
            raise ConfigError(f"stored config must be JSON text of at most {MAX_CONFIG_CHARS:,} characters")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise ConfigError(f"stored config is not valid JSON: {reason}") from None
        return cls.from_dict(data)


_NESTED = {"soqn": SOQNConfig, "mtmsa": MTMSAConfig, "bam": BAMConfig, "loss": LossConfig}


def _build(cls: type, data: Mapping[str, Any]) -> Any:
    """A config from plain data (a stored header, overrides), every field's type checked first."""
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(map(str, unknown))}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _NESTED:
            if isinstance(value, Mapping):
                value = _build(_NESTED[key], value)
            elif not (value is None and "None" in fields[key]) and not isinstance(value, _NESTED[key]):
                raise ConfigError(f"{cls.__name__}.{key} must be a table of fields, got {type(value).__name__}")
        else:
            value = _typed(f"{cls.__name__}.{key}", fields[key], value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"invalid {cls.__name__}: {exc}") from None


def _typed(name: str, kind: str, value: Any) -> Any:
    """``value`` as the field type ``kind`` says (bool, int, float, str, tuple[...]), or ConfigError."""
    def scalar(item_kind: str, item: Any) -> Any:
        if item_kind == "bool" and isinstance(item, bool):
            return item
        if item_kind == "int" and isinstance(item, int) and not isinstance(item, bool):
            return item
        if item_kind == "float" and isinstance(item, (int, float)) and not isinstance(item, bool) \
                and math.isfinite(item):
            return float(item)
        if item_kind == "str" and isinstance(item, str):
            return item
        raise ConfigError(f"{name} must be {'a finite number' if item_kind == 'float' else item_kind}, got {item!r}"[:200])

    if kind.startswith("tuple["):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {type(value).__name__}")
        item_kind = kind[len("tuple["):].split(",")[0].strip()
        return tuple(scalar(item_kind, item) for item in value)
    return scalar(kind, value)


def _check_ranges(cfg: "ClinReadNetConfig") -> None:
    """Sizes within what a CT quality model can be (a hostile header must not allocate gigabytes)."""
    checks = [
        (32 <= cfg.img_size <= 1024, f"img_size {cfg.img_size} outside 32..1024"),
        (1 <= cfg.in_chans <= 4, f"in_chans {cfg.in_chans} outside 1..4"),
        (1 <= cfg.patch_size <= 16, f"patch_size {cfg.patch_size} outside 1..16"),
        (8 <= cfg.embed_dim <= 1024, f"embed_dim {cfg.embed_dim} outside 8..1024"),
        (2 <= len(cfg.depths) <= 6, f"{len(cfg.depths)} stages, not 2..6"),
        (all(1 <= d <= 32 for d in cfg.depths), f"depths {list(cfg.depths)} outside 1..32 blocks per stage"),
        (all(1 <= h <= 64 and cfg.embed_dim * 2**i % h == 0 for i, h in enumerate(cfg.num_heads)),
         f"num_heads {list(cfg.num_heads)} must be 1..64 and divide each stage's width"),
        (1 <= cfg.window_size <= 32, f"window_size {cfg.window_size} outside 1..32"),
        (0 <= cfg.drop_rate < 1 and 0 <= cfg.drop_path_rate < 1, "drop rates must lie in [0, 1)"),
        (2 <= cfg.num_classes <= 101, f"num_classes {cfg.num_classes} outside 2..101"),
        (1 <= cfg.classifier_heads <= 16, f"classifier_heads {cfg.classifier_heads} outside 1..16"),
        (math.isfinite(cfg.window_width) and 1 <= cfg.window_width <= 10000,
         f"window_width {cfg.window_width} outside 1..10000 HU"),
        (math.isfinite(cfg.window_level) and -2000 <= cfg.window_level <= 4000,
         f"window_level {cfg.window_level} outside -2000..4000 HU"),
        (1 <= cfg.loss.coarse_group <= cfg.num_classes, f"coarse_group {cfg.loss.coarse_group} outside 1..num_classes"),
    ]
    for ok, problem in checks:
        if not ok:
            raise ConfigError(problem)


# --- the registry -------------------------------------------------------------
_FULL = ClinReadNetConfig(name="clinreadnet", description="Full ClinReadNet: SOQN + (S)W-MTMSA + HRPS loss "
                                                            "(Tab. 3, row 4; Tab. 4-8, last row)")
_CE_ONLY = LossConfig(hrps=False)


def _variant(name: str, description: str, **changes: Any) -> ClinReadNetConfig:
    return dataclasses.replace(_FULL, name=name, description=description, **changes)


def _temperature_variant(kept: tuple[str, ...]) -> ClinReadNetConfig:
    dropped = [t for t in TEMPERATURES if t not in kept]
    return _variant(
        "clinreadnet-t-" + "-".join(kept),
        f"(S)W-MTMSA without {' and '.join(dropped)} temperature (Tab. 6)",
        mtmsa=MTMSAConfig(temperatures=kept),
    )


_REGISTRY: dict[str, ClinReadNetConfig] = {
    c.name: c
    for c in [
        # Tab. 3: cumulative framework ablation. Row 1 is Swin-T as published (one head on the
        # last stage, CE); swin_t keeps ClinReadNet's four heads and multi-stage pooling, which
        # rows 2-4 build on; rows 1-3 train with cross-entropy only, row 4 adds HRPS.
        _variant("swin_t-plain", "Swin-T as published: one head on stage-4 pooling, CE (Tab. 3, row 1)",
                 soqn=None, mtmsa=None, classifier_heads=1, pooling="last", loss=_CE_ONLY),
        _variant("swin_t", "Swin-T with ClinReadNet's four heads and multi-stage pooling, CE (Tab. 3, row 1 as "
                           "this code's baseline)", soqn=None, mtmsa=None, loss=_CE_ONLY),
        _variant("swin_t+soqn", "Swin-T + SOQN, CE (Tab. 3, row 2)", mtmsa=None, loss=_CE_ONLY),
        _variant("swin_t+soqn+mtmsa", "Swin-T + SOQN + (S)W-MTMSA, CE (Tab. 3, row 3)", loss=_CE_ONLY),
        _FULL,
        # Tab. 7: a BAM branch on stage 4 in place of (S)W-MTMSA, everything else ClinReadNet's.
        _variant("bam-channel", "BAM channel attention on stage 4 instead of (S)W-MTMSA (Tab. 7, row 2)",
                 mtmsa=None, bam=BAMConfig(kind="channel")),
        _variant("bam-spatial", "BAM spatial attention on stage 4 instead of (S)W-MTMSA (Tab. 7, row 1)",
                 mtmsa=None, bam=BAMConfig(kind="spatial")),
        # Tab. 4-5: SOQN.
        _variant("clinreadnet-no-sobel", "SOQN without the Sobel branch (Tab. 4, 1#)",
                 soqn=SOQNConfig(sobel_branch=False)),
        _variant("clinreadnet-no-ordinal", "SOQN without the ordinal quality branch (Tab. 4, 2#)",
                 soqn=SOQNConfig(ordinal_branch=False)),
        _variant("clinreadnet-plain-residual", "SOQN with a plain residual connection (Tab. 5, 1#)",
                 soqn=SOQNConfig(weighted_residual=False)),
        # Tab. 6: every proper subset of the three temperatures.
        *(_temperature_variant(kept) for kept in [
            ("high",), ("medium",), ("low",),
            ("low", "medium"), ("low", "high"), ("medium", "high"),
        ]),
        # Tab. 8: HRPS terms.
        _variant("clinreadnet-no-fine-rps", "HRPS without fine RPS (Tab. 8, 1#)",
                 loss=LossConfig(fine_rps=False)),
        _variant("clinreadnet-no-ce", "HRPS without cross-entropy (Tab. 8, 2#)",
                 loss=LossConfig(cross_entropy=False)),
        _variant("clinreadnet-no-entropy", "HRPS without the entropy regulariser (Tab. 8, 3#)",
                 loss=LossConfig(entropy=False)),
        _variant("clinreadnet-no-coarse-rps", "HRPS without coarse RPS (Tab. 8, 4#)",
                 loss=LossConfig(coarse_rps=False)),
    ]
}


def list_configs() -> list[str]:
    return list(_REGISTRY)


def get_config(name: str, **overrides: Any) -> ClinReadNetConfig:
    """The named configuration, with top-level fields replaced by ``overrides``.

    Example: ``get_config("clinreadnet", img_size=512)``.
    """
    try:
        base = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model config {name!r}; choose one of: {', '.join(_REGISTRY)}") from None
    return resolve_config(base, **overrides)


def resolve_config(config: str | ClinReadNetConfig, **overrides: Any) -> ClinReadNetConfig:
    """A config given by name or as an object, with top-level fields replaced by ``overrides``.

    Overrides may come from JSON/TOML/YAML: lists become tuples and tables (``soqn``, ``mtmsa``,
    ``loss``) become their sub-configs, exactly as when a stored config is read back.
    """
    if isinstance(config, str):
        return get_config(config, **overrides)
    if not overrides:
        return config
    merged = config.to_dict()
    for key, value in overrides.items():
        merged[key] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return _build(ClinReadNetConfig, merged)
