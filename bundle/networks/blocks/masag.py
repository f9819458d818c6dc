"""Multi-Scale Adaptive Spatial Attention Gate (MASAG), MSA²Net §3.3 (Kolahi et al., BMVC 2024)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MASAG", "SkipAdd"]


class MASAG(nn.Module):
    """Multi-Scale Adaptive Spatial Attention Gate.

    Fuses an encoder skip feature ``X`` with a decoder feature ``G`` of the same shape ``(B, C, H, W)``.
    The four stages follow the paper's equations:

    1. Multi-scale fusion (Eq. 1)::

           U = BN( BN(Conv1x1(DWD(DW(X)))) + BN(Conv1x1([P_avg(G); P_max(G)])) )

       where ``P_avg``/``P_max`` pool over channels (a 1-channel map broadcast over ``C``).
    2. Spatial selection (Eqs. 2-3): ``[A; B] = softmax_channels(Conv1x1_{C->2}(U))``,
       ``X' = A * X + X``, ``G' = B * G + G``.
    3. Spatial interaction and cross-modulation (Eqs. 4-5): ``X'' = X' * sigma(G')``,
       ``G'' = G' * sigma(X')``, ``U' = X'' * G''``.
    4. Recalibration (Eq. 6): ``out = BN(Conv1x1(sigma(BN(Conv1x1(U'))) * X))``.

    Where the official code departs from the paper's text, this block follows the code (which produced the
    published numbers) and the departures are:

    * "DW-D" in Eq. 1 is a **dense** 3x3 convolution with dilation 2 (``groups=1``, 9·C² weights, about 75 % of
      the block's parameters), not a depthwise one.
    * BatchNorm + ReLU follow both 3x3 convolutions of the local branch; BatchNorms also follow the local
      1x1 conv, the global 1x1 conv, the fused sum ``U``, the recalibration conv before the sigmoid, and the
      final 1x1 conv. The equations show none of them (the paper's figure legend says "PW Conv + BN").
    * The result is not added to ``X`` here; the decoder adds it to ``G`` (``G + MASAG(X, G)``).

    Parameters: ``12·C² + 28·C + 7`` (113,287 at C=96; 447,751 at 192; 1,780,231 at 384).

    Args:
        channels: number of channels ``C`` of both inputs.

    Examples::

        >>> gate = MASAG(channels=96)
        >>> x, g = torch.randn(2, 96, 56, 56), torch.randn(2, 96, 56, 56)
        >>> gate(x, g).shape
        torch.Size([2, 96, 56, 56])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"MASAG channels must be a positive integer, got {channels}.")
        # Local context of X (Eq. 1, left term): DW 3x3 -> dilated 3x3 (dense in the official code) -> 1x1.
        self.local_context = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=2, dilation=2),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
            nn.BatchNorm2d(channels),
        )
        # Global context of G (Eq. 1, right term): [channel-mean; channel-max] -> 1x1 conv to one map.
        self.global_context = nn.Sequential(nn.Conv2d(2, 1, 1), nn.BatchNorm2d(1))
        self.fuse_norm = nn.BatchNorm2d(channels)
        self.selection = nn.Conv2d(channels, 2, 1)
        self.recalibration = nn.Conv2d(channels, channels, 1)
        self.recalibration_norm = nn.BatchNorm2d(channels)
        self.out_proj = nn.Conv2d(channels, channels, 1)
        self.out_norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if x.shape != g.shape:
            raise ValueError("MASAG needs the skip X and the gate G to have the same shape (B, C, H, W).")
        # torch.max (not amax) so that, as in the official code, the gradient goes to one arg-max channel.
        pooled = torch.cat([g.mean(dim=1, keepdim=True), torch.max(g, dim=1, keepdim=True)[0]], dim=1)
        fused = self.fuse_norm(self.local_context(x) + self.global_context(pooled))

        weights = torch.softmax(self.selection(fused), dim=1)
        x_sel = weights[:, 0:1] * x + x
        g_sel = weights[:, 1:2] * g + g

        interaction = (x_sel * torch.sigmoid(g_sel)) * (g_sel * torch.sigmoid(x_sel))

        attention = torch.sigmoid(self.recalibration_norm(self.recalibration(interaction)))
        return self.out_norm(self.out_proj(attention * x))


class SkipAdd(nn.Module):
    """Plain skip fusion used where MASAG is switched off: the decoder then computes ``G + X``.

    Same call signature as :class:`MASAG` so a decoder stage can hold either (TorchScript needs one signature).
    """

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x
