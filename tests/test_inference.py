"""The fast inference path: every option gives the model's own scores (exactly, or within the
precision it trades away), and impossible combinations are refused."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from clinreadnet_cli.archs import create_model
from clinreadnet_cli.config import ConfigError
from clinreadnet_cli.inference import CPU_RUNTIME_PREFERENCE, InferenceOptions, prepare_for_inference, resolve_options
from clinreadnet_cli.runtimes import installed
from tests.conftest import tiny_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(tiny_config()).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(6, 1, 128, 128, generator=torch.Generator().manual_seed(1))


def test_defaults_are_fp32_on_cpu_and_bf16_channels_last_on_cuda():
    assert resolve_options(CPU, runtime="torch") == InferenceOptions()
    cuda = resolve_options(torch.device("cuda"))
    assert cuda.precision == "bf16" and cuda.channels_last and not cuda.int8 and cuda.runtime == "torch"


def test_auto_runtime_is_the_first_installed_cpu_runtime_and_torch_for_torch_options():
    expected = next((r for r in CPU_RUNTIME_PREFERENCE if installed(r)), "torch")
    assert resolve_options(CPU).runtime == expected
    assert resolve_options(CPU, int8=True).runtime == "torch"


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_exported_runtimes_give_torchs_scores_and_export_once(model, images, runtime, tmp_path, monkeypatch):
    pytest.importorskip(runtime)
    monkeypatch.setenv("CLINREADNET_CACHE", str(tmp_path))
    expected = model.predict(images)
    got = prepare_for_inference(model, CPU, InferenceOptions(runtime=runtime))(images)
    assert torch.allclose(got.head_probs, expected.head_probs, atol=1e-5)
    (exported,) = (tmp_path / "onnx").iterdir()  # one folder, no temporary one left beside it
    # The tensors beside the graph: serialised inside it, they were held whole in memory on export
    graph, tensors = exported / "model.onnx", exported / "model.onnx.data"
    assert sorted(p.name for p in exported.iterdir()) == [graph.name, tensors.name]
    assert graph.stat().st_size < tensors.stat().st_size
    written = graph.stat().st_mtime_ns
    again = prepare_for_inference(model, CPU, InferenceOptions(runtime=runtime))(images[:1])  # another batch size
    assert torch.allclose(again.score, expected.score[:1], atol=1e-5)
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [exported.name]
    assert graph.stat().st_mtime_ns == written


@pytest.mark.parametrize("device, kwargs, message", [
    ("cpu", {"precision": "fp16"}, "fp16 needs CUDA"),
    ("cuda", {"int8": True}, "CPU only"),
    ("cpu", {"precision": "fp8"}, "precision must be one of"),
    ("cuda", {"runtime": "openvino"}, "CPU only"),
    ("cpu", {"runtime": "openvino", "int8": True}, "torch options"),
    ("cpu", {"runtime": "onnxruntime", "precision": "bf16"}, "fp32 only"),
    ("cpu", {"runtime": "tensorrt"}, "runtime must be one of"),
])
def test_impossible_combinations_are_refused(device, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        resolve_options(torch.device(device), **kwargs)


def test_fp32_path_equals_predict(model, images):
    expected = model.predict(images)
    got = prepare_for_inference(model, CPU, InferenceOptions())(images)
    assert torch.equal(got.probs, expected.probs) and torch.equal(got.head_probs, expected.head_probs)


@pytest.mark.parametrize("options, tolerance", [
    (InferenceOptions(channels_last=True), 1e-4),  # same arithmetic, other memory order
    (InferenceOptions(precision="bf16"), 0.1),  # 8-bit mantissa
    (InferenceOptions(int8=True), 0.1),  # int8 weights and activations in the linear layers
])
def test_fast_options_keep_scores(model, images, options, tolerance):
    expected = model.predict(images).score
    got = prepare_for_inference(model, CPU, options)(images)
    assert got.probs.dtype == torch.float32 and torch.allclose(got.probs.sum(1), torch.ones(6))
    assert (got.score - expected).abs().max() < tolerance


def test_int8_leaves_the_callers_model_untouched(model, images):
    before = model.predict(images).score
    prepare_for_inference(model, CPU, InferenceOptions(int8=True))
    assert isinstance(model.head.heads[0], torch.nn.Linear) and torch.equal(model.predict(images).score, before)


SIGNAL_AFTER_TWO_MODELS = """
import faulthandler, gc, os, signal, sys
import torch
from clinreadnet_cli.archs import create_model
from clinreadnet_cli.runtimes import export_onnx, runtime_logits
from tests.conftest import tiny_config

faulthandler.enable()  # an alternate signal stack on this thread, as pytest and python -X faulthandler give
torch.manual_seed(0)
onnx = export_onnx(create_model(tiny_config()).eval(), __import__("pathlib").Path(sys.argv[1]) / "m.onnx")
first, second = runtime_logits("openvino", onnx, 1, "fp32"), runtime_logits("openvino", onnx, 1, "fp32")
del first  # freed in the order they were made: OpenVINO puts back the stacks it found in the other order
gc.collect()
del second
gc.collect()
heard = []
signal.signal(signal.SIGUSR1, lambda *_: heard.append(1))  # a Python handler runs on the alternate stack
os.kill(os.getpid(), signal.SIGUSR1)
print("survived", heard)
"""


@pytest.mark.skipif(not installed("openvino"), reason="needs OpenVINO")
def test_a_signal_after_two_openvino_models_are_freed_is_handled(tmp_path):
    """OpenVINO's CPU plugin leaves its own alternate signal stack on the compiling thread and puts
    back the old one when the model is freed; freed out of order, the thread was left on freed
    memory and the next signal killed the process (SIGSEGV). The thread keeps its own stack."""
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_TWO_MODELS, str(tmp_path / "export")],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "survived [1]" in done.stdout, (done.returncode, done.stderr[-2000:])


def test_openvino_is_imported_without_its_telemetry():
    """openvino sends a usage event on import from a forked process, which without internet waits
    in DNS holding the caller's pipes open: the runtime imports it with its own stub instead."""
    pytest.importorskip("openvino")
    code = ("from clinreadnet_cli.runtimes import import_openvino; import_openvino(); "
            "import openvino.tools.ovc.telemetry_utils as t; import multiprocessing as m; "
            "print(t.tm.__name__, len(m.active_children()))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["openvino.tools.ovc.telemetry_stub", "0"]



@pytest.mark.skipif(not installed("openvino"), reason="needs OpenVINO")
def test_openvino_compiled_for_one_batch_gives_the_same_logits_for_any_batch(model, images, tmp_path):
    """``Scorer`` compiles OpenVINO for its batch size (less memory): a shorter call is padded, a
    longer one split, and the logits are those of the model compiled for any batch, also after its
    buffers were released."""
    from clinreadnet_cli.runtimes import export_onnx, runtime_logits

    onnx = export_onnx(model, tmp_path / "export" / "m.onnx")
    any_batch, four = runtime_logits("openvino", onnx, 1, "fp32"), runtime_logits("openvino", onnx, 1, "fp32", batch=4)
    batch = images.numpy()
    expected = any_batch(batch)
    assert four(batch).shape == expected.shape == (6, *expected.shape[1:])  # split into 4 + 2 (padded)
    assert abs(four(batch) - expected).max() < 1e-5
    assert abs(four(batch[:1]) - expected[:1]).max() < 1e-5
    four.release()
    assert abs(four(batch[:4]) - expected[:4]).max() < 1e-5
