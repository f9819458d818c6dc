"""Inference speed-ups for MSA²Net, each measured (``docs/performance.md``) and checked against fp32 eager.

Use :func:`optimize_for_inference` to turn a trained network into a callable for inference::

    net = MSA2Net(in_channels=1, out_channels=9, variant="paper")
    net.load_state_dict(...)
    fast = optimize_for_inference(net, backend="auto")   # CPU: OpenVINO bf16 or ONNX Runtime; CUDA: eager
    logits = fast(torch.randn(4, 1, 224, 224))            # same shape, device and dtype (fp32) as ``net``

Backends:

* ``"eager"``: ``eval()``, ``inference_mode``, channels_last weights, optional autocast (bf16/fp16).
* ``"onnx"`` (CPU, fp32): exported once with the TorchScript-based exporter (``dynamo=False``; the dynamo
  exporter is not needed) and run by ONNX Runtime with all graph optimisations. Measured about 0.5× the
  eager time on 2 CPU cores at max |Δ logit| ≈ 1e-5.
* ``"openvino"``, ``"openvino_bf16"``, ``"openvino_int8"`` (CPU): the same export compiled by OpenVINO in fp32,
  bf16 or INT8 (NNCF, calibrated on real CT slices); :mod:`bundle.inferers.openvino`.
* ``"compile"``: ``torch.compile`` (inductor, frozen weights); falls back to eager if compilation fails.
  On 2 CPU cores it compiled for ~4 min and ran ~0.9× eager, so ``"auto"`` does not pick it on CPU.
* ``"auto"``: :func:`resolve_backend`: on CPU in fp32 ``"openvino_bf16"`` where the CPU has native bf16 and
  OpenVINO is installed (per-organ Dice within 0.005 of fp32 on the demo's scans), else ``"onnx"`` where
  onnxruntime is installed; ``"eager"`` otherwise. A failing OpenVINO or ONNX build under ``"auto"`` falls back
  (warning) to the next; an explicitly named OpenVINO backend raises instead.

Every export (ONNX file, INT8 model) is written once per set of weights into ``$MSA2NET_ONNX_CACHE`` (default
``<tmp>/msa2net_onnx``) under a name holding a hash of the weights (and of the calibration slices), and reused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from bundle.inferers.openvino import (
    OPENVINO_BACKENDS,
    OpenVinoInference,
    check_openvino,
    cpu_has_native_bf16,
    openvino_missing,
)

logger = logging.getLogger(__name__)


BACKENDS = ("auto", "eager", "compile", "onnx", "openvino", "openvino_bf16", "openvino_int8")
# backends that need calibration slices (network-ready real CT slices; bundle.inferers.calibration)
CALIBRATED_BACKENDS = ("openvino_int8",)


def check_backend_available(backend: str) -> None:
    """Raises one :class:`~bundle.errors.InputError` line when ``backend`` cannot run on this machine (its package
    is missing, bf16 without native support), before any volume is read; other backends pass."""
    if backend in OPENVINO_BACKENDS:
        check_openvino(backend)


def resolve_backend(backend: str, device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """The backend ``backend`` stands for on this machine (``provenance.json`` records it).

    ``"auto"`` on CPU in fp32: ``"openvino_bf16"`` where OpenVINO is installed and the CPU computes bf16 natively
    (AVX512-BF16 or AMX: its per-organ Dice stayed within 0.005 of fp32 on the demo's two scans, 0.50× ONNX
    Runtime's time; ``docs/performance.md``), else ``"onnx"`` where onnxruntime is installed, else ``"eager"``;
    on CUDA or in another dtype ``"eager"``. Any other name comes back unchanged.
    """
    if backend != "auto":
        return backend
    if torch.device(device).type != "cpu" or dtype != torch.float32:
        return "eager"
    if not openvino_missing("openvino_bf16") and cpu_has_native_bf16():
        return "openvino_bf16"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        logger.info("onnxruntime not installed; using eager inference.")
        return "eager"
    return "onnx"


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX); without it bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in (" avx512_bf16", " amx_bf16"))


def _autocast_dtype(dtype: Optional[torch.dtype]) -> Optional[torch.dtype]:
    return None if dtype in (None, torch.float32) else dtype


class EagerInference(nn.Module):
    """The network in eval mode under ``inference_mode``, channels_last, optional autocast.

    Args:
        net: the network (put in eval mode here).
        dtype: ``torch.float32`` (plain) or ``torch.bfloat16`` / ``torch.float16`` (autocast on the net's device).
        channels_last: convert the weights and the input to channels_last (helps oneDNN/cuDNN convolutions).
    """

    def __init__(self, net: nn.Module, dtype: torch.dtype = torch.float32, channels_last: bool = True) -> None:
        super().__init__()
        self.net = net.eval()
        self.channels_last = channels_last
        self.dtype = _autocast_dtype(dtype)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.dtype is None:
                return self.net(x)
            with torch.autocast(device_type=x.device.type, dtype=self.dtype):
                return self.net(x).float()


def _weights_key(net: nn.Module, example: torch.Tensor) -> str:
    # Cache key of an exported file: weights, architecture repr, input channels and torch version.
    h = hashlib.sha1()
    h.update(f"{torch.__version__}|{type(net).__name__}|{getattr(net, 'config', '')}|{example.shape[1:]}".encode())
    for name, t in net.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


# Exports kept in the cache (one per set of weights: ~300 MB for MSA²Net `paper`), least recently used evicted first
DEFAULT_CACHE_FILES = 4


def cache_limit() -> int:
    """How many exports the ONNX cache keeps: ``$MSA2NET_ONNX_CACHE_FILES`` (default 4, about 1.2 GB for MSA²Net)."""
    value = os.environ.get("MSA2NET_ONNX_CACHE_FILES", str(DEFAULT_CACHE_FILES))
    try:
        return max(1, int(value))
    except ValueError:
        logger.warning("MSA2NET_ONNX_CACHE_FILES=%r is not a number; keeping %d exports.", value, DEFAULT_CACHE_FILES)
        return DEFAULT_CACHE_FILES


def evict_cache(cache: Union[str, os.PathLike], keep: int, pattern: str = "msa2net_*.onnx") -> list:
    """Deletes all but the ``keep`` most recently used exports in ``cache`` (modification time; a cache hit touches
    its file); returns the deleted paths. Files another process removes meanwhile are skipped."""
    files = []
    for path in Path(cache).glob(pattern):
        try:
            files.append((path.stat().st_mtime, path))
        except OSError:
            continue
    removed = []
    for _, path in sorted(files, reverse=True)[keep:]:
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            continue
    return removed


def export_onnx(net: nn.Module, path: Union[str, os.PathLike], example: torch.Tensor, opset: int = 17) -> Path:
    """Export ``net`` (eval, CPU, fp32) to ONNX with a dynamic batch axis; returns the path.

    The TorchScript-based exporter (``dynamo=False``) is used: it handles the timm MaxViT encoder and the raw
    ``view`` layouts; the graph keeps the batch dimension symbolic.
    """
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on the input-shape checks (constant for a fixed size)
        torch.onnx.export(
            net.eval(),
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    tmp.replace(path)  # atomic: a concurrent reader never sees a half-written file
    return path


def cache_dir_path(cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The export cache: ``cache_dir``, else ``$MSA2NET_ONNX_CACHE``, else ``<tmp>/msa2net_onnx``."""
    return Path(cache_dir or os.environ.get("MSA2NET_ONNX_CACHE", Path(tempfile.gettempdir()) / "msa2net_onnx"))


def cached_onnx(
    net: nn.Module, in_channels: int = 1, img_size: int = 224, cache_dir: Optional[Union[str, os.PathLike]] = None
) -> Path:
    """The fp32 ONNX export of ``net`` (eval, CPU), written once per set of weights into the cache and reused.

    The file is named by :func:`_weights_key` (weights, architecture, input channels, torch version), so changed
    weights never meet a stale export. Every CPU backend built from ONNX (ONNX Runtime, OpenVINO) starts here.
    The :func:`cache_limit` most recently used exports stay; older ones are deleted after each new export.
    """
    net = net.eval().float().cpu()
    example = torch.randn(2, in_channels, img_size, img_size)
    cache = cache_dir_path(cache_dir)
    path = cache / f"msa2net_{_weights_key(net, example)}.onnx"
    if path.is_file():
        os.utime(path)  # most recently used: evicted last
    else:
        logger.info("Exporting the network to ONNX: %s", path)
        export_onnx(net, path, example)
        for old in evict_cache(cache, cache_limit()):
            logger.info("ONNX cache holds %d exports at most: removed %s", cache_limit(), old)
    return path


class OnnxInference(nn.Module):
    """An ONNX Runtime session (CPU) behind a torch-tensor interface.

    Args:
        net: the network; exported to ONNX (or a cached export with the same weights is reused).
        in_channels: input channels of ``net``.
        img_size: slice size the network accepts.
        cache_dir: where exported files are kept (default: ``$MSA2NET_ONNX_CACHE`` or the system temp dir); the
            :func:`cache_limit` most recently used ones stay, older ones are deleted after each new export.
        num_threads: ORT intra-op threads (default ``torch.get_num_threads()``).
    """

    def __init__(
        self,
        net: nn.Module,
        in_channels: int = 1,
        img_size: int = 224,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        num_threads: Optional[int] = None,
    ) -> None:
        super().__init__()
        import onnxruntime as ort

        path = cached_onnx(net, in_channels, img_size, cache_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.onnx_path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise ValueError("The ONNX backend runs on CPU; use backend='eager' for CUDA tensors.")
        array = x.detach().float().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {"image": array})[0])


class CompiledInference(nn.Module):
    """``torch.compile`` (inductor, frozen weights) with a fallback to :class:`EagerInference` on failure.

    Args:
        net: the network.
        dtype: as :class:`EagerInference`.
    """

    def __init__(self, net: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.eager = EagerInference(net, dtype=dtype, channels_last=True)
        self.compiled = None
        self.failed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.failed:
            try:
                if self.compiled is None:
                    import torch._inductor.config as inductor_config

                    inductor_config.freezing = True  # fold weights/BN as constants: inference only
                    self.compiled = torch.compile(self.eager)
                return self.compiled(x)
            except Exception as err:  # compiler missing, unsupported op, ...: stay correct, just slower
                logger.warning("torch.compile failed (%s); falling back to eager.", err)
                self.failed = True
        return self.eager(x)


def optimize_for_inference(
    net: nn.Module,
    backend: str = "auto",
    dtype: torch.dtype = torch.float32,
    in_channels: Optional[int] = None,
    img_size: Optional[int] = None,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    num_threads: Optional[int] = None,
    calibration: Optional[torch.Tensor] = None,
) -> nn.Module:
    """Return a callable ``x (B, C, H, W) -> fp32 logits`` computing ``net(x)`` faster, for inference only.

    Args:
        net: an MSA²Net (or any module taking one image batch); it is put in eval mode and may be modified
            in place (channels_last weights).
        backend: one of :data:`BACKENDS` (see the module docstring).
        dtype: compute dtype. ``torch.float32``, or ``torch.bfloat16`` / ``torch.float16`` autocast (eager and
            compile). On a CPU without native bf16 (no AVX512-BF16/AMX) bf16 is much slower (a warning is
            logged); the dtype you pass is never changed.
        in_channels: input channels for the ONNX export (default ``net.in_channels`` or 1).
        img_size: slice size for the ONNX export (default ``net.img_size`` or 224).
        cache_dir: ONNX export cache directory.
        num_threads: ONNX Runtime / OpenVINO threads (default ``torch.get_num_threads()``).
        calibration: (N, C, H, W) network-ready real CT slices for the INT8 backend (``"openvino_int8"``).

    Returns:
        A module whose outputs equal ``net``'s within the tolerances checked in ``tests/inferers/test_perf_equivalence.py``.

    Raises:
        ValueError: on an unknown backend or the ONNX/OpenVINO backends with a non-fp32 dtype or a CUDA network.
        InputError: an OpenVINO backend whose package is missing, bf16 on a CPU without it, INT8 without calibration.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    device = next(net.parameters()).device
    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_supports_bf16():
        # Measured on AVX2-only EPYC: CPU bf16 autocast ~20x slower than fp32 (emulated bf16 kernels).
        logger.warning("This CPU has no native bf16 (AVX512-BF16/AMX); bf16 inference will be much slower than fp32.")
    auto = backend == "auto"
    backend = resolve_backend(backend, device, dtype)
    if backend in OPENVINO_BACKENDS:
        if dtype != torch.float32 or device.type != "cpu":
            raise ValueError(f"backend={backend!r} takes an fp32 CPU network (its precision is in its name).")
        check_openvino(backend)  # one InputError line: never a silent fallback to another precision
        in_channels = in_channels or getattr(net, "in_channels", 1)
        img_size = img_size or getattr(net, "img_size", 224)
        try:
            onnx_path = cached_onnx(net, in_channels, img_size, cache_dir)
            fast = OpenVinoInference(onnx_path, OPENVINO_BACKENDS[backend], calibration, num_threads=num_threads)
            for old in evict_cache(onnx_path.parent, cache_limit(), "msa2net_*_int8_*.xml"):  # INT8 models alike
                old.with_suffix(".bin").unlink(missing_ok=True)
            return fast
        except Exception as err:
            if not auto:
                raise
            logger.warning("OpenVINO backend unavailable (%s); using ONNX Runtime.", err)  # auto: still correct
            backend = "onnx"
    if backend == "onnx":
        if dtype != torch.float32 or device.type != "cpu":
            raise ValueError("backend='onnx' supports fp32 on CPU only.")
        in_channels = in_channels or getattr(net, "in_channels", 1)
        img_size = img_size or getattr(net, "img_size", 224)
        try:
            return OnnxInference(net, in_channels, img_size, cache_dir=cache_dir, num_threads=num_threads)
        except Exception as err:  # export or session failure: correct but slower
            logger.warning("ONNX backend unavailable (%s); using eager inference.", err)
            backend = "eager"
    if backend == "compile":
        return CompiledInference(net, dtype=dtype)
    return EagerInference(net, dtype=dtype)
