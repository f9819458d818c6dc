"""Calibration slices for INT8 inference: real CT volumes prepared exactly as the volumes a run segments.

INT8 quantization (``backend: openvino_int8``, :mod:`bundle.inferers.openvino`) sets each activation's range from
the values the network produces on representative inputs. :class:`CalibrationSlices` reads the CT volumes named by
``calibration`` in ``configs/inference.yaml`` through the run's own preprocessing (orientation, HU window, body crop)
and the inferer's own slice mapping (resize or physical pixel-size grid, [-1, 1]), so the network is calibrated on
what it will be fed. It is called by :class:`bundle.inferers.axial.AxialSliceInferer` only when the backend needs
it, once per run; the quantized model is cached by a hash of the slices, so a later run with the same volumes and
weights reuses it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import numpy as np
import torch

from bundle.errors import InputError
from bundle.io.volume import list_volumes

DEFAULT_MAX_SLICES = 64


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """``min(n, k)`` distinct indices spread evenly over ``range(n)`` (first and last included)."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(int))


class CalibrationSlices:
    """Network-ready slices of real CT volumes, read when an INT8 backend asks for them.

    Args:
        paths: CT volumes (NIfTI/NRRD/MHA files or DICOM series folders), one path or a list.
        transform: the run's volume preprocessing (``configs/inference.yaml`` ``preprocessing``), taking
            ``{"image": path}``.
        max_slices: at most this many slices, evenly spaced over all the volumes' slices (each is one NNCF sample;
            calibration time grows linearly with it).

    Calling it with the inferer returns a (N, C, h, w) float tensor of slices as the network sees them.

    Raises:
        InputError: ``max_slices`` < 1; when called: no volume given, or a volume that cannot be read.
    """

    def __init__(
        self,
        paths: Union[str, Sequence[str], None],
        transform: Callable[[dict], Any],
        max_slices: int = DEFAULT_MAX_SLICES,
    ) -> None:
        if int(max_slices) < 1:
            raise InputError(f"calibration_slices must be ≥ 1, got {max_slices}.")
        self.paths = [paths] if isinstance(paths, str) else list(paths or [])
        self.transform = transform
        self.max_slices = int(max_slices)

    def __len__(self) -> int:
        """The number of volumes named (0: nothing to calibrate on; the inferer refuses an INT8 backend then)."""
        return len(self.paths)

    def __call__(self, inferer: Any) -> torch.Tensor:
        if not self.paths:
            raise InputError("no CT volumes to calibrate on: pass --calibration with CT files or DICOM series folders.")
        items = list_volumes(input=self.paths, overwrite=True)
        volumes = [self.transform(dict(item))["image"] for item in items]  # (C, H, W, D) each, meta kept
        depths = [int(v.shape[-1]) for v in volumes]
        keep = evenly_spaced(sum(depths), self.max_slices)
        slices, start = [], 0
        for volume, depth in zip(volumes, depths):
            local = keep[(keep >= start) & (keep < start + depth)] - start
            if len(local):
                slices.append(inferer.network_inputs(volume[None][..., torch.as_tensor(local)]))
            start += depth
        out = torch.cat(slices)
        return (out.as_tensor() if hasattr(out, "as_tensor") else out).float().contiguous()  # plain tensor, no meta

    def __repr__(self) -> str:
        return f"CalibrationSlices(paths={self.paths!r}, max_slices={self.max_slices})"
