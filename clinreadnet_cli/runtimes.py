"""CPU inference runtimes besides torch eager: OpenVINO and ONNX Runtime, on the model exported once.

The model is exported with ``torch.onnx.export`` (the torch.export-based exporter: timm's Swin
and SOQN's CBAM need it) to a folder of the cache, named by a key of what shapes the graph (the
weights file's SHA-256 and the config it is read with, or the tensors themselves), so
later runs only load it: then neither runtime needs torch, and ``score`` does not import it
(600-750 MB less memory, 4 s less start-up). Nothing here changes the model's arithmetic: in fp32
the logits are torch's up to float rounding (benchmarks/run.py, section options).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .atomic import umask
from .child import module_command
from .config import ClinReadNetConfig, ConfigError

if TYPE_CHECKING:
    from .archs import ClinReadNet

EXPORT_FORMAT = "clinreadnet-onnx/2"  # bump when the export itself changes
ONNX_FILE = "model.onnx"  # in a folder of its own, its tensors beside it in model.onnx.data
WEIGHTS_ERROR_EXIT = 3  # export_weights' child: the weights file could not be loaded
Logits = Callable[[np.ndarray], np.ndarray]  # (B, C, S, S) float32 in [0, 1] -> per-head logits (B, H, K)


def installed(runtime: str) -> bool:
    return importlib.util.find_spec(runtime) is not None


def cache_dir() -> Path:
    """``CLINREADNET_CACHE``, else ``$XDG_CACHE_HOME/clinreadnet`` (``~/.cache/clinreadnet``)."""
    if os.environ.get("CLINREADNET_CACHE"):
        return Path(os.environ["CLINREADNET_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clinreadnet"


def export_path(weights_sha256: str, config: ClinReadNetConfig) -> Path:
    """Where the export of a weights file (by its SHA-256), read with ``config``, is kept."""
    key = hashlib.sha256(f"{EXPORT_FORMAT}|{weights_sha256}|{config.to_json()}".encode()).hexdigest()[:24]
    return cache_dir() / "onnx" / key / ONNX_FILE


def tensors_sha256(model: "ClinReadNet") -> str:
    """A key for a model that has no file (tests, benchmarks): a hash of every tensor."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def export_onnx(model: "ClinReadNet", path: Path) -> Path:
    """Export ``model`` (dynamic batch, its config's input channels) to ``path``, a file in a folder
    of its own that holds the tensors too (``path`` + ``.data``). The folder is written under a
    temporary name and renamed into place whole; an export already there is kept as it is."""
    if path.is_file():
        return path
    import torch

    folder = path.parent
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        cfg = model.config
        example = torch.rand(2, cfg.in_chans * cfg.sampling_grids, cfg.img_size, cfg.img_size)
        batch = torch.export.Dim("batch", min=1, max=4096)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model.eval(), (example,), dynamo=True, input_names=["slices"],
                                        output_names=["head_logits"], dynamic_shapes={"x": {0: batch}},
                                        verbose=False)
            # The tensors in a file of their own: saved inside the .onnx, they were serialised
            # whole in memory first (120 MB in fp32, a 370 MiB higher peak at the export step).
            program.save(str(partial / path.name), external_data=True)
        os.chmod(partial, 0o777 & ~umask())
        try:
            os.replace(partial, folder)
        except OSError:
            if not path.is_file():  # not another process's export of the same key
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return path


def export_weights(weights: Path, config: ClinReadNetConfig, path: Path) -> Path:
    """``export_onnx`` of the weights file ``weights`` read with ``config``, in a child process: the
    caller never imports torch, and the export's working memory (about 1 GiB at its peak) goes with
    the child instead of staying in a process that then compiles and runs the model. ConfigError
    where the cache cannot be written, WeightsError where the file's tensors cannot be loaded,
    RuntimeError where the export itself fails."""
    if path.is_file():
        return path
    cache = path.parent.parent  # the child writes the weights' own folder in it whole (a rename)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if not os.access(cache, os.W_OK | os.X_OK):
            raise PermissionError("not writable")
    except OSError as exc:
        raise ConfigError(f"the export cache {cache} cannot be written ({exc.strerror or exc}); set "
                          "CLINREADNET_CACHE to a writable folder, or use --runtime torch") from None
    done = subprocess.run(module_command(__name__, str(weights), config.to_json(), str(path)),
                          capture_output=True, text=True)
    if done.returncode != 0 or not path.is_file():
        from .checkpoint import WeightsError

        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise (WeightsError if done.returncode == WEIGHTS_ERROR_EXIT else RuntimeError)(
            f"exporting {weights} for the {path.parent.name} cache entry failed: {last}")
    return path


