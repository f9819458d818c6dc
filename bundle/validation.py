"""Input checks: bad data, checkpoints and command lines fail with a message that names the file and the fix.

Every check raises :class:`InputError` (a ``ValueError``) with one line: *what* is wrong, *which file*, and *how
to fix it*. MONAI wraps errors raised inside transforms and config components in ``RuntimeError``\\ s ("applying
transform …", "Failed to instantiate …"); :func:`prepare_run` (first item of each config's ``run``) installs
an exception hook that prints only the :class:`InputError` line for such chains (``MSA2NET_TRACEBACK=1`` shows
the full traceback). The catalogue of messages is ``docs/operations.md``.

Wiring (``_target_: bundle.validation…`` in ``configs/*.yaml``):

* config time: :func:`load_datalist` (datalist file, section, keys, every listed file exists),
  :func:`check_writable_dir` (output folders), :func:`prepare_run` (typos in ``--id`` overrides, clean errors);
* per case: :class:`LoadVolumed` (unreadable / truncated files) and :class:`ValidateVolumed` (dimensionality,
  channels, label grid and values, NaN/inf, spacing), both inside :func:`bundle.transforms.ct_volume_transforms`;
* checkpoints: :class:`CheckedCheckpointLoader` (``weights_only=True``, network/variant/class count).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import sys
import tempfile
import warnings
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.handlers import CheckpointLoader
from monai.transforms import LoadImaged, MapTransform

__all__ = [
    "InputError",
    "load_datalist",
    "check_writable_dir",
    "LoadVolumed",
    "ValidateVolumed",
    "check_affine",
    "read_checkpoint",
    "check_checkpoint",
    "CheckedCheckpointLoader",
    "root_input_error",
    "install_error_hook",
    "check_cli_overrides",
    "prepare_run",
]

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """Bad user input (data, checkpoint, command line). The message names the file and the fix."""


# ----------------------------------------------------------------------------------------------- datalists
def load_datalist(
    datalist: str,
    section: str = "training",
    base_dir: Optional[str] = None,
    keys: Sequence[str] = ("image", "label"),
    allow_empty: bool = False,
) -> List[Dict[str, Any]]:
    """Reads a decathlon datalist section and checks it before any volume is loaded.

    Args:
        datalist: the JSON file.
        section: ``training`` / ``validation`` / ``test``.
        base_dir: base of relative paths (default: the datalist's folder).
        keys: keys every item must have (``image`` and, for training/evaluation, ``label``).
        allow_empty: accept an empty section (returns ``[]``).

    Returns:
        The items with absolute paths, as ``monai.data.load_decathlon_datalist`` returns them.

    Raises:
        InputError: the file is missing or not JSON, the section is absent/empty/not a list, an item lacks a key,
            or a listed file does not exist.
    """
    datalist = str(datalist)
    if not os.path.isfile(datalist):
        raise InputError(
            f"datalist {datalist} does not exist: give an existing decathlon JSON with --datalist, or set "
            "--dataset_dir to the folder holding dataset.json (scripts/prepare_synapse.py writes one)."
        )
    try:
        with open(datalist) as f:
            content = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"datalist {datalist} is not valid JSON ({err}): fix the file or regenerate it.") from None
    if not isinstance(content, dict):
        raise InputError(f"datalist {datalist} must be a JSON object with {section!r} etc. lists, not a list/value.")
    if section not in content:
        raise InputError(
            f"datalist {datalist} has no {section!r} section (found {sorted(content)}): add it, or choose another "
            "section (evaluate: --eval_section, inference: --data_list_key)."
        )
    items = content[section]
    if not isinstance(items, list):
        raise InputError(f"datalist {datalist}: section {section!r} must be a list of {{'image': …}} items.")
    if not items and not allow_empty:
        raise InputError(f"datalist {datalist}: section {section!r} is empty: list at least one case in it.")
    root = str(base_dir) if base_dir else os.path.dirname(os.path.abspath(datalist))
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str) and list(keys) == ["image"]:
            item = {"image": item}
        if not isinstance(item, dict):
            raise InputError(
                f"datalist {datalist}: {section}[{i}] is {item!r}; each item must be a dict {dict.fromkeys(keys, '…')}."
            )
        missing = [k for k in keys if k not in item]
        if missing:
            hint = difflib.get_close_matches(missing[0], list(item), n=1)
            raise InputError(
                f"datalist {datalist}: {section}[{i}] has keys {sorted(item)} but needs {list(keys)} "
                f"(missing {missing}{'; rename ' + repr(hint[0]) + ' to ' + repr(missing[0]) if hint else ''})."
            )
        entry = dict(item)
        for k in keys:
            path = str(entry[k])
            path = path if os.path.isabs(path) else os.path.join(root, path)
            if not os.path.exists(path):
                raise InputError(
                    f"datalist {datalist}: {section}[{i}][{k!r}] = {item[k]!r} does not exist (looked for {path}): "
                    "fix the path or remove the case; relative paths are resolved against --dataset_dir."
                )
            entry[k] = path
        out.append(entry)
    return out


def check_writable_dir(path: str, what: str = "output_dir") -> str:
    """Creates ``path`` if needed and proves that a file can be written and renamed in it.

    Raises:
        InputError: the folder cannot be created or written (read-only mount, permissions, a file in the way).
    """
    path = str(path)
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test_", dir=path)
        os.close(fd)
        os.replace(probe, probe + ".done")  # outputs are renamed into place: check that works too
        os.remove(probe + ".done")
    except OSError as err:
        raise InputError(
            f"{what} {path} is not writable ({err.strerror or err}): choose another folder with --{what} "
            "or fix its permissions."
        ) from None
    return path


# ----------------------------------------------------------------------------------------------- volumes
def _name(data: Mapping, key: Hashable) -> str:
    value = data.get(key)
    meta = getattr(value, "meta", None)
    if isinstance(meta, Mapping) and meta.get("filename_or_obj"):
        return str(meta["filename_or_obj"])
    return str(value)


class LoadVolumed(LoadImaged):
    """``LoadImaged`` whose read failures (missing, truncated, corrupt, unknown format) become :class:`InputError`."""

    def __call__(self, data, reader=None):
        try:
            return super().__call__(data, reader)
        except Exception as err:
            key, path, cause = self.keys[0], data.get(self.keys[0], "?"), err
            for k in self.key_iterator(dict(data)):  # name the file that fails, not the first key
                if isinstance(data[k], str) and not os.path.exists(data[k]):
                    key, path, cause = k, data[k], None
                    break
                try:
                    self._loader(data[k], reader)
                except Exception as one:
                    key, path, cause = k, data[k], one
                    break
            if cause is None:
                raise InputError(f"{key} {path} does not exist: fix the path in the datalist or --input.") from None
            raise InputError(
                f"{key} {path} cannot be read ({type(cause).__name__}: {_root_message(cause)}): the file is truncated, "
                "corrupt or not an image; re-export or re-copy it."
            ) from err


def _root_message(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(0))


def slice_axis(affine: np.ndarray) -> int:
    """Array axis (0..2) closest to the patient's superior–inferior direction, i.e. the axial slice axis."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    axes = [i for i in range(3) if ornt[i, 0] == 2]
    return axes[0] if axes else 2


def check_affine(affine: Any, name: str) -> np.ndarray:
    """The 4×4 voxel-to-world matrix of file ``name``, refused when it cannot place voxels in the patient.

    Raises:
        InputError: non-finite entries, a zero-length voxel axis, or a singular (flat) matrix.
    """
    aff = np.asarray(affine, dtype=np.float64)
    fix = "repair the header (e.g. re-export from the DICOM, or copy a correct affine with nibabel) and run again"
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        raise InputError(f"image {name} has a NaN/inf or malformed voxel-to-world matrix (affine): {fix}.")
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    if (spacing < 1e-6).any():
        raise InputError(f"image {name} has zero voxel spacing {np.round(spacing, 4).tolist()} in its affine: {fix}.")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-6 * float(np.prod(spacing)):
        raise InputError(f"image {name} has a singular affine (its voxel axes are not independent): {fix}.")
    return aff


class ValidateVolumed(MapTransform):
    """Per-case checks after loading (before ``EnsureChannelFirstd``); raises :class:`InputError` naming the file.

    Checks: the image is one 3D single-channel volume (not a 2D image, 4D series, multi-channel or RGB image);
    in-plane size ≥ ``min_size``; the label has the image's shape and affine, integer values in
    ``0..num_classes-1``; non-finite intensities (NaN → the volume's finite minimum, ±inf → finite max/min, with a
    warning; an error when more than ``max_nonfinite_fraction`` of the voxels are non-finite); warnings for very
    anisotropic spacing and for uint8 images (not HU).

    Args:
        keys: image key, then an optional label key.
        num_classes: label values must lie in ``0..num_classes-1`` (``None``: not checked).
        max_nonfinite_fraction: above this fraction of NaN/inf voxels the case is refused.
        min_size: smallest in-plane size accepted.
        max_inplane_ratio: warn when the two in-plane spacings differ more than this factor.
        max_slice_ratio: warn when slice spacing / in-plane spacing exceeds this.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        num_classes: Optional[int] = 9,
        max_nonfinite_fraction: float = 0.5,
        min_size: int = 8,
        max_inplane_ratio: float = 2.0,
        max_slice_ratio: float = 10.0,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.num_classes = num_classes
        self.max_nonfinite_fraction = float(max_nonfinite_fraction)
        self.min_size = int(min_size)
        self.max_inplane_ratio = float(max_inplane_ratio)
        self.max_slice_ratio = float(max_slice_ratio)

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        keys = [k for k in self.keys if k in d]
        if not keys:
            return d
        img_key = keys[0]
        d[img_key] = self._check_image(d[img_key], _name(d, img_key))
        for lab_key in keys[1:]:
            self._check_label(d[lab_key], d[img_key], _name(d, lab_key), _name(d, img_key))
        return d

    def _check_image(self, img, name):
        meta = getattr(img, "meta", {}) or {}
        shape = tuple(img.shape)
        spatial = tuple(int(s) for s in np.asarray(meta.get("spatial_shape", shape)).ravel())
        channel_dim = meta.get("original_channel_dim", "no_channel")
        has_channel = not (channel_dim is None or channel_dim == "no_channel" or _isnan(channel_dim))
        if len(spatial) == 2 and has_channel and shape[-1] in (3, 4):
            raise InputError(
                f"image {name} is a 2D RGB{'A' if shape[-1] == 4 else ''} picture {shape}: this config segments 3D "
                "CT volumes (NIfTI/NRRD/MHA/DICOM in HU); give a CT volume, or use a 2D RGB bundle config."
            )
        if len(spatial) < 3:
            raise InputError(
                f"image {name} is 2D {shape}: a 3D CT volume (H, W, slices) is expected; stack the slices into one "
                "volume (a single slice needs shape (H, W, 1))."
            )
        if has_channel or len(shape) > 3:
            n = shape[int(channel_dim)] if has_channel and not isinstance(channel_dim, str) else shape[-1]
            raise InputError(
                f"image {name} has {n} channels/time points {shape}: one single-channel 3D CT volume is expected; "
                "split a 4D series (one phase per file) or keep one channel of a multi-channel image."
            )
        affine = meta.get("affine")
        if affine is not None:
            check_affine(affine, name)
        axis = slice_axis(np.asarray(affine)) if affine is not None else 2
        if min(spatial[i] for i in range(3) if i != axis) < self.min_size:
            raise InputError(
                f"image {name} has shape {shape}: the in-plane size must be ≥ {self.min_size}; check that the file is "
                "a CT volume and not a thumbnail or a mask."
            )
        if int(np.asarray(meta.get("datatype", 0))) in (2, 128, 2304) or img.dtype == torch.uint8:  # NIfTI u8/RGB
            warnings.warn(
                f"image {name} is uint8: CT is expected in Hounsfield units (e.g. int16); is this an RGB export?"
            )
        values = torch.as_tensor(img)
        finite = torch.isfinite(values)
        bad = int(finite.numel() - finite.sum())
        if bad:
            frac = bad / finite.numel()
            if frac > self.max_nonfinite_fraction or bad == finite.numel():
                raise InputError(
                    f"image {name}: {frac:.0%} of the voxels are NaN/inf: the file is broken (failed conversion or "
                    "resampling); re-export it from the source images."
                )
            lo, hi = float(values[finite].min()), float(values[finite].max())
            warnings.warn(
                f"image {name}: {bad} NaN/inf voxels ({frac:.2%}) replaced (NaN → {lo:g}, +inf → {hi:g}, "
                f"-inf → {lo:g}); check how the file was made."
            )
            img = torch.nan_to_num(img, nan=lo, posinf=hi, neginf=lo)
        if affine is not None:
            sp, ax = _spacing(np.asarray(affine)), axis
            inplane = [sp[i] for i in range(3) if i != ax]
            if min(inplane) > 0 and max(inplane) / min(inplane) > self.max_inplane_ratio:
                warnings.warn(
                    f"image {name}: in-plane spacing {inplane[0]:.3g} × {inplane[1]:.3g} mm is very anisotropic; "
                    "slices are resized to a square network input, so anatomy is distorted: resample in-plane first."
                )
            if min(inplane) > 0 and sp[ax] / min(inplane) > self.max_slice_ratio:
                warnings.warn(
                    f"image {name}: slice spacing {sp[ax]:.3g} mm vs in-plane {min(inplane):.3g} mm (ratio > "
                    f"{self.max_slice_ratio:g}); the 2D network is unaffected but 3D metrics (HD95) are coarse."
                )
        return img

    def _check_label(self, lab, img, name, img_name):
        lshape, ishape = tuple(lab.shape), tuple(img.shape)
        if lshape != ishape:
            raise InputError(
                f"label {name} has shape {lshape} but its image {img_name} has {ishape}: the label must be on the "
                "image's grid; resample it onto the image (nearest neighbour) or pair the right files."
            )
        la, ia = getattr(lab, "affine", None), getattr(img, "affine", None)
        if la is not None and ia is not None:
            la, ia = np.asarray(la, dtype=np.float64), np.asarray(ia, dtype=np.float64)
            if not np.allclose(la, ia, rtol=1e-4, atol=1e-3):
                raise InputError(
                    f"label {name} has affine {np.round(la[:3], 3).tolist()} but its image {img_name} has "
                    f"{np.round(ia[:3], 3).tolist()}: the label must be on the image's grid; resample it (nearest) "
                    "or copy the image's header into it if only the header is wrong."
                )
        if self.num_classes is None:
            return
        values = torch.as_tensor(lab)
        if not torch.isfinite(values).all() or not torch.equal(values, values.round()):
            raise InputError(f"label {name} holds non-integer values: resample labels with nearest neighbour only.")
        lo, hi = float(values.min()), float(values.max())
        if lo < 0 or hi > self.num_classes - 1:
            found = torch.unique(values).to(torch.int64).tolist()
            outside = [v for v in found if v < 0 or v > self.num_classes - 1]
            raise InputError(
                f"label {name} has values {outside[:10]} outside 0..{self.num_classes - 1}: map raw BTCV ids to the 8 "
                "Synapse organs with scripts/prepare_synapse.py btcv, or set --num_classes to match your labels."
            )


def _isnan(value) -> bool:
    try:
        return bool(np.isnan(value))
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------- checkpoints
def read_checkpoint(path: str, map_location=None, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` of ``path``; :class:`InputError` naming the file and the fix on failure.

    ``mmap=True`` maps the file instead of reading it (cheap when only a small entry such as ``geometry`` is needed).
    """
    if not os.path.isfile(str(path)):
        raise InputError(
            f"checkpoint {path} does not exist: train first (configs/train.yaml writes models/model.pt), or give an "
            "existing file with --ckpt_path (official weights: scripts/convert_official.py)."
        )
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:
        glob = re.search(r"unsupported global:? (GLOBAL )?([\w.]+)", str(err), re.IGNORECASE)
        if glob:
            why = f"holds pickled Python objects ({glob.group(2)}) that a weights-only load refuses as unsafe"
            fix = "re-save it as a plain state dict (torch.save(model.state_dict(), path)) from a trusted copy"
        else:
            why = f"is not a PyTorch checkpoint ({type(err).__name__})"
            fix = "give the .pt file this bundle wrote (models/model.pt or runs/…/checkpoints/*.pt)"
        raise InputError(f"checkpoint {path} {why}: {fix}.") from None


def check_checkpoint(path: str, load_dict: Mapping[str, Any], map_location=None) -> Dict[str, Any]:
    """Loads ``path`` with ``weights_only=True`` and checks it against ``load_dict`` before anything is changed.

    Args:
        path: checkpoint file.
        load_dict: ``{"model": network, "optimizer": …}`` as for ``CheckpointLoader``; a bare state dict checkpoint
            is accepted for a single object.
        map_location: as for ``torch.load``.

    Returns:
        The checkpoint as a dict keyed like ``load_dict``.

    Raises:
        InputError: missing / unreadable / unsafe file, missing objects, or model weights of another network,
            variant or class count.
    """
    ckpt = read_checkpoint(path, map_location)
    if not isinstance(ckpt, Mapping):
        raise InputError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict: give a state-dict checkpoint.")
    first = next(iter(load_dict))
    if len(load_dict) == 1 and first not in ckpt:
        ckpt = {first: ckpt}
    missing = [k for k in load_dict if k not in ckpt]
    if missing:
        raise InputError(
            f"checkpoint {path} lacks {missing} (has {sorted(ckpt)[:8]}): resume needs a full training checkpoint "
            "(runs/…/checkpoints/checkpoint_*.pt), not the best-model file models/model.pt."
        )
    for key, obj in load_dict.items():
        if isinstance(obj, torch.nn.Module):
            _check_state(path, ckpt[key], obj)
    return dict(ckpt)


def _check_state(path: str, state: Any, net: torch.nn.Module) -> None:
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"checkpoint {path} does not hold model weights (a dict of tensors).")
    net = getattr(net, "module", net)  # DDP
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    expected = net.state_dict()
    what = _describe(net)
    if any(k.startswith("backbone.backbone.") for k in state) and not any(k.startswith("backbone.") for k in expected):
        raise InputError(
            f"checkpoint {path} is an official MSA²Net checkpoint (keys 'backbone.backbone.*'): convert it first with "
            "scripts/convert_official.py --src <file> --dst models/model.pt --variant auto."
        )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return
    head = [s for s in shapes if s[0].startswith(("head.", "out.", "final"))]
    if head and not missing and not unexpected and len(head) == len(shapes):
        k, got, want = head[0]
        raise InputError(
            f"checkpoint {path} was trained for {got[0]} classes ({k} {got}) but the config builds {want[0]} "
            f"({what}): set --num_classes {got[0]} or give a {want[0]}-class checkpoint."
        )
    stem = [s for s in shapes if "stem" in s[0] and len(s[1]) == 4 and s[1][1] != s[2][1]]
    if stem and not missing and not unexpected and len(stem) == len(shapes):
        k, got, want = stem[0]
        raise InputError(
            f"checkpoint {path} expects {got[1]} input channels but the config builds {want[1]} ({what}): set "
            f"--in_channels {got[1]} (1 for CT, 3 for RGB) or give a matching checkpoint."
        )
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        parts.append(f"{len(shapes)} of other shapes (e.g. {shapes[0][0]} {shapes[0][1]} vs {shapes[0][2]})")
    raise InputError(
        f"checkpoint {path} is for another network or variant than the config's {what}: {'; '.join(parts)}. "
        "Set --variant (and --num_classes) to those the checkpoint was trained with, or give its matching checkpoint."
    )


