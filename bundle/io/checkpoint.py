"""The one checkpoint reader: ``weights_only`` loads with a one-line :class:`~bundle.errors.InputError` naming the
file and the fix, checks of the weights against the network before anything changes, Ignite's loader with those
checks, and the newest training checkpoint of a run (for resume)."""

from __future__ import annotations

import glob
import logging
import os
import re
from typing import Any, Dict, Mapping, Optional, Union

import torch
from monai.handlers import CheckpointLoader

from bundle.errors import InputError
from bundle.networks.convert_msa2net import state_dict_mismatch, unwrap_state_dict

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- checkpoints
def require_checkpoint(path: str, option: str = "--ckpt_path") -> str:
    """``path`` if it is a file; else the one message for a missing checkpoint, naming the option that gave it.

    Raises:
        InputError: ``path`` is not a file.
    """
    if not os.path.isfile(str(path)):
        raise InputError(
            f"checkpoint {path} does not exist: give an existing file with {option} (a training run writes its "
            "best model to <output_dir>/model.pt, and with --publish_model True also to models/; official weights: "
            "scripts/model/convert_official.py)."
        )
    return str(path)


def read_checkpoint(path: str, map_location=None, mmap: bool = False, option: str = "--ckpt_path") -> Any:
    """``torch.load(weights_only=True)`` of ``path``; :class:`InputError` naming the file and the fix on failure.

    ``mmap=True`` maps the file instead of reading it: tensors' shapes, and small entries such as ``geometry``, are
    then available without reading the weights (a later full load reads the file once).
    """
    require_checkpoint(path, option)
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


def check_checkpoint(
    path: str, load_dict: Mapping[str, Any], map_location=None, mmap: bool = False, option: str = "--ckpt_path"
) -> Dict[str, Any]:
    """Loads ``path`` with ``weights_only=True`` and checks it against ``load_dict`` before anything is changed.

    Args:
        path: checkpoint file.
        load_dict: ``{"model": network, "optimizer": …}`` as for ``CheckpointLoader``; a bare state dict checkpoint
            is accepted for a single object.
        map_location: as for ``torch.load``.
        mmap: map the file instead of reading it (a check only: the weights are read by whoever loads them next).
        option: the command-line option that named ``path``, for the missing-file message.

    Returns:
        The checkpoint as a dict keyed like ``load_dict``.

    Raises:
        InputError: missing / unreadable / unsafe file, missing objects, or model weights of another network,
            variant or class count.
    """
    ckpt = read_checkpoint(path, "cpu" if mmap else map_location, mmap=mmap, option=option)
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
    ckpt = dict(ckpt)
    for key, obj in load_dict.items():
        if isinstance(obj, torch.nn.Module):
            ckpt[key] = _drop_training_only(ckpt[key], obj)
            _check_state(path, ckpt[key], obj)
    return ckpt


# Heads that only train (SA2-Net's deep supervision): a network built without them ignores their weights.
TRAINING_ONLY_PREFIXES = ("aux_heads.",)


def _drop_training_only(state: Any, net: torch.nn.Module) -> Any:
    if not isinstance(state, Mapping):
        return state
    own = getattr(net, "module", net).state_dict()
    return {k: v for k, v in state.items() if k in own or not k.startswith(TRAINING_ONLY_PREFIXES)}


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
            "scripts/model/convert_official.py --src <file> --dst models/model.pt --variant auto."
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
    sa2net = _sa2net_options(state, expected)
    if sa2net:
        raise InputError(
            f"checkpoint {path} is an SA2-Net built with other settings than the config's ({what}): set {sa2net} "
            "(the values the checkpoint was trained with), or give a checkpoint of the config's network."
        )
    raise InputError(
        f"checkpoint {path} is for another network or variant than the config's {what}: "
        f"{'; '.join(state_dict_mismatch(expected, state))}. "
        "Set --variant (and --num_classes) to those the checkpoint was trained with, or give its matching checkpoint."
    )


# SA2-Net's stem convolution (base_channels, in_channels, 3, 3) and 1×1 head (out_channels, base_channels, 1, 1)
_SA2NET_STEM, _SA2NET_HEAD = "encoder.0.conv.weight", "head.weight"


