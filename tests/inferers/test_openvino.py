"""The OpenVINO backends (``bundle.inferers.openvino``): agreement with eager, the INT8 cache, refusals, config values.

A small random network with the operation types INT8 touches in MSA²Net (convolution, LayerNorm, linear layers,
softmax attention, GELU) stands in for it, at 32² so that an export plus an NNCF quantization takes seconds.
Tolerances, against the fp32 eager output of that network (logits of magnitude ~1):

* ``openvino`` (fp32): max |Δ logit| <= 1e-4, as the other fp32 paths (``test_perf_equivalence.py``).
* ``openvino_bf16`` (only on CPUs with native bf16): relative L2 error <= 2e-2, as CPU bf16 autocast.
* ``openvino_int8``, calibrated on 16 slices drawn like the test slices: relative L2 error <= 0.15, argmax agreement
  >= 99 % where the fp32 top-1/top-2 margin exceeds 0.05 and >= 90 % on all pixels (measured over 5 seeds of the
  network: 0.03–0.07, 100 %, 95.5–99.9 %; a random network leaves many near-ties). Accuracy on real CT is judged by
  per-organ Dice in ``docs/performance.md``, not here.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import TinySegNet, inference_workflow

from bundle.errors import InputError, root_input_error
from bundle.inferers import openvino as ov_backend
from bundle.inferers.axial import AxialSliceInferer
from bundle.inferers.backends import optimize_for_inference

# the optional extra (pyproject.toml [openvino]); the refusal and configuration tests below run without it
needs_openvino = pytest.mark.skipif(bool(ov_backend.openvino_missing("openvino")), reason="openvino not installed")
needs_nncf = pytest.mark.skipif(bool(ov_backend.openvino_missing("openvino_int8")), reason="openvino/nncf missing")

IMG = 32
FP32_ATOL = 1e-4
BF16_REL_L2 = 2e-2
INT8_REL_L2 = 0.15
INT8_MIN_AGREEMENT_CONFIDENT = 0.99
INT8_MIN_AGREEMENT_ALL = 0.9
CONFIDENT_MARGIN = 0.05


class SmallAttnNet(torch.nn.Module):
    """Conv stem, one pre-norm self-attention block over all pixels, a 1×1 conv head (9 classes)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 9, width: int = 16) -> None:
        super().__init__()
        self.in_channels, self.img_size = in_channels, IMG
        self.stem = torch.nn.Conv2d(in_channels, width, 3, padding=1)
        self.norm = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.proj = torch.nn.Linear(width, width)
        self.head = torch.nn.Conv2d(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional.gelu(self.stem(x))
        b, c, h, w = f.shape
        t = f.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(self.norm(t)).chunk(3, dim=-1)
        t = t + self.proj(torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(c), dim=-1) @ v)
        return self.head(t.transpose(1, 2).reshape(b, c, h, w))


def _net(seed: int = 0) -> SmallAttnNet:
    torch.manual_seed(seed)
    return SmallAttnNet().eval()