def _describe(net: torch.nn.Module) -> str:
    variant = getattr(getattr(net, "config", None), "name", None) or getattr(net, "variant", None)
    return type(net).__name__ + (f" variant={variant!r}" if variant else "")


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI ``CheckpointLoader`` that checks the file first (:func:`check_checkpoint`) and loads ``weights_only``.

    Same arguments as ``monai.handlers.CheckpointLoader``. A mismatch raises :class:`InputError` before any weight
    is changed, instead of torch's ``load_state_dict`` key listing.
    """

    def __call__(self, engine) -> None:
        if self.strict_shape:
            check_checkpoint(self.load_path, self.load_dict, self.map_location)
        super().__call__(engine)  # MONAI 1.6.1 loads with weights_only=True itself


# ----------------------------------------------------------------------------------------------- command line
def root_input_error(err: BaseException) -> Optional[str]:
    """The :class:`InputError` message in ``err``'s cause/context chain (or in a DataLoader worker's text).

    ValueErrors of this project's modules (``"bundle/inference.py: input X does not exist."``) count too.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, InputError):
            return str(err)
        if type(err) is ValueError and str(err).startswith("bundle/"):  # the project's "bundle/x.py: rule" errors
            return str(err)
        match = re.search(r"(?:bundle\.validation\.)?InputError: (.+)", str(err))
        if match:
            return match.group(1).strip()
        err = err.__cause__ or err.__context__
    return None