def _sa2net_options(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str:
    """``--base_channels C --in_channels I --num_classes K`` read from an SA2-Net state dict, for the options that
    differ from the config's network; ``""`` when either side is not an SA2-Net."""
    if not all(k in d for d in (state, expected) for k in (_SA2NET_STEM, _SA2NET_HEAD)):
        return ""

    def options(d: Mapping[str, torch.Tensor]) -> Dict[str, int]:
        stem, head = d[_SA2NET_STEM].shape, d[_SA2NET_HEAD].shape
        return {"base_channels": stem[0], "in_channels": stem[1], "num_classes": head[0]}

    got, want = options(state), options(expected)
    return " ".join(f"--{k} {v}" for k, v in got.items() if v != want[k])


def _describe(net: torch.nn.Module) -> str:
    variant = getattr(getattr(net, "config", None), "name", None) or getattr(net, "variant", None)
    return type(net).__name__ + (f" variant={variant!r}" if variant else "")


class TrainedSettings:
    """The config values a checkpoint's weights must be applied with (microscopy: network, width, channels, classes,
    input mode, size, normalisation), saved in every checkpoint beside the weights (``"settings"`` entry).

    Has ``state_dict`` / ``load_state_dict``, so it goes into a ``CheckpointSaver``'s ``save_dict`` (and a resume's
    ``load_dict``: resuming with other values is refused). :meth:`check` compares a checkpoint file's entry with
    these values before its weights are loaded, so inference run with other settings (another ``--input_mode``
    scored 0.881 instead of 0.910 without a word) is refused with the options to pass.

    Args:
        values: ``name=value`` pairs named as the config's command-line ids.
    """

    def __init__(self, **values: Any) -> None:
        self.values = {k: _plain(v) for k, v in values.items()}

    def state_dict(self) -> dict:
        return dict(self.values)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._refuse_other(dict(state), "the checkpoint")

    def check(self, path: str) -> None:
        """Refuses checkpoint ``path`` when its ``settings`` entry differs from these values (a file without the
        entry, e.g. converted official weights, is not constrained here; its weights are still checked).

        Raises:
            InputError: naming the file and the options the checkpoint was trained with.
        """
        ckpt = read_checkpoint(path, map_location="cpu", mmap=True)
        saved = ckpt.get("settings") if isinstance(ckpt, Mapping) else None
        if isinstance(saved, Mapping):
            self._refuse_other(dict(saved), f"checkpoint {path}")

    def _refuse_other(self, saved: Dict[str, Any], what: str) -> None:
        differ = [k for k in self.values if k in saved and saved[k] != self.values[k]]
        if differ:
            trained = " ".join(f"--{k} {_option(saved[k])}" for k in differ)
            asked = " ".join(f"--{k} {_option(self.values[k])}" for k in differ)
            raise InputError(
                f"{what} was trained with {trained} but this run is set to {asked}: pass {trained} (the network and "
                "input settings must be those of training)."
            )


def _plain(value: Any) -> Any:
    """A config value as it is stored in a checkpoint (weights_only-loadable: str, number, bool, None, list)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, torch.Tensor) else value


def _option(value: Any) -> str:
    """``value`` as the command line gives it to ``monai.bundle`` (``$None`` for None)."""
    return "$None" if value is None else str(value).replace(" ", "")


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI ``CheckpointLoader`` that checks the file first (:func:`check_checkpoint`) and loads ``weights_only``.

    Same arguments as ``monai.handlers.CheckpointLoader``. A mismatch raises :class:`InputError` before any weight
    is changed, instead of torch's ``load_state_dict`` key listing.
    """

    def __call__(self, engine) -> None:
        if self.strict_shape:  # names and shapes from a memory map: the file is read once, by MONAI's load below
            check_checkpoint(self.load_path, self.load_dict, mmap=True)
        super().__call__(engine)  # MONAI 1.6.1 loads with weights_only=True itself


def latest_checkpoint(ckpt_dir: str, pattern: str = "checkpoint*.pt") -> Optional[str]:
    """Newest resume checkpoint (model, optimizer, scheduler, trainer) in ``ckpt_dir``, or None.

    ``CheckpointSaver`` writes ``checkpoint_epoch=N.pt`` every epoch and ``checkpoint_final_iteration=N.pt`` when the
    run ends or raises (Ctrl-C included); the newest by modification time wins.
    """
    files = glob.glob(os.path.join(ckpt_dir, pattern))
    return max(files, key=os.path.getmtime) if files else None


def read_state_dict(path: Union[str, os.PathLike], map_location="cpu") -> Dict[str, torch.Tensor]:
    """Network weights from any checkpoint file this bundle meets, ``weights_only``.

    Accepted: a bare state dict, or one under ``model`` (this bundle's files), ``state_dict`` or ``state_dict_ema``
    (other trainers, official releases); ``module.`` prefixes (DataParallel/DDP) are removed.

    Raises:
        InputError: missing or unreadable file, or no state dict of tensors inside.
    """
    try:
        return unwrap_state_dict(read_checkpoint(str(path), map_location), f"checkpoint {path}")
    except ValueError as err:
        if isinstance(err, InputError):
            raise
        raise InputError(str(err)) from None
