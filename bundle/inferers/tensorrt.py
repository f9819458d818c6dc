"""TensorRT inference for ``configs/inference_trt.yaml``: MONAI's ``trt_compile`` on each network, checked first.

The overlay wraps the network (or each ensemble member) with :func:`monai.networks.trt_compile`, the mechanism of the
model zoo's ``vista2d`` and ``vista3d`` bundles, rather than a torch-tensorrt TorchScript file loaded in place of the
network (``spleen_ct_segmentation``'s ``model_trt.ts``), because it fits :class:`bundle.inferers.axial.AxialSliceInferer`:

* the engine is built at the first forward call, after ``CheckedCheckpointLoader`` has loaded and checked the
  weights: no export step, the checkpoint's geometry still applies, and checkpoint ensembles compile each member;
* it is built from the ONNX graph of the TorchScript-based exporter (``dynamo=False``, opset 17), the export that
  :mod:`bundle.inferers.backends`' ONNX backend already proves equal to eager; the CPU tests check that graph here too;
* one engine serves every chunk: the batch is dynamic in [1, slices per chunk]; the inferer only ever calls the
  network on (N, 1, 224, 224) slices, with or without flip TTA, in both resampling modes and at any pixel size;
* the engine is saved beside the checkpoint under a name holding the checkpoint's content hash, the precision, the
  batch and the builder level, so a changed checkpoint never meets a stale engine and later runs start in seconds.

Precision (``trt_precision``): ``fp32``, ``tf32`` (default: fp32 storage, TF32 tensor-core matmuls and convolutions),
``fp16`` and ``bf16``. TensorRT 11, which ``torch-tensorrt==2.14.0`` (the release built for torch 2.14) installs,
builds strongly typed networks only: its Python bindings no longer define the ``FP16`` and
``OBEY_PRECISION_CONSTRAINTS`` builder flags that ``trt_compile`` sets for fp16, so fp16/bf16 are refused there with
a one-line message and need TensorRT 10.

Where CUDA, ``tensorrt``, ``polygraphy`` or ``cuda-python`` is missing, :func:`check_tensorrt` raises one
:class:`~bundle.errors.InputError` line saying what is missing and how to install it; ``trt_compile`` itself
would only log a warning and run PyTorch under a config that promises TensorRT.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from bundle.errors import InputError
from bundle.io.atomic import check_writable_dir
from bundle.io.checkpoint import require_checkpoint

__all__ = [
    "TRT_PRECISIONS",
    "check_tensorrt",
    "plan_base",
    "tensorrt_missing",
    "trt_compile_args",
    "trt_network",
    "trt_networks",
]

logger = logging.getLogger(__name__)

TRT_PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
INSTALL_HINT = "pip install torch-tensorrt==2.14.0 polygraphy"  # brings tensorrt-cu13 11.1, built for torch 2.14
ONNX_OPSET = 17  # as bundle.inferers.backends.export_onnx: the export proven equal to eager


def _version(module: str) -> Optional[str]:
    """The module's version string, or ``None`` when it cannot be imported (absent, or a broken CUDA install)."""
    try:
        mod = importlib.import_module(module)
    except Exception:  # ImportError, or OSError for a wheel whose shared libraries are missing
        return None
    return str(getattr(mod, "__version__", "unknown"))


def _major(version: Optional[str]) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def tensorrt_missing(device: Union[str, torch.device]) -> List[str]:
    """What TensorRT inference on ``device`` lacks on this machine, in words (empty: nothing)."""
    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch sees none)")
    elif torch.device(device).type != "cuda":
        missing.append(f"a CUDA device (the config's device is {device})")
    if _version("tensorrt") is None:
        missing.append("the tensorrt package")
    if _version("polygraphy") is None:
        missing.append("the polygraphy package")
    if _version("cuda.bindings.runtime") is None and _version("cuda.cudart") is None:
        missing.append("cuda-python (cuda.bindings)")
    return missing


def check_tensorrt(device: Union[str, torch.device], precision: str) -> str:
    """Refuses, in one line, a TensorRT run this machine cannot do; returns the tensorrt version.

    Raises:
        InputError: unknown precision; CUDA, tensorrt, polygraphy or cuda-python missing; fp16/bf16 on TensorRT 11+.
    """
    if precision not in TRT_PRECISIONS:
        raise InputError(
            f"trt_precision {precision!r} is not one of {', '.join(TRT_PRECISIONS)}: pass --trt_precision tf32 "
            "(the default) or another of them."
        )
    missing = tensorrt_missing(device)
    if missing:
        listing = ", ".join(missing[:-1]) + " and " + missing[-1] if len(missing) > 1 else missing[0]
        raise InputError(
            f"TensorRT inference (configs/inference_trt.yaml) needs {listing}, not found here: on a CUDA machine run "
            f"`{INSTALL_HINT}`, or drop configs/inference_trt.yaml from --config_file to run without TensorRT."
        )
    version = str(_version("tensorrt"))
    if _major(version) >= 11 and precision in ("fp16", "bf16"):
        raise InputError(
            f"--trt_precision {precision} needs TensorRT 10: TensorRT {version} builds strongly typed networks only, "
            f"which trt_compile's {precision} mode cannot request; pass --trt_precision tf32 (or fp32), or use an "
            "environment with TensorRT 10.x."
        )
    return version


