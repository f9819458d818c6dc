"""SA2-Net (Fiaz et al., "SA2-Net: Scale-aware Attention Network for Microscopic Image Segmentation", BMVC 2023,
arXiv 2309.16661): wiring of the UNet encoder, the scale-aware attention skip path and the AuA decoder."""

from __future__ import annotations

from typing import List, Union

import torch
import torch.nn.functional as F
from torch import nn

from bundle.networks.blocks.aua import AdaptiveUpAttention, conv_bn_relu
from bundle.networks.blocks.sa2 import ScaleAwareAttention
from bundle.networks.loading import BundleCheckpointLoading

__all__ = ["SA2Net"]


class SA2Net(BundleCheckpointLoading):
    """SA2-Net for 2D segmentation, built as the official code runs it (``MyNet`` in ``sasanet.py``).

    Data flow for an ``H x W`` image and ``C = base_channels`` (64):

    * Encoder: a randomly initialised UNet encoder (no pretrained backbone in the paper's code). A 3x3
      conv-BN-ReLU stem (``C``), then four stages of max-pool + 2 x conv-BN-ReLU with ``2C, 4C, 8C, 8C``
      channels, i.e. features at strides 1, 2, 4, 8, 16.
    * Side convolutions: plain 3x3 convs project stages 2-4 to ``C`` channels and stage 5 to ``8C``.
    * SA2 (:class:`~bundle.networks.blocks.sa2.ScaleAwareAttention`) refines the four finest features (stem
      and stages 2-4, all ``C`` channels) into the skips of widths ``C, 2C, 4C, 8C``; the deepest feature
      bypasses it.
    * AuA decoder (:class:`~bundle.networks.blocks.aua.AdaptiveUpAttention`), deep to shallow: ``8C->4C``,
      ``4C->2C``, ``2C->C``, ``C->C``, each step at twice the previous resolution.
    * Head: 1x1 conv ``C -> out_channels`` at full resolution.
    * Deep supervision (``deep_supervision=True``, training mode only): three more 1x1 heads on the decoder
      outputs at strides 2, 4 and 8 (widths ``C, 2C, 4C``, in that order), bilinearly upsampled
      (``align_corners=False``) to full resolution.

    Departures from the official code, all deliberate:

    * **Raw logits.** The official network applies a sigmoid inside when ``n_classes == 1`` (in train and eval
      mode). This one never does: use sigmoid-aware losses and post-processing (e.g. MONAI
      ``DiceCELoss(sigmoid=True)``, ``Activations(sigmoid=True)``). Official probabilities = ``sigmoid(ours)``.
    * **Only modules that run are built.** The official model also builds ``Multi_scale_Fuse1-3`` (never
      called), the ``AG.weight`` branch of every AuA gate and two depthwise convs of every LSA (never called):
      13,187,712 of its 32,484,308 parameters at 3->1. Without deep supervision the three auxiliary heads are
      not built either. :func:`~bundle.networks.convert_sa2net.convert_official_state_dict` drops those keys.
    * Auxiliary heads run at their native resolution and their logits are upsampled; the official code
      upsamples the features first. Both are linear, so they agree (to ~1e-6) at a fraction of the cost.

    Input-size rule: height and width must each be a multiple of 16 (four 2x poolings, and the decoder's 2x
    nearest upsampling must land exactly on every skip). Any number of input channels and any batch size work.

    Args:
        in_channels: input image channels (3 for MoNuSeg/GlaS/ISIC2018 RGB/BGR, 4 for SegPC2021 RGB + nucleus).
        out_channels: output channels (1 for binary segmentation with a sigmoid, K for K-class softmax).
        base_channels: width ``C`` of the first stage (64 in the paper).
        deep_supervision: build the three auxiliary heads; in training mode ``forward`` then returns a list.

    Returns:
        Eval mode, or ``deep_supervision=False``: logits ``(B, out_channels, H, W)``.
        Training mode with ``deep_supervision=True``: a list of four such tensors, the main output first, then the
        heads on the decoder outputs at strides 2, 4, 8 (the official order ``logits4, logits3, logits2, logits1``).

    Examples::

        >>> net = SA2Net(in_channels=3, out_channels=1).eval()
        >>> net(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 1, 224, 224])
        >>> net = SA2Net(in_channels=3, out_channels=2, deep_supervision=True).train()
        >>> [tuple(y.shape) for y in net(torch.randn(2, 3, 64, 64))]
        [(2, 2, 64, 64), (2, 2, 64, 64), (2, 2, 64, 64), (2, 2, 64, 64)]
    """

    def __init__(
        self, in_channels: int = 3, out_channels: int = 1, base_channels: int = 64, deep_supervision: bool = False
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("base_channels", base_channels),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SA2Net {name} must be a positive integer, got {value!r}.")
        if not isinstance(deep_supervision, bool):
            raise ValueError(f"SA2Net deep_supervision must be True or False, got {deep_supervision!r}.")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.base_channels = base_channels
        self.deep_supervision = deep_supervision
        self.size_divisor = 16  # input height and width must be multiples of this (four 2x poolings)

        c = base_channels
        widths = [c, 2 * c, 4 * c, 8 * c, 8 * c]  # encoder stages, stride 1 .. 16
        stages = [conv_bn_relu(in_channels, c)]
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            stages.append(nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(w_in, w_out), conv_bn_relu(w_out, w_out)))
        self.encoder = nn.ModuleList(stages)
        # Stages 2-4 go to SA2 at C channels; the deepest keeps 8C and feeds the decoder directly.
        self.side_convs = nn.ModuleList(
            [nn.Conv2d(w, c, 3, padding=1) for w in widths[1:4]] + [nn.Conv2d(8 * c, 8 * c, 3, padding=1)]
        )
        self.sa2 = ScaleAwareAttention(c, out_channels=widths[:4], reference_scale=2)
        # Deep to shallow: (decoder in = skip width, out).
        self.decoder = nn.ModuleList(
            [
                AdaptiveUpAttention(8 * c, 4 * c),
                AdaptiveUpAttention(4 * c, 2 * c),
                AdaptiveUpAttention(2 * c, c),
                AdaptiveUpAttention(c, c),
            ]
        )
        self.head = nn.Conv2d(c, out_channels, 1)
        # Official order after the main head: decoder outputs at strides 2, 4, 8 (widths C, 2C, 4C).
        self.aux_heads = nn.ModuleList(
            [nn.Conv2d(w, out_channels, 1) for w in (c, 2 * c, 4 * c)] if deep_supervision else []
        )

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SA2Net expects input (B, {self.in_channels}, H, W), got {list(x.shape)}.")
        if x.shape[2] % self.size_divisor != 0 or x.shape[3] % self.size_divisor != 0:
            raise ValueError(
                f"SA2Net needs height and width that are multiples of {self.size_divisor} (four 2x poolings); got "
                f"{x.shape[2]}x{x.shape[3]}. Pad or resize the input first."
            )
        feats: List[torch.Tensor] = []
        for stage in self.encoder:
            x = stage(x)
            feats.append(x)
        sides: List[torch.Tensor] = [feats[0]]
        for i, conv in enumerate(self.side_convs):  # enumerate: TorchScript cannot zip a ModuleList with a list
            sides.append(conv(feats[i + 1]))
        skips = self.sa2(sides[:4])

        y = sides[4]
        decoded: List[torch.Tensor] = []  # decoder outputs, shallow (stride 1) first
        for i, up in enumerate(self.decoder):
            y = up(y, skips[3 - i])
            decoded.insert(0, y)
        logits = self.head(y)
        if not (self.training and self.deep_supervision):
            return logits
        outs: List[torch.Tensor] = [logits]
        size = logits.shape[-2:]
        for i, head in enumerate(self.aux_heads):
            # 1x1 head then bilinear resize == resize then head (both linear; weights of bilinear sum to 1).
            outs.append(F.interpolate(head(decoded[i + 1]), size=size, mode="bilinear", align_corners=False))
        return outs
