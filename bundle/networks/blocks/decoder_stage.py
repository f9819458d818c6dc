"""One MSA²Net decoder stage with a skip connection: gate, LayerNorm, two blocks, patch expanding.

Layouts
-------
The official code turns the channels-last skip feature and the projected decoder tokens into "B, C, H, W"
with a raw ``.view()`` instead of a permute, so MASAG, the LayerNorm and the LKA blocks work on a fixed
pseudo-image ``P[c, h, w] = T_flat[c·H·W + h·W + w]`` of the channels-last buffer ``T``; a second raw view
restores the token layout before patch expanding. A permute-based version is a *different network* (up to
8.4 logits apart with shared weights), so ``layout="official"`` (raw views) is the default and
``layout="nchw"`` (true permutes) is offered for training new models.
"""

from __future__ import annotations

import torch
from torch import nn

from bundle.networks.blocks.dae_former import DAEFormerBlock
from bundle.networks.blocks.lka import LKABlock
from bundle.networks.blocks.masag import MASAG, SkipAdd
from bundle.networks.blocks.patch_expand import PatchExpand

__all__ = ["LAYOUTS", "BLOCK_TYPES", "DecoderStage", "LKABlocks", "DAEFormerBlocks"]

LAYOUTS = ("official", "nchw")
BLOCK_TYPES = ("lka", "dae")


class LKABlocks(nn.Module):
    """LKA blocks on the (pseudo-)image; normalised ``(B, H, W, C)`` in, tokens ``(B, H·W, C)`` out."""

    def __init__(self, channels: int, depth: int, raw_view: bool) -> None:
        super().__init__()
        self.raw_view = raw_view
        self.layers = nn.ModuleList([LKABlock(channels) for _ in range(depth)])

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        b, h, w, c = y.shape
        x = y.permute(0, 3, 1, 2).contiguous()
        for layer in self.layers:
            x = layer(x)
        if self.raw_view:
            return x.reshape(b, h * w, c)  # the official raw view back to tokens
        return x.flatten(2).transpose(1, 2)


class DAEFormerBlocks(nn.Module):
    """DAE-Former blocks on tokens; normalised ``(B, H, W, C)`` in, tokens ``(B, H·W, C)`` out.

    In the official layout the normalised pseudo-image is flattened to tokens as it is, so these tokens stay
    in pseudo-image order (the official ``view`` is never undone on this path); in ``nchw`` it is the true
    token order. The same reshape serves both.
    """

    def __init__(self, channels: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([DAEFormerBlock(channels) for _ in range(depth)])

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        b, h, w, c = y.shape
        x = y.reshape(b, h * w, c)
        for layer in self.layers:
            x = layer(x, h, w)
        return x


class DecoderStage(nn.Module):
    """Skip-fusion stage at one resolution.

    ``G = Linear(tokens)``; ``Y = LN(G + gate(X, G))``; ``Y = Blocks(Y)``; ``tokens = PatchExpand(Y)``, where
    the gate is :class:`MASAG` or a plain addition of the skip ``X``.

    Args:
        channels: channels of the skip and of the incoming tokens.
        out_channels: token width after patch expanding.
        scale: patch-expanding factor (2 between stages, 4 before the head).
        block_type: ``"lka"`` or ``"dae"``.
        use_masag: MASAG gate if True, else ``G + X``.
        layout: ``"official"`` (raw views, as the authors' code) or ``"nchw"`` (true permutes).
        depth: number of blocks.
    """

    def __init__(
        self,
        channels: int,
        out_channels: int,
        scale: int,
        block_type: str,
        use_masag: bool,
        layout: str = "official",
        depth: int = 2,
    ) -> None:
        super().__init__()
        if block_type not in BLOCK_TYPES:
            raise ValueError(f"block_type must be one of {BLOCK_TYPES}, got {block_type!r}.")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
        self.raw_view = layout == "official"
        self.gate_proj = nn.Linear(channels, channels)
        self.gate: nn.Module = MASAG(channels) if use_masag else SkipAdd()
        self.norm = nn.LayerNorm(channels)
        if block_type == "lka":
            self.blocks: nn.Module = LKABlocks(channels, depth, self.raw_view)
        else:
            self.blocks = DAEFormerBlocks(channels, depth)
        self.upsample = PatchExpand(channels, out_channels, scale)

    def forward(self, tokens: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Fuse decoder ``tokens (B, H·W, C)`` with the encoder ``skip (B, C, H, W)``; return upsampled tokens."""
        b, c, h, w = skip.shape
        g = self.gate_proj(tokens)
        if self.raw_view:
            # The official pseudo-image: the channels-last buffers reinterpreted as (B, C, H, W).
            x = skip.permute(0, 2, 3, 1).contiguous().view(b, c, h, w)
            g = g.view(b, c, h, w)
        else:
            x = skip
            g = g.transpose(1, 2).reshape(b, c, h, w)
        y = self.norm((g + self.gate(x, g)).permute(0, 2, 3, 1))
        return self.upsample(self.blocks(y), h, w)
