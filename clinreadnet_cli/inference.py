"""The fast inference path: one prepared predictor per run, with the options that speed it up.

Runtimes: torch eager, or on the CPU ONNX Runtime / OpenVINO on the model exported once
(``runtimes``; OpenVINO comes with the package, ONNX Runtime with the ``onnxruntime`` extra).
``auto`` takes the CPU runtime that measured fastest with scores unchanged (docs/speed.md's
section) when it is installed, else torch.
Precision ``auto``: fp32 on the CPU. bf16 is 2-3x faster on CPUs with bf16 arithmetic (AMX,
AVX512-BF16) but moves the default weights' scores by up to 0.012 (torch) and 0.019 (OpenVINO)
on the sample data, past the 0.01 a runtime may move them (docs/speed.md), so it is asked for,
not chosen. CUDA defaults to bf16 autocast and channels-last input. int8 (dynamic quantisation of
the linear layers, CPU only) and ``torch.compile`` are opt-in torch options.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .config import ConfigError

if TYPE_CHECKING:  # torch is imported where a torch model runs: the exported runtimes do without it
    import torch

    from .archs import ClinReadNet
    from .archs.clinreadnet import Prediction

PRECISIONS = ("fp32", "bf16", "fp16")  # the autocast dtype of the forward pass (fp32: none)
RUNTIMES = ("torch", "onnxruntime", "openvino")
# What ``auto`` takes on the CPU, first installed first: the fastest with fp32 scores (docs/speed.md).
CPU_RUNTIME_PREFERENCE = ("openvino", "onnxruntime")


@dataclass(frozen=True)
class InferenceOptions:
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast dtype of the forward pass
    channels_last: bool = False  # memory format of the input batch and the conv weights
    int8: bool = False  # dynamic int8 quantisation of nn.Linear (CPU only)
    compile: bool = False  # torch.compile the model (first batches pay the compilation)
    runtime: str = "torch"  # torch | onnxruntime | openvino (the last two: CPU, exported model)

    @classmethod
    def default_for(cls, device: "torch.device | str") -> "InferenceOptions":
        return cls(precision="bf16", channels_last=True) if device_type(device) == "cuda" else cls()


def device_type(device: "torch.device | str") -> str:
    """"cpu" or "cuda" of a torch.device or of its name, so that options resolve without torch."""
    return getattr(device, "type", str(device).split(":")[0])


def resolve_options(device: "torch.device | str", precision: str = "auto", int8: bool = False,
                    compile: bool = False, runtime: str = "auto") -> InferenceOptions:
    """The device's defaults with the user's choices on top; ConfigError if the device cannot run them."""
    default = InferenceOptions.default_for(device)
    if runtime == "auto":
        runtime = auto_runtime(device, int8 or compile)
    precision = default.precision if precision == "auto" else precision
    options = InferenceOptions(precision=precision, channels_last=default.channels_last, int8=int8, compile=compile,
                               runtime=runtime)
    check_options(options, device)
    return options


def auto_runtime(device: "torch.device | str", torch_options: bool) -> str:
    """torch on CUDA or with a torch-only option (int8, compile); else the first installed CPU runtime."""
    if device_type(device) != "cpu" or torch_options:
        return "torch"
    from .runtimes import installed

    return next((r for r in CPU_RUNTIME_PREFERENCE if installed(r)), "torch")


def check_options(options: InferenceOptions, device: "torch.device | str") -> None:
    """ConfigError for a combination the device cannot run."""
    kind = device_type(device)
    if options.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {options.precision!r}")
    if options.int8 and kind != "cpu":
        raise ConfigError("int8 quantisation runs on the CPU only")
    if options.precision == "fp16" and kind != "cuda":
        raise ConfigError("fp16 needs CUDA; on the CPU use fp32 (or bf16 where the CPU has it)")
    if options.runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of auto, {', '.join(RUNTIMES)}, got {options.runtime!r}")
    if options.runtime != "torch":
        from .runtimes import installed

        if kind != "cpu":
            raise ConfigError(f"the {options.runtime} runtime runs on the CPU only; on CUDA use torch")
        if options.int8 or options.compile:
            raise ConfigError("--int8 and --compile are torch options; use them with the torch runtime")
        if not installed(options.runtime):
            raise ConfigError(f"{options.runtime} is not installed: pip install {options.runtime} (or use "
                              "--runtime torch)")
        if options.runtime == "onnxruntime" and options.precision != "fp32":
            raise ConfigError("the onnxruntime runtime runs fp32 only; bf16 on the CPU: --runtime openvino or torch")


def prepare_for_inference(model: "ClinReadNet", device: "torch.device", options: InferenceOptions,
                          export: "Path | None" = None) -> "Callable[[torch.Tensor], Prediction]":
    """``predict(batch)`` for (B, C, H, W) batches in [0, 1] on any device; the model is not changed.
    The exported runtimes run the model exported to ``export`` (default: a path keyed by its tensors)."""
    import torch
    from torch import nn

    from .archs.clinreadnet import Prediction

    check_options(options, device)
    if options.runtime != "torch":
        from . import runtimes

        model = model.eval()
        onnx = runtimes.export_onnx(model, export or runtimes.export_path(runtimes.tensors_sha256(model),
                                                                          model.config))
        logits = runtimes.runtime_logits(options.runtime, onnx, torch.get_num_threads(), options.precision)
        return lambda batch: Prediction.from_logits(torch.from_numpy(logits(batch.cpu().numpy())))
    model = model.to(device).eval()
    if options.int8:  # a quantised copy; the caller's model stays fp32
        with warnings.catch_warnings():  # torch's notices that this API will move to torchao
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
            model = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    forward = torch.compile(model) if options.compile else model
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[options.precision]

    @torch.inference_mode()
    def predict(batch: torch.Tensor) -> Prediction:
        batch = batch.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return Prediction.from_logits(forward(batch))

    return predict
