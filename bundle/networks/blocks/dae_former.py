"""DAE-Former dual-attention transformer block (Azad et al., PRIME 2023), as MSA²Net's official code builds it."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EfficientAttention", "ChannelAttention", "MixFFN", "DAEFormerBlock"]


class EfficientAttention(nn.Module):
    """Efficient (linear) spatial attention of Shen et al. 2021, one head.

    Keys are softmax-normalised over positions, queries over channels; ``context = K Vᵀ``,
    ``out = Reproj(contextᵀ Q)``, no scaling. The official MSA²Net code hard-wires one head (its
    ``head_count`` argument is ignored), so this block has none.

    Args:
        channels: embedding dimension (keys, queries and values all use it, as in MSA²Net).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.keys = nn.Conv2d(channels, channels, 1)
        self.queries = nn.Conv2d(channels, channels, 1)
        self.values = nn.Conv2d(channels, channels, 1)
        self.reprojection = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        keys = torch.softmax(self.keys(x).reshape(b, c, h * w), dim=2)
        queries = torch.softmax(self.queries(x).reshape(b, c, h * w), dim=1)
        values = self.values(x).reshape(b, c, h * w)
        context = keys @ values.transpose(1, 2)
        return self.reprojection((context.transpose(1, 2) @ queries).reshape(b, c, h, w))


class ChannelAttention(nn.Module):
    """Transpose (channel) attention of XCiT / DAE-Former on tokens ``(B, N, C)``.

    q and k are L2-normalised along the token axis and scaled by a learned per-head temperature; the
    softmax runs over the ``C/heads × C/heads`` channel matrix. qkv has no bias. The official code always
    uses its default of 8 heads.

    Args:
        channels: embedding dimension; must be divisible by ``num_heads``.
        num_heads: number of heads.
    """

    def __init__(self, channels: int, num_heads: int = 8) -> None:
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"ChannelAttention needs channels divisible by num_heads, got {channels}/{num_heads}.")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(channels, channels * 3, bias=False)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        # (3, B, heads, C/heads, N): per head, channels attend to channels over all tokens.
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 4, 1)
        q = nn.functional.normalize(qkv[0], dim=-1)
        k = nn.functional.normalize(qkv[1], dim=-1)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.temperature, dim=-1)
        out = (attn @ qkv[2]).permute(0, 3, 1, 2).reshape(b, n, c)
        return self.proj(out)


class MixFFN(nn.Module):
    """Linear -> depthwise 3x3 conv on the token grid -> GELU -> Linear (SegFormer's Mix-FFN)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(self.act(x))


class DAEFormerBlock(nn.Module):
    """Dual attention block on tokens ``(B, H·W, C)``: efficient spatial attention then channel attention.

    ``x += EffAttn(LN1(x))``; ``x += MixFFN(LN2(x))``; ``x += ChanAttn(LN3(x))``; ``x += MixFFN(LN4(x))``.
    Parameters: ``24·C² + 103·C + 8``. The official decoder asks for ``token_mlp_mode="mix_skip"`` but never
    forwards it, so the plain Mix-FFN is what runs; this block builds that.

    Args:
        channels: embedding dimension (divisible by 8 for the channel attention).
        mlp_ratio: hidden width of the Mix-FFNs relative to ``channels``.

    Examples::

        >>> block = DAEFormerBlock(384)
        >>> block(torch.randn(1, 14 * 14, 384), 14, 14).shape
        torch.Size([1, 196, 384])
    """

    def __init__(self, channels: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.attn = EfficientAttention(channels)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp1 = MixFFN(channels, channels * mlp_ratio)
        self.norm3 = nn.LayerNorm(channels)
        self.channel_attn = ChannelAttention(channels)
        self.norm4 = nn.LayerNorm(channels)
        self.mlp2 = MixFFN(channels, channels * mlp_ratio)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        y = self.norm1(x).transpose(1, 2).reshape(b, c, h, w)
        x = x + self.attn(y).flatten(2).transpose(1, 2)
        x = x + self.mlp1(self.norm2(x), h, w)
        x = x + self.channel_attn(self.norm3(x))
        return x + self.mlp2(self.norm4(x), h, w)
