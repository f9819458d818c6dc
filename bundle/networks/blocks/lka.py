"""Large-kernel attention (LKA) block of the MSA²Net decoder, as in VAN (Guo et al., 2022) and D-LKA."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LargeKernelAttention", "LKABlock"]


class LargeKernelAttention(nn.Module):
    """LKA: a 21x21 receptive field decomposed as DW 5x5 -> DW 7x7 (dilation 3) -> 1x1, used as a gate.

    ``LKA(u) = u * Conv1x1(DWConv7x7_d3(DWConv5x5(u)))``.

    Args:
        channels: number of channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        self.conv_spatial = nn.Conv2d(channels, channels, 7, padding=9, groups=channels, dilation=3)
        self.conv1 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv1(self.conv_spatial(self.conv0(x)))


class _SpatialAttention(nn.Module):
    """1x1 -> GELU -> LKA -> 1x1, plus its own input (the inner residual of VAN's attention)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(channels, channels, 1)
        self.act = nn.GELU()
        self.lka = LargeKernelAttention(channels)
        self.proj_2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_2(self.lka(self.act(self.proj_1(x)))) + x


class _ConvMlp(nn.Module):
    """1x1 (C -> rC) -> DW 3x3 -> GELU -> 1x1 (rC -> C)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class LKABlock(nn.Module):
    """Pre-norm VAN block with layer scale, on ``(B, C, H, W)``.

    ``x = x + s1 * Attn(LN(x))``; ``x = x + s2 * MLP(LN(x))``, LayerNorm over channels (eps 1e-5), layer
    scales initialised to 1e-2, no drop path (rate 0 in MSA²Net). Parameters: ``11·C² + 130·C``.

    Args:
        channels: number of channels.
        mlp_ratio: hidden width of the MLP relative to ``channels``.

    Examples::

        >>> block = LKABlock(96)
        >>> block(torch.randn(1, 96, 56, 56)).shape
        torch.Size([1, 96, 56, 56])
    """

    def __init__(self, channels: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.attn = _SpatialAttention(channels)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = _ConvMlp(channels, int(channels * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(torch.full((channels,), 1e-2))
        self.layer_scale_2 = nn.Parameter(torch.full((channels,), 1e-2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # LayerNorm over channels: to channels-last and back.
        y = self.norm1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = x + self.layer_scale_1[:, None, None] * self.attn(y)
        y = self.norm2(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.layer_scale_2[:, None, None] * self.mlp(y)
