"""OpenVINO inference on CPU: fp32, bf16 and INT8 (NNCF post-training quantization), built once per set of weights.

Three backends of :func:`bundle.inferers.backends.optimize_for_inference` (and ``backend`` in
``configs/inference.yaml``), measured in ``docs/performance.md``:

* ``"openvino"``: the fp32 ONNX export (:func:`bundle.inferers.backends.cached_onnx`) compiled by OpenVINO's CPU
  plugin with ``INFERENCE_PRECISION_HINT=f32`` (OpenVINO would otherwise compute in bf16 on CPUs that have it).
  Same logits as eager within 1e-4.
* ``"openvino_bf16"``: the same graph with ``INFERENCE_PRECISION_HINT=bf16`` (matmuls and convolutions in bf16 with
  fp32 accumulation, normalisations and softmax in fp32 inside the plugin). Refused on CPUs without native bf16
  (AVX512-BF16 or AMX), where it would not be faster.
* ``"openvino_int8"``: weights and activations of convolutions and linear layers in INT8 (VNNI), quantized by
  NNCF from the fp32 graph with statistics of **real CT slices** (``calibration``: network-ready slices, see
  :class:`bundle.inferers.calibration.CalibrationSlices`); the operations that :data:`INT8_IGNORED` names stay in
  fp32 (see there). The quantized model is saved as OpenVINO IR in the export cache under a name that holds the
  weights' key and a hash of the calibration slices and the recipe: calibration runs once per (weights, slices).

Where ``openvino`` (or ``nncf`` for INT8) is not installed, :func:`check_openvino` raises one
:class:`~bundle.errors.InputError` line naming the extra to install.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from bundle.errors import InputError

logger = logging.getLogger(__name__)

# backend name -> precision
OPENVINO_BACKENDS = {"openvino": "fp32", "openvino_bf16": "bf16", "openvino_int8": "int8"}
INSTALL_HINT = "pip install 'msa2net-bundle[openvino]' (openvino==2026.4.1 nncf==3.4.0)"

# NNCF recipe of ``openvino_int8`` (docs/performance.md, "INT8"): the transformer preset (activations asymmetric,
# SmoothQuant on linear layers, softmax / LayerNorm / GELU never quantized) over the whole graph, except the MaxViT
# encoder's squeeze-excitation convolutions (ONNX node names of bundle.networks.MSA2Net): on 1×1 pooled features,
# negligible time; kept fp32 after a comparison of recipes on the demo's DICOM series whose record was not kept
# (`benchmark.py int8_recipes` reruns it).
INT8_IGNORED = (r"^/encoder/.*/conv/se/.*",)
INT8_RECIPE_VERSION = "1"  # part of the cache key: bump when the recipe changes


def _version(module: str) -> Optional[str]:
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:  # ImportError, or a broken install whose shared libraries fail to load
        return None


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when OpenVINO's CPU plugin reports native bf16 (AVX512-BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_missing(backend: str) -> List[str]:
    """The packages ``backend`` needs that cannot be imported here (empty: none)."""
    needed = ["openvino"] + (["nncf"] if OPENVINO_BACKENDS.get(backend) == "int8" else [])
    return [name for name in needed if _version(name) is None]


def check_openvino(backend: str) -> None:
    """Raises one :class:`InputError` line when ``backend`` cannot run here (package missing, no native bf16)."""
    missing = openvino_missing(backend)
    if missing:
        raise InputError(
            f"backend {backend!r} needs {' and '.join(missing)}, not installed: {INSTALL_HINT}; "
            "or use backend auto (ONNX Runtime)."
        )
    if OPENVINO_BACKENDS[backend] == "bf16" and not cpu_has_native_bf16():
        raise InputError(
            f"backend {backend!r} needs a CPU with native bf16 (AVX512-BF16 or AMX), which this one lacks: "
            "use backend openvino (fp32) or openvino_int8."
        )


def _calibration_key(calibration: torch.Tensor) -> str:
    h = hashlib.sha1()
    h.update(f"{INT8_RECIPE_VERSION}|{INT8_IGNORED}|{_version('nncf')}|{_version('openvino')}".encode())
    h.update(str(tuple(calibration.shape)).encode())
    h.update(calibration.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def quantize_int8(
    onnx_path: Union[str, os.PathLike],
    calibration: torch.Tensor,
    dest: Union[str, os.PathLike],
    ignored: Sequence[str] = INT8_IGNORED,
) -> Path:
    """INT8 OpenVINO IR of the fp32 ONNX file by NNCF post-training quantization; returns ``dest`` (``.xml``).

    Args:
        onnx_path: the fp32 export (:func:`bundle.inferers.backends.cached_onnx`).
        calibration: (N, C, H, W) network-ready slices (as the inferer feeds the network), one per NNCF sample.
        dest: the ``.xml`` path; its ``.bin`` is written beside it. Both appear atomically (the ``.xml`` last).
        ignored: regular expressions of ONNX node names left in fp32 (the backend uses :data:`INT8_IGNORED`; the
            INT8 recipe benchmark passes others).
    """
    import nncf
    import openvino as ov

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    samples = [s[None].detach().float().cpu().numpy() for s in calibration]
    model = ov.Core().read_model(str(onnx_path))
    quantized = nncf.quantize(
        model,
        nncf.Dataset(samples),
        subset_size=len(samples),
        model_type=nncf.ModelType.TRANSFORMER,
        ignored_scope=nncf.IgnoredScope(patterns=list(ignored), validate=False) if ignored else None,
    )
    tmp = dest.with_name(f"{dest.stem}.{os.getpid()}.tmp.xml")
    ov.save_model(quantized, str(tmp), compress_to_fp16=False)
    tmp.with_suffix(".bin").replace(dest.with_suffix(".bin"))
    tmp.replace(dest)  # a reader that sees the .xml finds its .bin
    return dest


class OpenVinoInference(nn.Module):
    """An OpenVINO CPU model behind a torch-tensor interface (fp32 logits out, any batch size).

    Args:
        onnx_path: the fp32 ONNX export of the network (dynamic batch).
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"`` (see the module docstring).
        calibration: (N, C, H, W) network-ready slices; required for ``"int8"`` (ignored otherwise).
        num_threads: CPU threads (default ``torch.get_num_threads()``).
    """

    def __init__(
        self,
        onnx_path: Union[str, os.PathLike],
        precision: str = "fp32",
        calibration: Optional[torch.Tensor] = None,
        num_threads: Optional[int] = None,
    ) -> None:
        super().__init__()
        import openvino as ov

        if precision not in ("fp32", "bf16", "int8"):
            raise ValueError(f"precision must be fp32, bf16 or int8, got {precision!r}.")
        onnx_path = Path(onnx_path)
        path = onnx_path
        if precision == "int8":
            if calibration is None or len(calibration) == 0:
                raise InputError(
                    "backend 'openvino_int8' needs real CT slices to calibrate on: pass --calibration with CT volumes "
                    "(files or DICOM folders; e.g. the demo's demo_data/imagesTr/demo_train.nii.gz)."
                )
            path = onnx_path.with_name(f"{onnx_path.stem}_int8_{_calibration_key(calibration)}.xml")
            if path.is_file():
                os.utime(path)  # most recently used: evicted last (bundle.inferers.backends.evict_cache)
            else:
                logger.info("Quantizing the network to INT8 on %d calibration slices: %s", len(calibration), path)
                quantize_int8(onnx_path, calibration, path)
        self.core = ov.Core()
        self.model_path = path
        self.precision = precision
        self.config: Dict[str, object] = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": int(num_threads or torch.get_num_threads()),
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = self.core.compile_model(self.core.read_model(str(path)), "CPU", self.config)
        self.request = self.compiled.create_infer_request()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise ValueError("The OpenVINO backends run on CPU; use backend='eager' for CUDA tensors.")
        array = np.ascontiguousarray(x.detach().float().numpy())
        out = self.request.infer({0: array}, share_outputs=False)
        return torch.from_numpy(np.asarray(out[0]))
