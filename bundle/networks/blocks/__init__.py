"""Building blocks, one concept per module, each with the paper's equations in its docstring."""

from bundle.networks.blocks.dae_former import DAEFormerBlock
from bundle.networks.blocks.decoder_stage import DecoderStage
from bundle.networks.blocks.lka import LKABlock
from bundle.networks.blocks.masag import MASAG, SkipAdd
from bundle.networks.blocks.patch_expand import PatchExpand

__all__ = ["MASAG", "SkipAdd", "LKABlock", "DAEFormerBlock", "PatchExpand", "DecoderStage"]
