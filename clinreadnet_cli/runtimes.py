"""CPU inference runtimes besides torch eager: ONNX Runtime and OpenVINO, on the model exported once.

The model is exported with ``torch.onnx.export`` (the torch.export-based exporter: timm's Swin
and SOQN's CBAM need it) to an ONNX file in the cache folder, named by a hash of everything that
shapes the graph (tensors, config, torch version), so a later run with the same weights only
loads it. Both runtimes read that file. Nothing here changes the model's arithmetic: the scores
are torch's up to float rounding in fp32 (measured in benchmarks/run.py, section options).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .archs import ClinReadNet
from .archs.clinreadnet import Prediction
from .atomic import atomic_path

EXPORT_FORMAT = "clinreadnet-onnx/1"  # bump when the export itself changes
MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def installed(runtime: str) -> bool:
    return importlib.util.find_spec(MODULES[runtime]) is not None


def cache_dir() -> Path:
    """``CLINREADNET_CACHE``, else ``$XDG_CACHE_HOME/clinreadnet`` (``~/.cache/clinreadnet``)."""
    if os.environ.get("CLINREADNET_CACHE"):
        return Path(os.environ["CLINREADNET_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clinreadnet"


def model_key(model: ClinReadNet) -> str:
    """A hash of what the exported graph depends on: every tensor, the config, torch's version."""
    digest = hashlib.sha256(f"{EXPORT_FORMAT}|{torch.__version__}|{model.config.to_json()}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def exported_onnx(model: ClinReadNet) -> Path:
    """The model as ONNX (dynamic batch, the config's input channels), exported on first use and
    kept in the cache folder; an export is written under a temporary name and renamed into place."""
    folder = cache_dir() / "onnx"
    path = folder / f"{model_key(model)}.onnx"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    example = torch.rand(2, cfg.in_chans * cfg.sampling_grids, cfg.img_size, cfg.img_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model.eval(), (example,), dynamo=True, input_names=["slices"],
                                    output_names=["head_logits"], dynamic_shapes={"x": {0: batch}}, verbose=False)
        # One self-contained file (the weights inside, 120 MB in fp32): a rename moves all of it.
        program.save(str(tmp), external_data=False)
    return path


def onnxruntime_predictor(model: ClinReadNet, threads: int) -> Callable[[torch.Tensor], Prediction]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # its notices are not the user's concern
    session = ort.InferenceSession(str(exported_onnx(model)), options, providers=["CPUExecutionProvider"])

    def predict(batch: torch.Tensor) -> Prediction:
        (logits,) = session.run(None, {"slices": np.ascontiguousarray(batch.numpy(), dtype=np.float32)})
        return Prediction.from_logits(torch.from_numpy(logits))

    return predict


def openvino_predictor(model: ClinReadNet, threads: int, precision: str) -> Callable[[torch.Tensor], Prediction]:
    import openvino as ov

    # OpenVINO defaults to bf16 on CPUs that have it: fp32 must be asked for. Its fused "snippets"
    # kernels have no Mish (SOQN's activation) on some CPUs, so they are switched off.
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "SNIPPETS_MODE": "DISABLE",
              "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    compiled = ov.Core().compile_model(str(exported_onnx(model)), "CPU", config)
    request = compiled.create_infer_request()

    def predict(batch: torch.Tensor) -> Prediction:
        logits = request.infer({0: np.ascontiguousarray(batch.numpy(), dtype=np.float32)})[compiled.output(0)]
        return Prediction.from_logits(torch.from_numpy(np.array(logits)))

    return predict