def trt_compile_args(precision: str, max_batch: int, trt_version: str, opt_level: int = 3) -> Dict[str, Any]:
    """The ``args`` of :func:`monai.networks.trt_compile` for MSA²Net slices (a fresh dict per call).

    Args:
        precision: one of :data:`TRT_PRECISIONS`.
        max_batch: the most slices per forward call (the chunk size); also the profile's optimum.
        trt_version: the installed TensorRT version (precision constraints exist before 11 only).
        opt_level: TensorRT's ``builder_optimization_level`` (0-5; 3 is TensorRT's default, MONAI's is 5: a longer
            build for a possibly faster engine).
    """
    build: Dict[str, Any] = {"builder_optimization_level": int(opt_level)}
    if _major(trt_version) < 11:
        build["precision_constraints"] = "obey"  # MONAI's default; TensorRT 11 has no such flag (always strongly typed)
    return {
        "method": "onnx",
        "precision": precision,
        "dynamic_batchsize": [1, int(max_batch), int(max_batch)],
        # the TorchScript-based exporter handles timm's MaxViT; torch 2.9+ defaults to the dynamo exporter
        "export_args": {"dynamo": False, "opset_version": ONNX_OPSET},
        "build_args": build,
        "fallback": False,  # a failed build is an error, never a silent PyTorch run under a TensorRT config
    }


def _digest(path: str, chunk: int = 1 << 24) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()[:16]


def plan_base(
    ckpt_path: str, precision: str, max_batch: int, opt_level: int = 3, cache_dir: Optional[str] = None
) -> str:
    """Where the engine for ``ckpt_path`` goes (``trt_compile`` appends ``.plan``): beside it, or in ``cache_dir``.

    The name holds the checkpoint's content hash (sha1, 16 hex), the precision, the batch and the builder level.

    Raises:
        InputError: the checkpoint does not exist, or the folder is not writable.
    """
    require_checkpoint(ckpt_path)  # the engine is built from its weights
    folder = check_writable_dir(cache_dir or os.path.dirname(os.path.abspath(ckpt_path)), "trt_cache_dir")
    name = f"{os.path.basename(ckpt_path)}.{_digest(ckpt_path)}.trt_{precision}_b{int(max_batch)}_o{int(opt_level)}"
    return os.path.join(folder, name)


def trt_network(
    network: torch.nn.Module,
    ckpt_path: str,
    device: Union[str, torch.device],
    precision: str = "tf32",
    max_batch: int = 16,
    opt_level: int = 3,
    cache_dir: Optional[str] = None,
    enabled: bool = True,
) -> torch.nn.Module:
    """``network`` with its forward replaced by a TensorRT engine for the weights in ``ckpt_path``.

    The engine is loaded, or exported and built, at the first forward call (load the weights before it: the
    inference config's ``CheckedCheckpointLoader`` does). A build or run failure raises; nothing falls back to
    PyTorch silently.

    Args:
        network: the network on ``device`` (its weights may still be random here).
        ckpt_path: the checkpoint whose weights the network will hold; names (and invalidates) the engine.
        device: the config's device; must be CUDA.
        precision: ``fp32``, ``tf32``, ``fp16`` or ``bf16`` (fp16/bf16 need TensorRT < 11).
        max_batch: the most slices per call (``sw_batch_size`` times the loader's batch size).
        opt_level: TensorRT builder optimisation level (0-5).
        cache_dir: folder for engines (default: the checkpoint's folder).
        enabled: ``False`` returns ``network`` unchanged (an ensemble run compiles its members instead).

    Raises:
        InputError: see :func:`check_tensorrt` and :func:`plan_base`.
    """
    if not enabled:
        return network
    version = check_tensorrt(device, precision)
    base = plan_base(ckpt_path, precision, max_batch, opt_level, cache_dir)
    from monai.networks import trt_compile  # optional dependencies (polygraphy, tensorrt) are resolved inside

    logger.info("TensorRT %s engine for %s: %s.plan (%s, batch 1-%d)", version, ckpt_path, base, precision, max_batch)
    return trt_compile(network, base, args=trt_compile_args(precision, max_batch, version, opt_level))


def trt_networks(
    networks: Optional[Sequence[torch.nn.Module]], ckpt_paths: Union[str, Sequence[str], None], **kwargs: Any
) -> List[torch.nn.Module]:
    """:func:`trt_network` for each ensemble member (``bundle.inferers.ensemble.load_checkpoints`` order); ``[]`` stays ``[]``.

    Args:
        networks: the loaded members.
        ckpt_paths: their checkpoints, in the same order.
        kwargs: as :func:`trt_network` (``device``, ``precision``, ``max_batch``, ``opt_level``, ``cache_dir``).
    """
    paths = [ckpt_paths] if isinstance(ckpt_paths, str) else list(ckpt_paths or [])
    members = list(networks or [])
    if len(members) != len(paths):
        raise ValueError(f"{len(members)} ensemble networks but {len(paths)} checkpoints: pass one per member.")
    return [trt_network(net, path, **kwargs) for net, path in zip(members, paths)]
