"""Build a network by name from a config: ``msa2net`` (any variant) or ``sa2net``, for configs that choose one."""

from __future__ import annotations

from typing import Optional

from torch import nn

from bundle.networks.msa2net import MSA2Net
from bundle.networks.sa2net import SA2Net


def build_network(
    name: str = "sa2net",
    in_channels: int = 3,
    out_channels: int = 1,
    base_channels: int = 64,
    deep_supervision: bool = True,
    variant: str = "paper",
    encoder_weights: Optional[str] = None,
) -> nn.Module:
    """The network named in the config (``network_name``).

    Args:
        name: ``sa2net`` (SA2-Net, the microscopy default) or ``msa2net`` (MSA²Net; 224² input, 1 or 3 channels,
            no deep-supervision heads).
        in_channels: image channels (3 for MoNuSeg/GlaS RGB, 1 for grayscale fluorescence).
        out_channels: 1 (sigmoid head, as the official binary recipe).
        base_channels: SA2-Net width ``C`` (64 in the paper; smaller for CPU demos).
        deep_supervision: SA2-Net's three auxiliary heads in training mode (official: on).
        variant: MSA²Net variant.
        encoder_weights: MSA²Net local timm encoder weights file, or None.

    Returns:
        The network (raw logits; no sigmoid inside, unlike the official SA2-Net with one class).
    """

    key = str(name).lower().replace("-", "").replace("_", "")
    if key == "sa2net":
        return SA2Net(in_channels, out_channels, base_channels=base_channels, deep_supervision=deep_supervision)
    if key == "msa2net":
        return MSA2Net(in_channels, out_channels, variant=variant, encoder_weights=encoder_weights)
    raise ValueError(f"network_name must be 'sa2net' or 'msa2net', got {name!r}.")
