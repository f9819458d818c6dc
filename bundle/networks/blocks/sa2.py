"""Scale-aware attention (SA2), SA2-Net §3 (Fiaz et al., "SA2-Net: Scale-aware Attention Network for Microscopic
Image Segmentation", BMVC 2023, arXiv 2309.16661).

SA2 replaces the plain skip connections of a UNet: it takes one feature map per encoder stage, applies a
*local* scale attention to each scale and a *global* scale attention across all scales, and hands every stage
back its refined skip feature.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LocalScaleAttention", "ScaleMLP", "ScaleAwareAttention"]


def _resize(x: torch.Tensor, size: List[int]) -> torch.Tensor:
    # Bilinear, align_corners=False, no antialias: what the official code does for both directions.
    if x.shape[-2:] == size:
        return x  # identity for equal sizes anyway; skip the copy
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class LocalScaleAttention(nn.Module):
    """Local scale attention (LSA) of one scale: a gated mixed-kernel depthwise feed-forward.

    With ``H = 2·expansion·C`` hidden channels (``4C`` at the default expansion 2)::

        Z      = Conv1x1_{C->H}(F)
        Z3     = ReLU(DW3x3(Z)) = [A3; B3],   Z5 = ReLU(DW5x5(Z)) = [A5; B5]     (halves of H/2 channels)
        F_hat  = Conv1x1_{H->C}([A3 * sigmoid(A5); B3 * sigmoid(B5)])

    The 3x3 and 5x5 depthwise kernels give two receptive fields at the same scale; the 5x5 responses gate the
    3x3 ones. There is no residual and no normalisation, as in the official code. The official module also
    builds two more depthwise convolutions (``dwconv3x3_1``/``dwconv5x5_1``) that its forward never calls;
    they are not built here.

    Parameters: ``2CH + 37H + C`` with ``H = 2·expansion·C`` (42,304 at C=64; the official module has 51,264,
    8,960 of them in the two unused convolutions).

    Args:
        channels: channels ``C`` of the input and output.
        expansion: hidden width factor; the hidden tensor has ``2·expansion·C`` channels.

    Examples::

        >>> lsa = LocalScaleAttention(channels=64)
        >>> lsa(torch.randn(2, 64, 56, 56)).shape
        torch.Size([2, 64, 56, 56])
    """

    def __init__(self, channels: int, expansion: int = 2) -> None:
        super().__init__()
        if channels < 1 or expansion < 1:
            raise ValueError(
                f"LocalScaleAttention needs channels >= 1 and expansion >= 1, got {channels}, {expansion}."
            )
        hidden = 2 * expansion * channels
        self.project_in = nn.Conv2d(channels, hidden, 1)
        self.dwconv3 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.dwconv5 = nn.Conv2d(hidden, hidden, 5, padding=2, groups=hidden)
        self.project_out = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.project_in(x)
        a3, b3 = torch.relu(self.dwconv3(z)).chunk(2, dim=1)
        a5, b5 = torch.relu(self.dwconv5(z)).chunk(2, dim=1)
        return self.project_out(torch.cat([a3 * torch.sigmoid(a5), b3 * torch.sigmoid(b5)], dim=1))


class ScaleMLP(nn.Module):
    """The per-scale MLP that follows the global scale attention ("followed by MLP and conv").

    ::

        Y   = LN_c(X)                         (LayerNorm over channels, eps 1e-6)
        Y   = Y + GELU(DW3x3(Y))               (positional depthwise conv)
        out = Conv1x1_{rC->C}(GELU(Conv1x1_{C->rC}(Y))) + X

    Note the residual goes to the *pre-norm* input ``X``. Parameters: ``2rC² + 13C + rC`` (33,856 at C=64, r=4;
    every convolution has a bias).

    Args:
        channels: channels ``C``.
        ratio: hidden expansion ``r`` of the two 1x1 convolutions.

    Examples::

        >>> mlp = ScaleMLP(channels=64)
        >>> mlp(torch.randn(2, 64, 28, 28)).shape
        torch.Size([2, 64, 28, 28])
    """

    def __init__(self, channels: int, ratio: int = 4) -> None:
        super().__init__()
        if channels < 1 or ratio < 1:
            raise ValueError(f"ScaleMLP needs channels >= 1 and ratio >= 1, got {channels}, {ratio}.")
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pos = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.fc1 = nn.Conv2d(channels, channels * ratio, 1)
        self.fc2 = nn.Conv2d(channels * ratio, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # LayerNorm over channels: to channels-last and back.
        y = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        y = y + F.gelu(self.pos(y))
        return self.fc2(F.gelu(self.fc1(y))) + x


class ScaleAwareAttention(nn.Module):
    """Scale-aware attention (SA2), the skip-path module of SA2-Net.

    Input: ``S`` feature maps ``F^1..F^S`` with the same ``C`` channels at different resolutions (in SA2-Net the
    encoder stages 1-4, after the side convolutions, at 1, 1/2, 1/4, 1/8 of the image). With ``r`` the
    reference scale (the third, 1/4 of the image, in SA2-Net):

    1. Alignment: every ``F^i`` is resized bilinearly to the size of ``F^r``.
    2. Local scale attention per scale: ``F_hat^i = LSA_i(F^i)`` (:class:`LocalScaleAttention`).
    3. Global scale attention across scales. In the paper's notation ``Q = Concat(F_hat^1..F_hat^S)``,
       ``{w^1..w^S} = Conv(Q)``, ``W_hat = GELU(Conv(Q))``, ``F_bar^i = w^i * (F_hat^i * W_hat)``. In the
       official code (followed here) both come from one convolution::

           [W; w^1..w^S] = GELU(Conv3x3_{SC->C+S}(BN(Q)))        (split into C and S channels)
           W_hat         = GELU(DW5x5(W))
           F_bar^i       = F_hat^i * w^i * W_hat                  (w^i: one channel broadcast over C)

       The scale weights ``w^i`` are GELU outputs, not normalised across scales (no sigmoid or softmax).
    4. Back to each scale: ``G^i = resize(F_bar^i, size(F^i)) + F^i``.
    5. Per-scale MLP and output conv: ``out^i = Conv3x3_{C->D_i}(MLP_i(G^i))`` (:class:`ScaleMLP`), where
       ``D_i`` is the width the decoder expects for scale ``i``.

    Parameters for ``C`` channels and ``S`` scales: ``S·(LSA + MLP)`` + ``2SC`` (BN) + ``9SC(C+S) + C + S``
    (fuse conv) + ``26C`` (query conv) + ``sum_i (9C·D_i + D_i)`` (output convs); 1,017,476 at C=64,
    D=(64, 128, 256, 512), i.e. the official 1,053,316 less the 35,840 of unused LSA convolutions.

    Args:
        channels: channels ``C`` of every input scale.
        out_channels: output channels ``D_i`` per scale; its length is the number of scales ``S`` (>= 2).
        reference_scale: index ``r`` of the scale all others are aligned to (2 in SA2-Net).
        lsa_expansion: hidden factor of :class:`LocalScaleAttention`.
        mlp_ratio: hidden factor of :class:`ScaleMLP`.

    Examples::

        >>> sa2 = ScaleAwareAttention(channels=64, out_channels=(64, 128, 256, 512))
        >>> feats = [torch.randn(1, 64, s, s) for s in (64, 32, 16, 8)]
        >>> [tuple(o.shape) for o in sa2(feats)]
        [(1, 64, 64, 64), (1, 128, 32, 32), (1, 256, 16, 16), (1, 512, 8, 8)]
    """

    def __init__(
        self,
        channels: int,
        out_channels: Sequence[int] = (64, 128, 256, 512),
        reference_scale: int = 2,
        lsa_expansion: int = 2,
        mlp_ratio: int = 4,
    ) -> None:
        super().__init__()
        n = len(out_channels)
        if channels < 1:
            raise ValueError(f"ScaleAwareAttention channels must be a positive integer, got {channels}.")
        if n < 2 or any(d < 1 for d in out_channels):
            raise ValueError(
                f"ScaleAwareAttention needs at least 2 scales, each with a positive output width; got {out_channels}."
            )
        if not 0 <= reference_scale < n:
            raise ValueError(f"reference_scale must index one of the {n} scales (0..{n - 1}), got {reference_scale}.")
        self.channels = channels
        self.num_scales = n
        self.reference_scale = reference_scale
        self.local = nn.ModuleList([LocalScaleAttention(channels, lsa_expansion) for _ in range(n)])
        self.fuse_norm = nn.BatchNorm2d(n * channels)
        self.fuse_conv = nn.Conv2d(n * channels, channels + n, 3, padding=1)
        self.query_conv = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        self.mlps = nn.ModuleList([ScaleMLP(channels, mlp_ratio) for _ in range(n)])
        self.out_convs = nn.ModuleList([nn.Conv2d(channels, d, 3, padding=1) for d in out_channels])

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        if len(features) != self.num_scales:
            raise ValueError(f"ScaleAwareAttention expects {self.num_scales} feature maps, got {len(features)}.")
        ref_size = features[self.reference_scale].shape[-2:]

        local: List[torch.Tensor] = []
        for i, lsa in enumerate(self.local):  # enumerate: TorchScript cannot zip a ModuleList with a list
            local.append(lsa(_resize(features[i], ref_size)))

        fused = F.gelu(self.fuse_conv(self.fuse_norm(torch.cat(local, dim=1))))
        query, weights = torch.split(fused, [self.channels, self.num_scales], dim=1)
        query = F.gelu(self.query_conv(query))
        scale_weights = weights.split(1, dim=1)

        outs: List[torch.Tensor] = []
        for i, (mlp, out_conv) in enumerate(zip(self.mlps, self.out_convs)):
            f = features[i]
            g = _resize(local[i] * scale_weights[i] * query, f.shape[-2:]) + f
            outs.append(out_conv(mlp(g)))
        return outs
