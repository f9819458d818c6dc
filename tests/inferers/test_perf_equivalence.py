"""Every kept inference speed-up (``bundle.inferers.backends``) computes the fp32 eager network's output within tolerance.

Tolerances (logits of magnitude ~5 with random weights):

* fp32 paths (channels_last eager, ONNX Runtime, compile fallback): max |Δ logit| <= 1e-4.
* bf16 / fp16 autocast: relative L2 error <= 2e-2 and argmax agreement (what a mask depends on) >= 99 % on
  pixels where the fp32 top-1/top-2 margin exceeds 0.05 (94 % of pixels with random weights), >= 98 % on all
  pixels (random weights leave many near-ties that trained weights do not).

No timing is asserted here; timings live in ``docs/benchmarks/``.
"""

from __future__ import annotations

import os

import pytest
import torch

from bundle.inferers.backends import EagerInference, cpu_supports_bf16, optimize_for_inference
from bundle.networks import MSA2Net

FP32_ATOL = 1e-4
LOW_PRECISION_REL_L2 = 2e-2  # ||out - ref|| / ||ref||; measured 1.3e-2 for CPU bf16 (paper variant, random weights)
MIN_ARGMAX_AGREEMENT_ALL = 0.98  # all pixels; random weights leave many near-ties (measured 98.9 % for bf16)
MIN_ARGMAX_AGREEMENT = 0.99  # pixels whose fp32 top-1/top-2 logit margin exceeds CONFIDENT_MARGIN (measured 99.98 %)
CONFIDENT_MARGIN = 0.05


def _has_ort() -> bool:
    try:
        import onnxruntime  # noqa: F401

        return True
    except ImportError:
        return False


@pytest.fixture(scope="module")
def net_and_ref():
    torch.manual_seed(0)
    net = MSA2Net(in_channels=1, out_channels=9, variant="paper").eval()
    x = torch.randn(2, 1, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x)
    return net, x, ref


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    # One export per module: later sessions with the same weights hit the cache.
    return tmp_path_factory.mktemp("onnx_cache")


def _fresh_copy(net: MSA2Net) -> MSA2Net:
    copy = MSA2Net(in_channels=1, out_channels=9, variant=net.variant).eval()
    copy.load_state_dict(net.state_dict())
    return copy


def test_eager_channels_last_fp32(net_and_ref):
    net, x, ref = net_and_ref
    out = optimize_for_inference(_fresh_copy(net), backend="eager")(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert (out - ref).abs().max() <= FP32_ATOL


@pytest.mark.skipif(not _has_ort(), reason="onnxruntime not installed")
def test_onnx_fp32_and_batch_is_dynamic(net_and_ref, onnx_cache):
    net, x, ref = net_and_ref
    fast = optimize_for_inference(_fresh_copy(net), backend="onnx", cache_dir=onnx_cache)
    assert type(fast).__name__ == "OnnxInference"
    assert (fast(x) - ref).abs().max() <= FP32_ATOL
    # Exported with batch 2; batch 3 must run through the same file (dynamic batch axis).
    x3 = torch.randn(3, 1, 224, 224)
    with torch.no_grad():
        ref3 = net(x3)
    assert (fast(x3) - ref3).abs().max() <= FP32_ATOL
    # Same weights: the cached export is reused, not written again.
    again = optimize_for_inference(_fresh_copy(net), backend="onnx", cache_dir=onnx_cache)
    assert again.onnx_path == fast.onnx_path and len(list(onnx_cache.glob("*.onnx"))) == 1


@pytest.fixture()
def no_native_bf16(monkeypatch):
    """A CPU without native bf16: ``auto`` is ONNX Runtime there (with it OpenVINO bf16: test_openvino.py)."""
    import bundle.inferers.backends as backends

    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: False)


@pytest.mark.skipif(not _has_ort(), reason="onnxruntime not installed")
def test_auto_is_onnx_on_cpu_fp32_without_native_bf16(net_and_ref, onnx_cache, no_native_bf16):
    net, _, _ = net_and_ref
    assert type(optimize_for_inference(_fresh_copy(net), cache_dir=onnx_cache)).__name__ == "OnnxInference"


def _check_low_precision(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).norm() / ref.norm() <= LOW_PRECISION_REL_L2
    agree = out.argmax(1) == ref.argmax(1)
    top2 = ref.topk(2, dim=1).values
    confident = (top2[:, 0] - top2[:, 1]) > CONFIDENT_MARGIN
    assert agree.float().mean() >= MIN_ARGMAX_AGREEMENT_ALL
    assert agree[confident].float().mean() >= MIN_ARGMAX_AGREEMENT


