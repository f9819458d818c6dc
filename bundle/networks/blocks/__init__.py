"""Building blocks, one concept per module, each with the paper's equations in its docstring."""

from .dae_former import DAEFormerBlock
from .decoder_stage import DecoderStage
from .lka import LKABlock
from .masag import MASAG, SkipAdd
from .patch_expand import PatchExpand

__all__ = ["MASAG", "SkipAdd", "LKABlock", "DAEFormerBlock", "PatchExpand", "DecoderStage"]
