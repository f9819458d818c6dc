"""MSA²Net: MaxViT encoder, MASAG skip gates, hybrid LKA / DAE-Former decoder (Kolahi et al., BMVC 2024).

This file only wires parts; each concept lives in ``blocks/``. Variants are named configurations:

============================  =========================  ===============  ====================================
variant                       decoder blocks (14/28/56)  MASAG (14/28/56) what it is
============================  =========================  ===============  ====================================
``paper``                     dae / lka / lka            yes / yes / yes  Fig. 1 and Table A (the official
                                                                          file's first, overwritten definition)
``released``                  lka / lka / lka            no / yes / yes   what the released ``Msa2Net()`` builds
``ablation_lka``              lka / lka / lka            no / no / no     Table 3 row 1
``ablation_dae``              dae / dae / dae            no / no / no     Table 3 row 2
``ablation_hybrid``           dae / lka / lka            no / no / no     Table 3 row 3
``ablation_masag_lka``        lka / lka / lka            yes / yes / yes  Table 3 row 4
``ablation_masag_dae``        dae / dae / dae            yes / yes / yes  Table 3 row 5 (row 6 is ``paper``)
============================  =========================  ===============  ====================================

The deepest official decoder stage (7×7, no skip) only runs its patch expanding: its blocks, MASAG and
linear layer never execute, in every variant, so they are not built here (``docs/fidelity.md`` reconciles
the counts with the paper's Table A).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

from bundle.networks.blocks.decoder_stage import BLOCK_TYPES, LAYOUTS, DecoderStage
from bundle.networks.blocks.patch_expand import PatchExpand
from bundle.networks.encoders import TimmEncoder
from bundle.networks.loading import BundleCheckpointLoading

__all__ = ["MSA2Net", "MSA2NetConfig", "VARIANTS"]


@dataclasses.dataclass(frozen=True)
class MSA2NetConfig:
    """Architecture of one MSA²Net variant.

    Attributes:
        stage_blocks: block type of the skip stages, deep to shallow (14×14, 28×28, 56×56 at 224² input).
        stage_masag: whether each of those stages gates its skip with MASAG (else ``G + X``).
        layout: ``"official"`` reproduces the authors' raw ``.view()`` layout; ``"nchw"`` uses true permutes.
        encoder: timm backbone name.
        img_size: the only input size the encoder accepts (MaxViT window and grid partitions of 7).
        blocks_per_stage: decoder blocks per stage.
    """

    stage_blocks: Tuple[str, str, str] = ("dae", "lka", "lka")
    stage_masag: Tuple[bool, bool, bool] = (True, True, True)
    layout: str = "official"
    encoder: str = "maxvit_rmlp_small_rw_224"
    img_size: int = 224
    blocks_per_stage: int = 2

    def __post_init__(self) -> None:
        if len(self.stage_blocks) != 3 or any(b not in BLOCK_TYPES for b in self.stage_blocks):
            raise ValueError(f"stage_blocks must be three of {BLOCK_TYPES}, got {self.stage_blocks}.")
        if len(self.stage_masag) != 3:
            raise ValueError(f"stage_masag must hold three booleans, got {self.stage_masag}.")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}.")


VARIANTS: Dict[str, MSA2NetConfig] = {
    "paper": MSA2NetConfig(("dae", "lka", "lka"), (True, True, True)),
    "released": MSA2NetConfig(("lka", "lka", "lka"), (False, True, True)),
    "ablation_lka": MSA2NetConfig(("lka", "lka", "lka"), (False, False, False)),
    "ablation_dae": MSA2NetConfig(("dae", "dae", "dae"), (False, False, False)),
    "ablation_hybrid": MSA2NetConfig(("dae", "lka", "lka"), (False, False, False)),
    "ablation_masag_lka": MSA2NetConfig(("lka", "lka", "lka"), (True, True, True)),
    "ablation_masag_dae": MSA2NetConfig(("dae", "dae", "dae"), (True, True, True)),
}


class MSA2Net(BundleCheckpointLoading):
    """MSA²Net for 2D segmentation at 224×224, returning raw logits.

    Kolahi, Azad, et al., "MSA²Net: Multi-scale Adaptive Attention-guided Network for Medical Image
    Segmentation", BMVC 2024 (arXiv 2407.21640). The computation matches the official code
    (github.com/xmindflow/MSA-2Net) module for module, including its raw ``.view()`` layout of the skip
    stages; see ``docs/fidelity.md`` for the parity check against it.

    Args:
        in_channels: 1 (grey CT; repeated to 3 channels as the official code does) or 3 (RGB).
        out_channels: number of output classes (logit channels), e.g. 9 for Synapse (background + 8 organs).
        variant: a name in :data:`VARIANTS` (``"paper"``, ``"released"``, the Table 3 ablations), or an
            :class:`MSA2NetConfig`.
        encoder_weights: optional local path of ImageNet encoder weights (timm checkpoint or safetensors).
        layout: optional override of the variant's layout (``"official"`` or ``"nchw"``).

    Raises:
        ValueError: on an unknown variant, a channel count other than 1 or 3, or ``out_channels < 1``.

    Examples::

        >>> net = MSA2Net(in_channels=1, out_channels=9, variant="paper")
        >>> net(torch.randn(2, 1, 224, 224)).shape
        torch.Size([2, 9, 224, 224])
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 9,
        variant: Union[str, MSA2NetConfig] = "paper",
        encoder_weights: Optional[Union[str, os.PathLike]] = None,
        layout: Optional[str] = None,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey, repeated to RGB) or 3 (RGB), got {in_channels}.")
        if out_channels < 1:
            raise ValueError(f"out_channels must be at least 1, got {out_channels}.")
        if isinstance(variant, str):
            if variant not in VARIANTS:
                raise ValueError(f"Unknown MSA2Net variant {variant!r}; choose one of {sorted(VARIANTS)}.")
            config = VARIANTS[variant]
        else:
            config = variant
        if layout is not None:
            config = dataclasses.replace(config, layout=layout)
        self.config = config
        self.variant = variant if isinstance(variant, str) else "custom"
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.img_size = config.img_size

        self.encoder = TimmEncoder(config.encoder, weights=encoder_weights)
        chans = self.encoder.channels  # shallow to deep, e.g. (96, 192, 384, 768)
        self.base_size = config.img_size // self.encoder.reductions[-1]
        self.bottleneck_up = PatchExpand(chans[-1], chans[-2], scale=2)
        skip_chans = list(reversed(chans[:-1]))  # deep to shallow, e.g. (384, 192, 96)
        stages = []
        for i, (c, block, masag) in enumerate(zip(skip_chans, config.stage_blocks, config.stage_masag)):
            last = i == len(skip_chans) - 1
            stages.append(
                DecoderStage(
                    channels=c,
                    out_channels=c if last else c // 2,
                    scale=4 if last else 2,
                    block_type=block,
                    use_masag=masag,
                    layout=config.layout,
                    depth=config.blocks_per_stage,
                )
            )
        self.stages = nn.ModuleList(stages)
        self.head = nn.Conv2d(skip_chans[-1], out_channels, 1)
        self._init_decoder_weights()

    def _init_decoder_weights(self) -> None:
        # As the official decoder: xavier-uniform weights and zero biases for every Linear and Conv2d,
        # unit/zero LayerNorms; BatchNorm keeps PyTorch defaults. The encoder keeps timm's initialisation.
        for part in [self.bottleneck_up, self.stages, self.head]:
            for m in part.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"MSA2Net expects input (B, {self.in_channels}, {self.img_size}, {self.img_size}), got {list(x.shape)}."
            )
        if x.shape[2] != self.img_size or x.shape[3] != self.img_size:
            raise ValueError(
                f"MSA2Net only accepts {self.img_size}x{self.img_size} slices (MaxViT windows of 7); got "
                f"{x.shape[2]}x{x.shape[3]}. Resize slices first (the bundle's inferer does this)."
            )
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        features = self.encoder(x)
        deepest = features[-1]
        b, _, h, w = deepest.shape
        tokens = self.bottleneck_up(deepest.flatten(2).transpose(1, 2), h, w)
        # Stages run deep to shallow; stage i fuses the (i+2)-th deepest feature.
        for i, stage in enumerate(self.stages):
            tokens = stage(tokens, features[len(features) - 2 - i])
        h, w = features[0].shape[2] * 4, features[0].shape[3] * 4
        image = tokens.view(b, h, w, tokens.shape[-1]).permute(0, 3, 1, 2)
        return self.head(image)
