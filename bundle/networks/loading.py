"""``load_state_dict`` that also takes this bundle's checkpoint files whole.

The best-model files the training configs write are ``{"model": weights, "geometry" | "settings": …}`` (the zoo's
``key_in_ckpt: model``). Tools that load a checkpoint into ``network_def`` without that key (``monai.bundle
ckpt_export`` as the zoo's docs call it, Ignite's ``Checkpoint.load_objects``) hand the whole file to the network,
and torch's strict load then lists every key of the network as missing (~50 KB of text for MSA²Net).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["BundleCheckpointLoading", "weights_of"]


def weights_of(state: Any) -> Any:
    """``state["model"]`` when ``state`` is this bundle's checkpoint layout (a ``model`` state dict of tensors beside
    non-tensor entries such as ``geometry``), else ``state`` unchanged."""
    if not isinstance(state, Mapping) or not isinstance(state.get("model"), Mapping):
        return state
    if any(isinstance(v, torch.Tensor) for v in state.values()):  # a state dict that has a "model" submodule
        return state
    return state["model"] if all(isinstance(v, torch.Tensor) for v in state["model"].values()) else state


class BundleCheckpointLoading(nn.Module):
    """Mixin: :meth:`load_state_dict` accepts a bundle checkpoint (``{"model": weights, …}``) as its weights."""

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        return super().load_state_dict(weights_of(state_dict), strict=strict, assign=assign)
