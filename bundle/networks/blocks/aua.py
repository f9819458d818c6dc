"""Adaptive up-attention (AuA), SA2-Net §3 (Fiaz et al., "SA2-Net: Scale-aware Attention Network for Microscopic
Image Segmentation", BMVC 2023, arXiv 2309.16661).

One decoder step: the coarser decoder feature is upsampled and, through an explicit spatial attention map,
decides which parts of the SA2-refined skip feature pass on; two conv-BN-ReLU units then refine the result.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["conv_bn_relu", "UpAttentionGate", "AdaptiveUpAttention"]


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (with bias) -> BatchNorm -> ReLU: the UNet unit of SA2-Net's encoder and of the AuA refinement.

    Parameters: ``9·in·out + 3·out``.

    Examples::

        >>> conv_bn_relu(3, 64)(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 64, 32, 32])
    """
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, 3, padding=1),
            norm=nn.BatchNorm2d(out_channels),
            act=nn.ReLU(inplace=True),
        )
    )


class UpAttentionGate(nn.Module):
    """The attention gate of AuA: a 1-channel spatial map from the decoder feature ``G`` and the skip ``X``.

    With ``G`` the (already upsampled) decoder feature and ``X`` the skip feature, both ``(B, C, H, W)``::

        G1  = DW_{k x k}(GELU(Conv1x1(LN_c(G))))            (large-kernel context of the decoder, k = 11)
        X1  = DW5x5(X)
        psi = sigmoid(BN(Conv1x1_{2C->1}(GELU([G1; X1]))))  (one map, broadcast over C)
        out = Conv3x3(psi * X1) + X

    The decoder feature reaches the output only through ``psi``; there is no concatenation of ``G`` with the
    skip (as in the official code). The official module also builds a second, never-called attention branch
    (``AG.weight``: 1x1 conv, GELU, 3x3 conv, sigmoid; ``11C² + 2C`` parameters); it is not built here.

    Parameters: ``10C² + (33 + k²)·C + 3`` (2,700,291 at C=512, k=11).

    Args:
        channels: channels ``C`` of both inputs.
        kernel_size: odd depthwise kernel of the decoder branch (11 at every stage in SA2-Net).

    Examples::

        >>> gate = UpAttentionGate(channels=64)
        >>> g, x = torch.randn(2, 64, 56, 56), torch.randn(2, 64, 56, 56)
        >>> gate(g, x).shape
        torch.Size([2, 64, 56, 56])
    """

    def __init__(self, channels: int, kernel_size: int = 11) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"UpAttentionGate channels must be a positive integer, got {channels}.")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"UpAttentionGate kernel_size must be a positive odd integer (same-size output), got {kernel_size}."
            )
        self.gate_norm = nn.LayerNorm(channels, eps=1e-6)
        self.gate_proj = nn.Conv2d(channels, channels, 1)
        self.gate_dwconv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.skip_dwconv = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        self.psi = nn.Conv2d(2 * channels, 1, 1)
        self.psi_norm = nn.BatchNorm2d(1)
        self.proj = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # LayerNorm over channels: to channels-last and back.
        g1 = self.gate_norm(g.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        g1 = self.gate_dwconv(F.gelu(self.gate_proj(g1)))
        x1 = self.skip_dwconv(x)
        psi = torch.sigmoid(self.psi_norm(self.psi(F.gelu(torch.cat([g1, x1], dim=1)))))
        return self.proj(psi * x1) + x


class AdaptiveUpAttention(nn.Module):
    """Adaptive up-attention (AuA): upsample, gate the skip, refine.

    ::

        G   = Up_nearest,x2(D)                    (D: coarser decoder feature, C channels)
        A   = UpAttentionGate(G, X)               (X: SA2 skip feature at the finer scale, C channels)
        out = ConvBNReLU_{O->O}(ConvBNReLU_{C->O}(A))

    Upsampling is nearest-neighbour (the official ``nn.Upsample(scale_factor=2)`` default), so ``X`` must be
    exactly twice the spatial size of ``D``.

    Parameters: gate + ``9CO + 9O² + 6O``.

    Args:
        channels: channels ``C`` of the decoder feature and of the skip.
        out_channels: output channels ``O``.
        kernel_size: depthwise kernel of the gate's decoder branch.

    Examples::

        >>> aua = AdaptiveUpAttention(channels=128, out_channels=64)
        >>> d, skip = torch.randn(1, 128, 28, 28), torch.randn(1, 128, 56, 56)
        >>> aua(d, skip).shape
        torch.Size([1, 64, 56, 56])
    """

    def __init__(self, channels: int, out_channels: int, kernel_size: int = 11) -> None:
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"AdaptiveUpAttention out_channels must be a positive integer, got {out_channels}.")
        self.gate = UpAttentionGate(channels, kernel_size)
        self.convs = nn.Sequential(conv_bn_relu(channels, out_channels), conv_bn_relu(out_channels, out_channels))

    def forward(self, decoder: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(decoder, scale_factor=2.0, mode="nearest")
        return self.convs(self.gate(up, skip))
