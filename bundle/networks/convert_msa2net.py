"""Official MSA²Net checkpoint (github.com/xmindflow/MSA-2Net) → this package's :class:`MSA2Net` state dict.

The official model builds modules that never run (the whole deepest decoder stage but its patch expanding,
the unused 1→3 input adapter, and in the released file the 14×14 MASAG); their keys are dropped and listed.
Everything else is renamed one to one and checked against the target model's keys and shapes, so that
``MSA2Net.load_state_dict(converted, strict=True)`` succeeds or the conversion fails with a reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from bundle.networks.msa2net import VARIANTS, MSA2Net

__all__ = [
    "ConversionReport",
    "convert_official_state_dict",
    "official_variant_of",
    "summarize_conversion",
    "unwrap_state_dict",
]

# Stage-local renames, applied to the part of a key after ``decoder_k.``; first match wins.
_STAGE_RULES: List[Tuple[str, str]] = [
    (r"^x1_linear\.", "gate_proj."),
    (r"^ag_attn_norm\.", "norm."),
    (r"^ag_attn\.multi\.local\.dconv\.(\d+)\.", r"gate.local_context.\1."),
    (r"^ag_attn\.multi\.local\.proj\.0\.", "gate.local_context.6."),
    (r"^ag_attn\.multi\.local\.proj\.1\.", "gate.local_context.7."),
    (r"^ag_attn\.multi\.global_\.proj\.(\d+)\.", r"gate.global_context.\1."),
    (r"^ag_attn\.multi\.bn\.", "gate.fuse_norm."),
    (r"^ag_attn\.selection\.", "gate.selection."),
    (r"^ag_attn\.proj\.", "gate.recalibration."),
    (r"^ag_attn\.bn\.", "gate.recalibration_norm."),
    (r"^ag_attn\.conv_block\.0\.", "gate.out_proj."),
    (r"^ag_attn\.bn_2\.", "gate.out_norm."),
    (r"^layer_up\.", "upsample."),
]
# layer_lka_1 / tran_layer1 -> blocks.layers.0, ..._2 -> blocks.layers.1
_BLOCK_PATTERN = r"^(?:layer_lka_|tran_layer)(\d)\."
# inside a block: official wrapper modules that ours does without
_INNER_RULES: List[Tuple[str, str]] = [
    (r"\.attn\.spatial_gating_unit\.", ".attn.lka."),
    (r"\.mlp(\d?)\.dwconv\.dwconv\.", r".mlp\1.dwconv."),
]
# official decoder index -> our stage index (decoder_3 has no skip and is only the bottleneck's patch expanding)
_STAGE_OF_DECODER = {"2": 0, "1": 1, "0": 2}


@dataclass
class ConversionReport:
    """What a conversion did: kept tensors, dropped dead keys (with why) and what was inferred."""

    variant: str
    out_channels: int
    converted: int = 0
    dropped: Dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return summarize_conversion(f"variant={self.variant} out_channels={self.out_channels}", self)


def summarize_conversion(what: str, report) -> str:
    """``<what>: N tensors converted`` and one line per reason with the number of keys dropped for it."""
    reasons: Dict[str, int] = {}
    for why in report.dropped.values():
        reasons[why] = reasons.get(why, 0) + 1
    lines = [f"{what}: {report.converted} tensors converted"]
    lines += [f"  dropped {n} keys: {why}" for why, n in sorted(reasons.items())]
    return "\n".join(lines)


def unwrap_state_dict(obj: object, where: str) -> Dict[str, torch.Tensor]:
    """The state dict of tensors in ``obj``: bare, or under ``model`` / ``state_dict`` / ``state_dict_ema``;
    ``module.`` (DataParallel/DDP) prefixes removed.

    Raises:
        ValueError: ``obj`` holds no non-empty state dict of tensors (``where`` names it in the message).
    """
    for key in ("model", "state_dict", "state_dict_ema"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{where} does not hold a state dict of tensors (found {type(obj).__name__}): give a raw state dict "
            "or one under 'model' or 'state_dict'."
        )
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


def official_variant_of(state: Mapping[str, torch.Tensor]) -> str:
    """Tell which official definition produced ``state``: ``"paper"`` (DAE-Former blocks) or ``"released"``."""
    if not any(k.startswith("backbone.backbone.") for k in state) or "decoder_0.last_layer.weight" not in state:
        sample = ", ".join(list(state)[:5])
        raise ValueError(
            "Not an official MSA²Net checkpoint: expected keys 'backbone.backbone.*' and "
            f"'decoder_0.last_layer.weight', found e.g. {sample}."
        )
    return "paper" if any(k.startswith("decoder_2.tran_layer") for k in state) else "released"


def _rename(key: str, masag_at: Tuple[bool, bool, bool]) -> Tuple[Optional[str], str]:
    """Our name for an official key, or ``(None, reason)`` for a key of a module that never runs."""
    if key.startswith("backbone.backbone."):
        return "encoder.model." + key[len("backbone.backbone.") :], ""
    if key.startswith("backbone.conv."):
        return None, "unused 1->3 input adapter (grey input is repeated to 3 channels instead)"
    if key.startswith("decoder_3.layer_up."):
        return "bottleneck_up." + key[len("decoder_3.layer_up.") :], ""
    if key.startswith("decoder_3."):
        return None, "deepest decoder stage has no skip: only its patch expanding runs"
    if key.startswith("decoder_0.last_layer."):
        return "head." + key[len("decoder_0.last_layer.") :], ""
    match = re.match(r"^decoder_([012])\.(.*)$", key)
    if match is None:
        return key, ""  # not ours: reported as unexpected by the shape check
    stage = _STAGE_OF_DECODER[match.group(1)]
    rest = match.group(2)
    if rest.startswith("ag_attn.") and not masag_at[stage]:
        return None, "MASAG built but never called (released 14x14 stage)"
    block = re.match(_BLOCK_PATTERN, rest)
    if block is not None:
        inner = "." + rest[block.end() :]
        for pattern, repl in _INNER_RULES:
            inner = re.sub(pattern, repl, inner)
        return f"stages.{stage}.blocks.layers.{int(block.group(1)) - 1}{inner}", ""
    for pattern, repl in _STAGE_RULES:
        if re.match(pattern, rest):
            return f"stages.{stage}." + re.sub(pattern, repl, rest, count=1), ""
    return f"stages.{stage}.{rest}", ""


def convert_official_state_dict(
    state: Mapping[str, torch.Tensor], variant: str = "released"
) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """Convert an official MSA²Net state dict to ours for ``variant`` (``"released"`` or ``"paper"``).

    Args:
        state: the official state dict (``module.`` already stripped, see :func:`bundle.io.checkpoint.read_state_dict`).
        variant: which of our variants the checkpoint must become; it must match what the checkpoint holds.

    Returns:
        The converted state dict (loads into ``MSA2Net(..., variant=variant)`` with ``strict=True``) and a report.

    Raises:
        ValueError: if the checkpoint is not MSA²Net, is of the other variant, or its tensors do not fit.
    """
    if variant not in ("released", "paper"):
        raise ValueError(f"Official checkpoints exist for variants 'released' and 'paper' only, got {variant!r}.")
    found = official_variant_of(state)
    if found != variant:
        what = "DAE-Former blocks (decoder_2.tran_layer*)" if found == "paper" else "LKA blocks (decoder_2.layer_lka*)"
        raise ValueError(
            f"This checkpoint holds {what}: it is a '{found}' checkpoint, not '{variant}'. Use --variant {found}."
        )
    out_channels = int(state["decoder_0.last_layer.weight"].shape[0])
    report = ConversionReport(variant=variant, out_channels=out_channels)
    masag_at = VARIANTS[variant].stage_masag
    converted: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new_key, why = _rename(key, masag_at)
        if new_key is None:
            report.dropped[key] = why
            continue
        converted[new_key] = value
    _check_against_model(converted, variant, out_channels)
    report.converted = len(converted)
    return converted, report


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], converted: Mapping[str, torch.Tensor]) -> List[str]:
    """What keeps ``converted`` from loading strictly into a model whose state dict is ``expected``.

    Returns:
        Readable counts with examples (missing keys, unexpected keys, keys of other shapes), in model order;
        empty when a strict load would succeed.
    """
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in converted and converted[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} with other shapes (e.g. {'; '.join(wrong[:3])})")
    return problems


def _check_against_model(converted: Mapping[str, torch.Tensor], variant: str, out_channels: int) -> None:
    expected = MSA2Net(in_channels=3, out_channels=out_channels, variant=variant).state_dict()
    problems = state_dict_mismatch(expected, converted)
    if problems:
        raise ValueError(
            f"The checkpoint does not match MSA2Net variant '{variant}' with {out_channels} classes: "
            + "; ".join(problems)
            + ". It may come from a modified architecture or another encoder."
        )
