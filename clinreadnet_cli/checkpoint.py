"""Self-describing weights files: safetensors tensors plus the model config in the header metadata.

Only safetensors is read: no pickle, so a weights file cannot run code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from .version import __version__
from .atomic import atomic_path
from .config import STACK_PATHS, ClinReadNetConfig, ConfigError

if TYPE_CHECKING:  # torch and the model are imported where tensors are handled; names and headers need neither
    import torch

    from .archs import ClinReadNet

FORMAT = "clinreadnet-weights/1"
_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# The shipped weights by name, architecture.training (``--weights clinreadnet.sim-v4``, or ``sim-v4`` for
# short): the default, the one weights file in the tree.
NAMED_WEIGHTS = {"clinreadnet.sim-v4": _WEIGHTS_DIR / "clinreadnet-sim-v4.safetensors"}
DEFAULT_WEIGHTS_NAME = "clinreadnet.sim-v4"
SHIPPED_WEIGHTS = NAMED_WEIGHTS[DEFAULT_WEIGHTS_NAME]
# Earlier releases, kept out of the tree to keep it small: each stays in the git history at the last
# commit that held them (a commit, not a tag, since tags do not travel with every clone), and records
# still name a file with its SHA-256.
RETIRED_AT_COMMIT = "4a31dea"
RETIRED_WEIGHTS = {  # name: (file name under weights/ at RETIRED_AT_COMMIT, SHA-256)
    "clinreadnet.sim-v1": ("clinreadnet-sim.safetensors",
                           "678ccb302b14750bcb4e418bf72d3307ab93dbba2165b6a7f0d0af2bd242dbc7"),
    "clinreadnet.sim-v2": ("clinreadnet-sim-v2.safetensors",
                           "e2737aca710214afa79d767b3c13e525e13cdcfc1b2e4ef2b9ade550ed608b15"),
    "clinreadnet.sim-v3": ("clinreadnet-sim-v3.safetensors",
                           "8d809651107e866ee385344c9c70a65f7887728548b36ab901e82a66ffe9792e"),
}


def default_weights() -> Path:
    """``$CLINREADNET_WEIGHTS`` if set, else the weights shipped in the repository's ``weights/``."""
    return resolve_weights(os.environ.get("CLINREADNET_WEIGHTS") or SHIPPED_WEIGHTS)


def resolve_weights(value: str | Path | None) -> Path:
    """A weights file: a path, or the name of shipped weights (``clinreadnet.sim-v4`` or ``sim-v4``);
    None: the default. WeightsError for the name of a release no longer in the tree, saying where it went."""
    if value is None:
        return default_weights()
    if Path(value).exists():
        return Path(value)
    name = str(value) if str(value).startswith("clinreadnet.") else f"clinreadnet.{value}"
    if name in NAMED_WEIGHTS:
        return NAMED_WEIGHTS[name]
    if name in RETIRED_WEIGHTS:
        file_name, _ = RETIRED_WEIGHTS[name]
        raise WeightsError(f"{value}: {name} is no longer shipped in weights/ (only {DEFAULT_WEIGHTS_NAME}); it "
                           f"is in the git history: git show {RETIRED_AT_COMMIT}:weights/{file_name} > {file_name}, then "
                           f"--weights {file_name}")
    return Path(value)


def scoring_config(path: str | Path, sampling_grids: int | None = None) -> ClinReadNetConfig:
    """The weights' config as scoring uses it: read through ``sampling_grids`` sampling grids in
    place of the header's where given. The same tensors score every grid, so fewer grids cost
    less and more average out one grid's noise draw (``preprocess``). ConfigError where the
    weights' input path has no grids to choose."""
    cfg = read_config(path)
    return cfg if sampling_grids is None else dataclasses.replace(cfg, sampling_grids=sampling_grids)