def test_autocast_wrapper_on_cpu():
    # The autocast code path itself, on a small conv net (cheap on any CPU): fp32 out, close to fp32 eager.
    torch.manual_seed(0)
    small = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(16, 9, 1))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = small(x)
    out = EagerInference(small, dtype=torch.bfloat16)(x)
    assert out.dtype == torch.float32 and (out - ref).norm() / ref.norm() <= LOW_PRECISION_REL_L2


@pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU bf16 is emulated here (no AVX512-BF16/AMX): ~20x slower")
def test_bf16_autocast_cpu(net_and_ref):
    net, x, ref = net_and_ref
    _check_low_precision(EagerInference(_fresh_copy(net), dtype=torch.bfloat16)(x), ref)


def test_compile_falls_back_to_eager(net_and_ref, monkeypatch):
    # Compiling takes minutes on 2 cores, so only the fallback is tested here; the compiled path's
    # equality is recorded by scripts/benchmarks/benchmark.py side_by_side (max_abs_diff_vs_baseline).
    net, x, ref = net_and_ref

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(torch, "compile", broken)
    fast = optimize_for_inference(_fresh_copy(net), backend="compile")
    assert (fast(x) - ref).abs().max() <= FP32_ATOL
    assert fast.failed


def test_bad_arguments(net_and_ref):
    net, _, _ = net_and_ref
    with pytest.raises(ValueError, match="backend"):
        optimize_for_inference(net, backend="tensorrt")
    with pytest.raises(ValueError, match="fp32 on CPU"):
        optimize_for_inference(net, backend="onnx", dtype=torch.bfloat16)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_eager(net_and_ref, dtype):
    net, x, ref = net_and_ref
    out = optimize_for_inference(_fresh_copy(net).cuda(), backend="auto", dtype=dtype)(x.cuda()).cpu()
    if dtype == torch.float32:
        assert (out - ref).abs().max() <= 1e-2  # TF32 convolutions may be on; still far under a logit
    else:
        _check_low_precision(out, ref)


@pytest.mark.skipif(not _has_ort(), reason="onnxruntime not installed")
def test_slice_inferer_backend_auto_matches_eager(net_and_ref, onnx_cache, monkeypatch, no_native_bf16):
    """configs/inference.yaml's ``backend: auto`` (ONNX Runtime on a CPU without native bf16) writes the eager labels."""
    from bundle.inferers.axial import AxialSliceInferer

    monkeypatch.setenv("MSA2NET_ONNX_CACHE", str(onnx_cache))  # same weights as above: the export is reused
    net, _, _ = net_and_ref
    volume = torch.rand(1, 1, 60, 50, 3, generator=torch.Generator().manual_seed(2))
    eager = AxialSliceInferer(sw_batch_size=2)(volume, _fresh_copy(net))
    inferer = AxialSliceInferer(sw_batch_size=2, backend="auto")
    fast = inferer(volume, _fresh_copy(net))
    assert [type(w).__name__ for _, w in inferer._accelerated.values()] == ["OnnxInference"]
    assert fast.shape == eager.shape == (1, 1, 60, 50, 3) and fast.dtype == torch.uint8
    assert len(torch.unique(eager)) > 1 and (fast == eager).float().mean() > 0.999
    with pytest.raises(ValueError, match="backend must be one of"):
        AxialSliceInferer(backend="tensorrt")


def test_onnx_cache_keeps_the_most_recently_used_exports(tmp_path, monkeypatch):
    """One export per set of weights (~300 MB for MSA²Net) grew a temp folder to 2.6 GB: the cache keeps
    MSA2NET_ONNX_CACHE_FILES exports, evicting the least recently used; a hit counts as a use."""
    from conftest import TinySegNet

    from bundle.inferers.backends import OnnxInference

    monkeypatch.setenv("MSA2NET_ONNX_CACHE_FILES", "2")
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(TinySegNet(1, 9).eval())
    first = OnnxInference(nets[0], 1, 32, cache_dir=tmp_path).onnx_path
    second = OnnxInference(nets[1], 1, 32, cache_dir=tmp_path).onnx_path
    os.utime(first, (1, 1))  # first is the older one ...
    os.utime(second, (2, 2))
    assert OnnxInference(nets[0], 1, 32, cache_dir=tmp_path).onnx_path == first  # ... until it is used again
    third = OnnxInference(nets[2], 1, 32, cache_dir=tmp_path).onnx_path
    assert sorted(tmp_path.glob("*.onnx")) == sorted([first, third])  # second: least recently used, evicted
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(OnnxInference(nets[1], 1, 32, cache_dir=tmp_path)(x), nets[1](x), atol=1e-4, rtol=0)
    assert len(list(tmp_path.glob("*.onnx"))) == 2
