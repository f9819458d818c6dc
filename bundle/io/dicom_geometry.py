"""Where the slices of a DICOM series lie: ImagePositionPatient projected on the slice normal (the cross product of
the ImageOrientationPatient row and column directions), never instance numbers or the first two slices.

:func:`slice_geometry` tells a complete evenly spaced series from one with missing slices (gaps that are whole
multiples of the step: every slice still sits on one grid), irregular spacing, or gantry tilt (the last two fit no
single voxel grid). What each kind gets in each output is ``docs/clinical.md`` §2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np


@dataclass
class SliceGeometry:
    """Where the slices of a series lie, in the order of its (sorted) files.

    Attributes:
        kind: ``regular`` (complete, evenly spaced), ``missing`` (gaps that are whole multiples of the step),
            ``irregular`` (no even step fits) or ``tilted`` (gantry tilt: slices shifted in-plane as they advance).
        grid_index: each file's slice index on the voxel grid (``0..n_grid-1``; with missing slices some indices
            hold no file).
        step: the slice step vector (LPS mm) of the voxel grid (for ``irregular``: the mean step, nominal only).
        defect: one line naming the defect (``None`` for ``regular``).
    """

    kind: str
    grid_index: np.ndarray
    step: np.ndarray
    defect: Optional[str] = None

    @property
    def n_grid(self) -> int:
        return int(self.grid_index[-1]) + 1

    @property
    def missing(self) -> List[int]:
        """Grid slices that no file fills."""
        return sorted(set(range(self.n_grid)) - set(int(i) for i in self.grid_index))

    @property
    def exact_on_grid(self) -> bool:
        """True when one affine places every slice where it was scanned (``regular`` or ``missing``)."""
        return self.kind in ("regular", "missing")


def axis_name(normal: np.ndarray) -> str:
    return "z" if abs(normal[2]) > 0.99 else "position along the slice normal"


def slice_geometry(positions: np.ndarray, normal: np.ndarray, label: str = "series") -> SliceGeometry:
    """Classifies sorted slice positions (LPS mm, (n, 3), ascending along ``normal``, n ≥ 2).

    A step is accepted when every gap is a whole multiple of it within 5 % of the step (at least 0.01 mm), so a
    slice is never placed more than that from where it was scanned.
    """
    offsets = positions @ normal
    gaps = np.diff(offsets)
    base = float(np.median(gaps))
    tol = max(0.01, 0.05 * base)
    multiples = np.maximum(np.rint(gaps / base), 1)
    fits = np.abs(gaps - multiples * base) <= tol
    grid = np.concatenate([[0], np.cumsum(multiples)]).astype(np.int64)
    total = positions[-1] - positions[0]
    where = axis_name(normal)
    if not fits.all():
        odd = [i for i in range(len(gaps)) if not fits[i]]
        shown = "; ".join(f"gap of {gaps[i]:.2f} mm after {where} = {offsets[i]:.2f} mm" for i in odd[:3])
        more = f" (and {len(odd) - 3} more)" if len(odd) > 3 else ""
        return SliceGeometry(
            "irregular",
            np.arange(len(offsets)),
            total / (len(offsets) - 1),
            f"{label}: slice spacing varies: {shown}{more}; {base:.2f} mm elsewhere",
        )
    step = total / grid[-1]
    along = float(total @ normal)
    inplane = float(np.linalg.norm(total - along * normal))
    tilt = float(np.degrees(np.arctan2(inplane, abs(along))))
    if inplane > 0.05 and tilt > 0.05:
        return SliceGeometry(
            "tilted",
            grid,
            step,
            f"{label}: gantry tilt of {tilt:.1f}° (slices shifted {inplane / grid[-1]:.2f} mm in-plane per slice)",
        )
    off_line = np.linalg.norm(positions - (positions[0] + grid[:, None] * step), axis=1)
    if off_line.max() > tol:
        k = int(off_line.argmax())
        return SliceGeometry(
            "irregular",
            np.arange(len(offsets)),
            total / (len(offsets) - 1),
            f"{label}: slice positions are not on one line (slice {k} is {off_line[k]:.2f} mm off it)",
        )
    if grid[-1] == len(offsets) - 1:
        return SliceGeometry("regular", grid, step)
    holes = [i for i in range(len(gaps)) if multiples[i] > 1]
    n_missing = int(grid[-1] - (len(offsets) - 1))
    shown = "; ".join(f"gap of {gaps[i]:.2f} mm after {where} = {offsets[i]:.2f} mm" for i in holes[:3])
    return SliceGeometry(
        "missing",
        grid,
        step,
        f"{label}: {n_missing} slice{'s' if n_missing > 1 else ''} missing ({shown}; {base:.2f} mm elsewhere)",
    )