def _quiet() -> bool:
    return os.environ.get("MSA2NET_TRACEBACK", "0") in ("", "0")


class _InputErrorTracebackFilter(logging.Filter):
    """Drops the traceback from log records of exceptions that carry an :class:`InputError` (message kept).

    MONAI's ``StatsHandler`` logs every exception raised inside an engine with ``logger.exception`` before the
    error hook prints the one line, so a bad checkpoint or a folder run with failed cases showed a traceback anyway.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _quiet() and root_input_error(exc) is not None:
            record.exc_info, record.exc_text = None, None
        return True


# loggers that log engine exceptions with their traceback: StatsHandler's default name, and the root logger
_TRACEBACK_LOGGERS = ("monai.handlers.StatsHandler", "")


def install_error_hook() -> None:
    """Uncaught exceptions that carry an :class:`InputError` print ``InputError: <message>`` only (exit code 1).

    Also keeps the tracebacks of such exceptions out of the logs of MONAI's ``StatsHandler``. Set
    ``MSA2NET_TRACEBACK=1`` for the full traceback (in the logs and at exit).
    """
    from monai.apps import get_logger

    for name in _TRACEBACK_LOGGERS:
        # set up as StatsHandler sets its logger up (its own stdout handler), which a plain getLogger would prevent
        log = get_logger(name) if name and name not in logging.root.manager.loggerDict else logging.getLogger(name)
        if not any(isinstance(f, _InputErrorTracebackFilter) for f in log.filters):
            log.addFilter(_InputErrorTracebackFilter())
    if getattr(sys.excepthook, "_msa2net", False):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        message = root_input_error(exc) if _quiet() else None
        if message is None:
            previous(exc_type, exc, tb)
            return
        sys.stderr.write(f"InputError: {message}\n(MSA2NET_TRACEBACK=1 shows the full traceback)\n")
        sys.stderr.flush()

    hook._msa2net = True  # type: ignore[attr-defined]
    sys.excepthook = hook


_CLI_ARGS = {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file"}


def _ids(config: Any, prefix: str = "") -> set:
    out = set()
    if isinstance(config, Mapping):
        items = config.items()
    elif isinstance(config, list):
        items = ((str(i), v) for i, v in enumerate(config))
    else:
        return out
    for k, v in items:
        key = f"{prefix}#{k}" if prefix else str(k)
        out.add(key)
        out |= _ids(v, key)
    return out


def check_cli_overrides(argv: Optional[Sequence[str]] = None) -> None:
    """Refuses ``--id value`` overrides whose id exists in none of the ``--config_file`` files (typos).

    ``monai.bundle run`` silently adds an unknown id as a new, unused config entry (``--epohcs 5`` trains the
    default number of epochs). Runs only for a ``monai.bundle`` command line; ids may use ``#`` or ``::``.

    Raises:
        InputError: naming the unknown id and the closest existing ones.
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv or "monai" not in argv[0] or "bundle" not in argv[0]:
        return
    pairs = [a[2:].split("=", 1)[0] for a in argv[1:] if a.startswith("--")]
    files = None
    for i, a in enumerate(argv):
        if a == "--config_file" and i + 1 < len(argv):
            files = argv[i + 1]
        elif a.startswith("--config_file="):
            files = a.split("=", 1)[1]
    if files is None:
        return
    from monai.bundle import ConfigParser

    try:
        config = ConfigParser.load_config_files(files)
    except Exception:  # monai.bundle reports unreadable config files itself
        return
    known = _ids(config)
    for raw in pairs:
        key = raw.replace("::", "#")
        parent, _, last = key.rpartition("#")
        if key in _CLI_ARGS or key in known or key.startswith("+") or (last.startswith("_") and parent in known):
            continue  # `--x#_disabled_ True` etc. are fine on an existing component
        close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
        hint = "did you mean " + ", ".join("--" + c for c in close) + "?" if close else "check the config's ids."
        raise InputError(
            f"unknown config id --{raw} (not in {files}): monai.bundle would add it as an unused entry and run "
            f"with the default; {hint}"
        )


def prepare_run() -> None:
    """First item of each config's ``run`` (custom code importable there): one-line errors, typo overrides refused."""
    install_error_hook()
    check_cli_overrides()