def _slices(n: int, seed: int) -> torch.Tensor:
    """Smooth images in [-1, 1] (blurred noise): CT-like low-frequency content, not white noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(n, 1, IMG + 6, IMG + 6, generator=g), 7, stride=1)
    return ((x - x.amin()) / (x.amax() - x.amin()) * 2 - 1).contiguous()


def _rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


@needs_openvino
def test_openvino_fp32_matches_eager_any_batch(tmp_path):
    net = _net()
    fast = optimize_for_inference(net, backend="openvino", cache_dir=tmp_path)
    assert type(fast).__name__ == "OpenVinoInference" and fast.config["INFERENCE_PRECISION_HINT"] == "f32"
    for batch in (3, 1):  # exported with batch 2: the batch axis stays dynamic
        x = _slices(batch, seed=batch)
        with torch.no_grad():
            ref = net(x)
        out = fast(x)
        assert out.shape == ref.shape and out.dtype == torch.float32
        assert (out - ref).abs().max() <= FP32_ATOL


@pytest.mark.skipif(
    bool(ov_backend.openvino_missing("openvino")) or not ov_backend.cpu_has_native_bf16(),
    reason="openvino missing, or this CPU has no native bf16 (the backend refuses it: tested below)",
)
def test_openvino_bf16_close_to_eager(tmp_path):
    net = _net()
    x = _slices(4, seed=3)
    with torch.no_grad():
        ref = net(x)
    out = optimize_for_inference(net, backend="openvino_bf16", cache_dir=tmp_path)(x)
    assert out.dtype == torch.float32 and _rel_l2(out, ref) <= BF16_REL_L2


def test_openvino_bf16_refused_without_native_bf16(monkeypatch, tmp_path):
    monkeypatch.setattr(ov_backend, "openvino_missing", lambda backend: [])  # refused for the CPU, not the package
    monkeypatch.setattr(ov_backend, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(InputError, match="native bf16") as err:
        optimize_for_inference(_net(), backend="openvino_bf16", cache_dir=tmp_path)
    assert "\n" not in str(err.value)


@needs_nncf
def test_openvino_int8_agreement_and_cache_by_content(tmp_path, monkeypatch):
    calls = []
    real = ov_backend.quantize_int8
    monkeypatch.setattr(ov_backend, "quantize_int8", lambda *a: calls.append(a[2]) or real(*a))
    calib, x = _slices(16, seed=10), _slices(4, seed=11)
    net = _net()
    with torch.no_grad():
        ref = net(x)
    fast = optimize_for_inference(net, backend="openvino_int8", cache_dir=tmp_path, calibration=calib)
    out = fast(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert _rel_l2(out, ref) <= INT8_REL_L2
    agree = out.argmax(1) == ref.argmax(1)
    top2 = ref.topk(2, dim=1).values
    assert agree[(top2[:, 0] - top2[:, 1]) > CONFIDENT_MARGIN].float().mean() >= INT8_MIN_AGREEMENT_CONFIDENT
    assert agree.float().mean() >= INT8_MIN_AGREEMENT_ALL
    # INT8 ops are in the compiled model (not a silent fp32 fallback)
    assert any("FakeQuantize" in op.get_type_name() for op in fast.core.read_model(str(fast.model_path)).get_ops())
    # same weights, same slices (a new tensor with equal content): the cached IR, no second calibration
    again = optimize_for_inference(_net(), backend="openvino_int8", cache_dir=tmp_path, calibration=calib.clone())
    assert again.model_path == fast.model_path and len(calls) == 1
    assert torch.equal(again(x), out)
    # other slices, or other weights: a new quantized model beside the first
    other = optimize_for_inference(_net(), backend="openvino_int8", cache_dir=tmp_path, calibration=calib[:8])
    moved = optimize_for_inference(_net(seed=1), backend="openvino_int8", cache_dir=tmp_path, calibration=calib)
    assert len({fast.model_path, other.model_path, moved.model_path}) == 3 and len(calls) == 3
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".bin"] * 3 + [".onnx"] * 2 + [".xml"] * 3
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # written atomically


@needs_nncf
def test_int8_models_follow_the_cache_limit(tmp_path, monkeypatch):
    """MSA2NET_ONNX_CACHE_FILES bounds the INT8 models as it bounds the exports: the most recently used stay, each
    evicted .xml takes its .bin along."""
    monkeypatch.setenv("MSA2NET_ONNX_CACHE_FILES", "1")
    calib = _slices(8, seed=10)
    first = optimize_for_inference(_net(), backend="openvino_int8", cache_dir=tmp_path, calibration=calib)
    os.utime(first.model_path, (1, 1))  # used long ago (mtime resolution of the file system does not matter)
    second = optimize_for_inference(_net(), backend="openvino_int8", cache_dir=tmp_path, calibration=calib[:4])
    assert first.model_path != second.model_path and not first.model_path.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".xml", ".bin")) == [
        second.model_path.with_suffix(".bin").name,
        second.model_path.name,
    ]


@needs_nncf
def test_int8_without_calibration_is_refused(tmp_path):
    with pytest.raises(InputError, match="calibrate") as err:
        optimize_for_inference(_net(), backend="openvino_int8", cache_dir=tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="--calibration"):
        AxialSliceInferer(backend="openvino_int8")


@pytest.mark.parametrize("backend, missing", [("openvino", "openvino"), ("openvino_int8", "nncf")])
def test_missing_package_is_one_line(backend, missing, monkeypatch, tmp_path):
    real = ov_backend._version
    monkeypatch.setattr(ov_backend, "_version", lambda name: None if name == missing else real(name))
    for build in (
        lambda: optimize_for_inference(_net(), backend=backend, cache_dir=tmp_path, calibration=_slices(2, 0)),
        lambda: AxialSliceInferer(backend=backend, calibration=lambda inferer: _slices(2, 0)),
    ):
        with pytest.raises(InputError) as err:
            build()
        message = str(err.value)
        assert "\n" not in message and "needs" in message and missing in message and "pip install" in message
    assert not list(tmp_path.iterdir())  # refused before any export


def test_auto_resolution(monkeypatch, tmp_path):
    """``auto`` on CPU fp32: OpenVINO bf16 with native bf16, ONNX Runtime without it or without OpenVINO; eager on
    CUDA or in another dtype; a failing OpenVINO build under ``auto`` falls back to ONNX Runtime."""
    import bundle.inferers.backends as backends

    for module in (backends, ov_backend):  # an installed OpenVINO on a CPU with native bf16, wherever asked
        monkeypatch.setattr(module, "cpu_has_native_bf16", lambda: True)
        monkeypatch.setattr(module, "openvino_missing", lambda backend: [])
    assert backends.resolve_backend("auto", "cpu") == "openvino_bf16"
    assert backends.resolve_backend("auto", "cuda:0") == "eager"
    assert backends.resolve_backend("auto", "cpu", torch.bfloat16) == "eager"
    assert backends.resolve_backend("openvino", "cpu") == "openvino"
    built = []
    monkeypatch.setattr(backends, "OpenVinoInference", lambda path, precision, *a, **k: built.append(precision) or 7)
    assert optimize_for_inference(_net(), backend="auto", cache_dir=tmp_path) == 7 and built == ["bf16"]
    monkeypatch.setattr(backends, "OpenVinoInference", lambda *a, **k: 1 / 0)
    assert type(optimize_for_inference(_net(), backend="auto", cache_dir=tmp_path)).__name__ == "OnnxInference"
    with pytest.raises(ZeroDivisionError):  # named explicitly: no silent change of backend
        optimize_for_inference(_net(), backend="openvino_bf16", cache_dir=tmp_path)
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: False)
    assert backends.resolve_backend("auto", "cpu") == "onnx"
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(backends, "openvino_missing", lambda backend: ["openvino"])  # the extra not installed
    assert backends.resolve_backend("auto", torch.device("cpu")) == "onnx"


def _inference_workflow(tmp_path, src, **override):
    """conftest's inference workflow on a seeded tiny checkpoint, at inference.yaml's CPU chunk size (8)."""
    torch.manual_seed(0)
    torch.save(TinySegNet().state_dict(), tmp_path / "tiny.pt")
    override = {"device": "cpu", "overwrite": True, "sw_batch_size": 8, **override}
    return inference_workflow(str(src), tmp_path / "out", tmp_path / "tiny.pt", **override)


@pytest.mark.parametrize("backend", ["openvino_fp8", "int8"])
def test_config_refuses_unknown_backend(backend, ct_dataset, tmp_path):
    wf = _inference_workflow(tmp_path, ct_dataset / "images" / "vol0.nii.gz", backend=backend)
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.parser.get_parsed_content("inferer")
    message = root_input_error(err.value)  # the one line the error hook prints
    assert message.startswith("backend must be one of") and "openvino_int8" in message and "\n" not in message


@needs_nncf
def test_config_int8_refused_without_calibration_volumes(ct_dataset, tmp_path):
    wf = _inference_workflow(tmp_path, ct_dataset / "images" / "vol0.nii.gz", backend="openvino_int8")
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.parser.get_parsed_content("inferer")
    message = root_input_error(err.value)
    assert "needs real CT volumes to calibrate on: pass --calibration" in message and "\n" not in message
    wf = _inference_workflow(tmp_path, ct_dataset / "images" / "vol0.nii.gz", calibration_slices=0)
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.parser.get_parsed_content("inferer")
    assert root_input_error(err.value) == "calibration_slices must be ≥ 1, got 0."


@needs_nncf
def test_config_runs_openvino_int8_and_reuses_the_calibration(ct_dataset, tmp_path, monkeypatch):
    """configs/inference.yaml with ``backend: openvino_int8``: calibrated on the given volume's slices as the
    inferer prepares them, labels written; a second run finds the quantized model in the cache."""
    monkeypatch.setenv("MSA2NET_ONNX_CACHE", str(tmp_path / "cache"))
    calls = []
    real = ov_backend.quantize_int8
    monkeypatch.setattr(ov_backend, "quantize_int8", lambda *a: calls.append(a[1].shape) or real(*a))
    src, calib = ct_dataset / "images" / "vol0.nii.gz", ct_dataset / "images" / "vol1.nii.gz"
    outputs = []
    for run in range(2):
        wf = _inference_workflow(tmp_path, src, backend="openvino_int8", calibration=[str(calib)])
        wf.initialize()
        wf.run()
        wf.finalize()
        outputs.append((tmp_path / "out" / "vol0_seg.nii.gz").read_bytes())
    assert calls == [(3, 1, 224, 224)]  # vol1's 3 slices, once
    assert outputs[0] == outputs[1]
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".bin", ".onnx", ".xml"]