def _export_child(weights: str, config_json: str, path: str) -> int:
    """The child of ``export_weights``: its exit code, the reason on stderr."""
    from .checkpoint import WeightsError, load_model

    try:
        model = load_model(weights)
    except WeightsError as exc:
        print(exc, file=sys.stderr)
        return WEIGHTS_ERROR_EXIT
    model.config = ClinReadNetConfig.from_json(config_json)  # the tensors are the same for any number of grids
    export_onnx(model, Path(path))
    return 0


def runtime_logits(runtime: str, onnx: Path, threads: int | None, precision: str,
                   batch: int | None = None) -> Logits:
    """The exported model in ``runtime`` (openvino or onnxruntime) on the CPU; ``threads`` None:
    the runtime's own choice. ``batch``: the slices a call usually passes, the one shape OpenVINO
    plans its memory for (``OpenVinoLogits``: shorter calls padded, longer ones split); None: any batch."""
    if runtime == "openvino":
        return OpenVinoLogits(onnx, threads, precision, batch)
    if runtime == "onnxruntime":
        return _onnxruntime(onnx, threads)
    raise ValueError(f"no exported runtime {runtime!r}")


def _onnxruntime(onnx: Path, threads: int | None) -> Logits:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # its notices are not the user's concern
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"slices": np.ascontiguousarray(batch, dtype=np.float32)})[0]


class _SignalStack(ctypes.Structure):  # stack_t of sigaltstack(2)
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def _keeps_signal_stack():
    """Leave the calling thread on the alternate signal stack it had.

    OpenVINO's CPU plugin installs a signal stack of its own on the thread that compiles a model,
    and puts back the one it found when that model is freed. Two models freed in another order
    than they were compiled leave the thread on a freed stack, and the next signal that runs a
    Python handler there (Ctrl-C, SIGTERM, a child's SIGCHLD) kills the process with SIGSEGV.
    Where the old stack cannot be put back (too small for this CPU's signal frames), the thread
    goes without one: signals then run on its own stack."""
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    own = _SignalStack()
    libc.sigaltstack(None, ctypes.byref(own))
    try:
        yield
    finally:
        if libc.sigaltstack(ctypes.byref(own), None) != 0:
            libc.sigaltstack(ctypes.byref(_SignalStack(None, 2, 0)), None)  # SS_DISABLE


def import_openvino():
    """openvino with its usage telemetry off. On import it sends an event from a forked process (no
    consent file counts as consent): on a hospital network without internet that process waits in
    DNS, holding the command's stdout and stderr open after the command has exited, so a pipeline or
    a caller reading them to the end waits with it; and nothing of a site's use should leave it
    unasked. A None entry in sys.modules makes openvino's ``import openvino_telemetry`` fail, and
    openvino then uses its own stub."""
    sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


class OpenVinoLogits:
    """The exported model compiled by OpenVINO: called like a ``Logits``; ``release`` hands its
    working memory back between calls.

    Compiled for one batch shape (``batch`` slices; a smaller call is padded, a larger one split),
    the CPU plugin plans its buffers and packs its weights once: 120 MiB less at the peak than for
    a dynamic batch (benchmarks/listen_memory.py, docs/speed.md), the same logits bit for bit."""

    def __init__(self, onnx: Path, threads: int | None, precision: str, batch: int | None = None):
        ov = import_openvino()

        # OpenVINO defaults to bf16 on CPUs that have it: fp32 must be asked for. Its fused "snippets"
        # kernels have no Mish (SOQN's activation) on some CPUs, so they are switched off.
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "SNIPPETS_MODE": "DISABLE",
                  "PERFORMANCE_HINT": "LATENCY", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        core = ov.Core()
        model = core.read_model(str(onnx))
        if batch is not None:
            model.reshape([batch, *model.input(0).get_partial_shape()[1:]])
        self.batch = batch
        with _keeps_signal_stack():
            self.compiled = core.compile_model(model, "CPU", config)
            self.request, self.output = self.compiled.create_infer_request(), self.compiled.output(0)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.batch is None:
            return self._infer(batch)
        starts = range(0, len(batch), self.batch)
        return np.concatenate([self._infer(batch[start:start + self.batch]) for start in starts])

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits of ``batch``, padded with zeros to the compiled batch where it is shorter."""
        count = len(batch)
        if self.batch is not None and count < self.batch:
            batch = np.concatenate([batch, np.zeros((self.batch - count, *batch.shape[1:]), np.float32)])
        return np.array(self.request.infer({0: batch})[self.output])[:count]

    def release(self) -> None:
        """Free the buffers inference allocated (about 110 MiB at 8 forwards a call); the next call
        allocates them again (a few ms)."""
        self.compiled.release_memory()


if __name__ == "__main__":
    sys.exit(_export_child(*sys.argv[1:4]))