def weights_identity(path: str | Path) -> dict:
    """What records say about the weights that scored them: the shipped name or the file, and its SHA-256."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    sha256 = digest.hexdigest()
    names = [name for name, shipped in NAMED_WEIGHTS.items() if shipped.resolve() == path.resolve()]
    names += [name for name, (_, retired) in RETIRED_WEIGHTS.items() if retired == sha256]
    return {"weights": names[0] if names else str(path), "weights_sha256": sha256}


class WeightsError(ValueError):
    """A weights file that cannot be used, with the file and the reason in its message."""


def save_weights(model: ClinReadNet, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``model``'s weights and config to ``path`` atomically (temp file, then rename).

    ``dtype=torch.float16`` halves the file; floating tensors are cast back to fp32 on load.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.contiguous()
    metadata = {"format": FORMAT, "config": model.config.to_json(), "clinreadnet_version": __version__}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_config(path: str | Path) -> ClinReadNetConfig:
    """The config stored in a weights file (reads the header only)."""
    path = Path(path)
    metadata = _open(path, lambda f: f.metadata(), framework="numpy") or {}
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise WeightsError(f"{path}: not a clinreadnet weights file (no '{FORMAT}' config in its header)")
    try:
        return ClinReadNetConfig.from_json(metadata["config"])
    except ConfigError as exc:
        raise WeightsError(f"{path}: stored config is unusable: {exc}") from None


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> ClinReadNet:
    """Rebuild the model a weights file describes and load its tensors (eval mode)."""
    from .archs import create_model

    cfg = read_config(path)
    try:
        model = create_model(cfg)
    except (ValueError, RuntimeError, AssertionError) as exc:  # a config that passes its checks but not timm's
        raise WeightsError(f"{path}: its config does not build a model ({type(exc).__name__}: {exc})") from None
    load_weights(model, path)
    return model.to(map_location).eval()


def load_weights(model: ClinReadNet, path: str | Path) -> None:
    """Load a weights file into ``model``; its stored config must match the model's."""
    import torch

    path = Path(path)
    stored = read_config(path)
    if stored != model.config:
        mine, theirs = model.config.to_dict(), stored.to_dict()
        diffs = [f"{k}: file {theirs[k]!r} != model {mine[k]!r}" for k in mine if mine[k] != theirs[k]]
        raise WeightsError(f"{path}: config does not match the model ({'; '.join(diffs)})")
    shapes = _open(path, lambda f: {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    expected = model.state_dict()
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(shapes) if tuple(expected[k].shape) != shapes[k])
    if missing or unexpected or wrong_shape:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
                problems.append(f"{label} tensors: {shown}")
        raise WeightsError(f"{path}: tensors do not fit its config ({'; '.join(problems)})")
    tensors = _open(path, lambda f: {k: f.get_tensor(k) for k in f.keys()})  # shapes checked: sizes are known
    broken = sorted(k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all())
    if broken:
        raise WeightsError(f"{path}: non-finite values (NaN/inf) in {len(broken)} tensor(s), e.g. {broken[0]}")
    with torch.no_grad():
        for name, target in expected.items():
            target.copy_(tensors[name].to(target.dtype))


def initialise_from(model: ClinReadNet, path: str | Path, deal_grids: bool = True) -> tuple[int, list[str]]:
    """Start ``model`` from another weights file's tensors (fine-tuning); returns (copied, not copied).

    Unlike ``load_weights`` the stored config may differ in what leaves the tensors' shapes alone
    (input path, MTMSA parameterisation): every tensor whose name and shape match is copied, and
    temperatures stored as T become log T. A patch embedding with more input channels than the
    stored one takes the stored channels and zeros for the new ones (a new detail channel starts
    silent: the model begins as the stored one), except that a one-grid embedding widened to a
    stacked-grid path is dealt across the grids (``deal_across_grids``) unless ``deal_grids`` is
    false (then the model begins as the stored one through the first grid). The rest keep their
    fresh initialisation.
    """
    import torch

    path = Path(path)
    read_config(path)  # a clinreadnet weights file, not any safetensors
    tensors = _open(path, lambda f: {k: f.get_tensor(k) for k in f.keys()})
    for name in [k for k in tensors if k.endswith(".temperatures")]:
        tensors[name[: -len("temperatures")] + "log_temperatures"] = tensors.pop(name).float().clamp_min(1e-6).log()
    copied, fresh = 0, []
    with torch.no_grad():
        for name, target in model.state_dict().items():
            source = tensors.get(name)
            if source is not None and name.endswith("patch_embed.proj.weight") and widens_channels(source, target):
                if deal_grids and model.config.input_path in STACK_PATHS and source.shape[1] == 1:
                    source = deal_across_grids(source, target.shape[1])
                else:
                    source = torch.cat([source, source.new_zeros(source.shape[0], target.shape[1] - source.shape[1],
                                                                  *source.shape[2:])], dim=1)
            if source is None or source.shape != target.shape:
                fresh.append(name)
                continue
            target.copy_(source.to(target.dtype))
            copied += 1
    if copied == 0:
        raise WeightsError(f"{path}: no tensor fits model {model.config.name!r}")
    return copied, fresh


def deal_across_grids(weight, grids: int):
    """A one-channel patch embedding (out, 1, k, k) widened to ``grids`` stacked grids: output
    dimension d reads grid d mod ``grids`` alone, with its own weights. Each dimension then sees one
    grid's pixels at the noise level the weights were trained on, and the grids' independent noise
    draws are spread across the dimensions, which the layers after it pool."""
    import torch

    widened = weight.new_zeros(weight.shape[0], grids, *weight.shape[2:])
    rows = torch.arange(weight.shape[0])
    widened[rows, rows % grids] = weight[:, 0]
    return widened


def widens_channels(source, target) -> bool:
    """A conv weight (out, in, kh, kw) that ``target`` matches except for more input channels."""
    return (source.ndim == target.ndim == 4 and source.shape[1] < target.shape[1]
            and source.shape[:1] + source.shape[2:] == target.shape[:1] + target.shape[2:])


def _open(path: Path, read, framework: str = "pt"):
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework=framework) as f:
            return read(f)
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
