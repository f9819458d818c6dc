"""Patch expanding (Swin-Unet): a linear layer spreads each token over a ``scale × scale`` neighbourhood."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PatchExpand"]


class PatchExpand(nn.Module):
    """Upsample tokens ``(B, H·W, C_in)`` to ``(B, (sH)·(sW), C_out)``.

    ``Linear(C_in, s²·C_out, bias=False)``, then each token's vector is laid out as an ``s × s`` block of
    ``C_out`` channels (``b h w (p1 p2 c) -> b (h p1) (w p2) c``), then LayerNorm(C_out). MSA²Net uses
    ``s=2, C_out=C_in/2`` between stages and ``s=4, C_out=C_in`` before the head.

    Args:
        in_channels: token width in.
        out_channels: token width out.
        scale: upsampling factor per side.

    Examples::

        >>> up = PatchExpand(768, 384, scale=2)
        >>> up(torch.randn(1, 49, 768), 7, 7).shape
        torch.Size([1, 196, 384])
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale
        self.out_channels = out_channels
        self.expand = nn.Linear(in_channels, scale * scale * out_channels, bias=False)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b = x.shape[0]
        s, c = self.scale, self.out_channels
        x = self.expand(x).reshape(b, h, w, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h * s * w * s, c)
        return self.norm(x)
