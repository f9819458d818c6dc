"""timm MaxViT encoder wrapper: four feature maps, channels read from ``feature_info``, local weights only."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional, Union

import timm
import torch
from torch import nn

__all__ = ["TimmEncoder", "load_encoder_state_dict"]

logger = logging.getLogger(__name__)

# Key prefixes that wrap a bare timm state dict in the checkpoints users actually have.
_WRAPPER_PREFIXES = ("module.", "backbone.backbone.", "encoder.model.")


class TimmEncoder(nn.Module):
    """A timm hierarchical backbone returning its stage outputs, the last one after the model's final norm.

    This equals ``model.forward_intermediates(x, indices=n_stages, norm=True, intermediates_only=True)``
    without the stem output (checked in the tests) and is written as a plain loop so that TorchScript can
    compile it. For ``maxvit_rmlp_small_rw_224`` this is exactly the official MSA²Net encoder (MERIT's
    ``MaxViT4Out_Small``; identical keys, max |Δ| ≤ 2.1e-6 per stage).

    Args:
        name: timm model name.
        weights: optional local checkpoint (timm ``.pth``/``.bin`` or ``.safetensors``), loaded with
            ``weights_only=True``; nothing is downloaded.

    Attributes:
        channels: channels of each returned feature, shallow to deep (from timm's ``feature_info``).
        reductions: stride of each returned feature.
    """

    def __init__(self, name: str = "maxvit_rmlp_small_rw_224", weights: Optional[Union[str, os.PathLike]] = None):
        super().__init__()
        self.model = timm.create_model(name, pretrained=False, num_classes=0)
        stage_info = [info for info in self.model.feature_info if info["module"].startswith("stages.")]
        self.channels: List[int] = [int(info["num_chs"]) for info in stage_info]
        self.reductions: List[int] = [int(info["reduction"]) for info in stage_info]
        if weights is not None:
            load_encoder_state_dict(self.model, weights)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        features: List[torch.Tensor] = []
        x = self.model.stem(x)
        for stage in self.model.stages:
            x = stage(x)
            features.append(x)
        features[-1] = self.model.norm(features[-1])
        return features


def _read_checkpoint(path: Path) -> dict:
    try:  # timm's reader: safetensors or torch (weights_only), unwraps state_dict/model/EMA, strips module.
        return timm.models.load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as err:  # pickle errors, truncated zips, non-torch files, no state dict inside
        raise ValueError(
            f"Could not read encoder weights from {path}: {err}. Give a timm checkpoint (.pth/.bin) or a "
            ".safetensors file holding a plain state dict of tensors."
        ) from err


def load_encoder_state_dict(model: nn.Module, weights: Union[str, os.PathLike]) -> None:
    """Load a local encoder checkpoint into a timm ``model``; refuse a file that leaves encoder weights missing.

    Accepted: a bare timm state dict (e.g. ``timm/maxvit_rmlp_small_rw_224.sw_in1k``'s file), one under
    ``state_dict``/``model``, or one with ``module.`` / ``backbone.backbone.`` (official MSA²Net) prefixes.
    Classifier ``head.*`` keys are ignored. Missing encoder keys raise ``ValueError``; other unexpected keys
    are reported in the log.

    Args:
        model: the timm model (``num_classes=0``).
        weights: path of the checkpoint.
    """
    path = Path(weights)
    if not path.is_file():
        raise ValueError(
            f"Encoder weights file not found: {path}. Pass a local file (nothing is downloaded at run time), e.g. "
            "save timm.create_model('maxvit_rmlp_small_rw_224.sw_in1k', pretrained=True).state_dict() once on a "
            "machine with internet access, or set encoder_weights to None for random initialisation."
        )
    state = _read_checkpoint(path)
    cleaned = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    head_keys = [k for k in cleaned if k.startswith("head.")]
    for key in head_keys:
        del cleaned[key]
    try:
        result = model.load_state_dict(cleaned, strict=False)
    except RuntimeError as err:  # size mismatches: a different architecture under the same key names
        raise ValueError(f"Encoder weights {path} do not fit {type(model).__name__}: {err}") from None
    if result.missing_keys:
        shown = ", ".join(result.missing_keys[:8])
        raise ValueError(
            f"Encoder weights {path} leave {len(result.missing_keys)} encoder tensors missing (e.g. {shown}); "
            f"this is not a checkpoint of {type(model).__name__} '{getattr(model, 'default_cfg', {}).get('architecture', '')}'."
        )
    logger.info(
        "Loaded encoder weights from %s (%d tensors; ignored %d classifier keys; %d unexpected keys%s).",
        path,
        len(cleaned) - len(result.unexpected_keys),
        len(head_keys),
        len(result.unexpected_keys),
        f": {', '.join(result.unexpected_keys[:8])}" if result.unexpected_keys else "",
    )
    if result.unexpected_keys:
        logger.warning("Encoder weights %s: unexpected keys ignored: %s", path, result.unexpected_keys[:20])
