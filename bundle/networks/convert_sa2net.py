"""Official SA2-Net checkpoint (github.com/mustansarfiaz/SA2-Net, ``MyNet`` in ``sasanet.py``) → :class:`SA2Net`.

The official model builds modules its forward never calls (``Multi_scale_Fuse1-3``, every AuA gate's
``AG.weight`` branch, the ``dwconv3x3_1``/``dwconv5x5_1`` of every LSA) and, without deep supervision, ours
does not build the auxiliary heads ``outc1-3``. Those keys are dropped and listed; every other key is renamed
one to one and checked against the target model's keys and shapes, so that
``SA2Net(...).load_state_dict(converted, strict=True)`` succeeds or the conversion fails with a reason.

Command line (writes a raw state dict)::

    python scripts/model/convert_official.py --network sa2net --src official.pth --dst sa2net.pt [--deep_supervision]
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch

from bundle.networks.convert_msa2net import state_dict_mismatch, summarize_conversion, unwrap_state_dict
from bundle.networks.sa2net import SA2Net

__all__ = ["SA2NetConversionReport", "rename_official_key", "convert_official_state_dict"]

# Keys every official MyNet state dict has (one per part); used to recognise the architecture.
_SIGNATURE = ("inc.conv.weight", "bottleneck.gcn1.project_in.weight", "up1.AG.psi.0.weight", "outc4.weight")

# Dead modules of the official model: (pattern, reason).
_DEAD: List[Tuple[str, str]] = [
    (r"^Multi_scale_Fuse\d\.", "Multi_scale_Fuse1-3: constructed, never called"),
    (r"^bottleneck\.gcn\d\.dwconv(3x3|5x5)_1\.", "LSA dwconv3x3_1/dwconv5x5_1: constructed, never called"),
    (r"^up\d\.AG\.weight\.", "AuA AG.weight branch: constructed, never called"),
]
_AUX_REASON = "auxiliary head outc1-3: not built without deep_supervision"

_Rule = Tuple[str, Callable[["re.Match[str]"], str]]
# Official key prefix -> ours; ``m`` is the match of the prefix pattern, the key's remainder is appended.
_RULES: List[_Rule] = [
    (r"^inc\.(conv|norm)\.", lambda m: f"encoder.0.{m[1]}."),
    (r"^down(\d)\.nConvs\.(\d)\.(conv|norm)\.", lambda m: f"encoder.{m[1]}.{int(m[2]) + 1}.{m[3]}."),
    (r"^side_conv(\d)\.", lambda m: f"side_convs.{int(m[1]) - 2}."),
    (r"^bottleneck\.bn\.", lambda m: "sa2.fuse_norm."),
    (r"^bottleneck\.conv\.", lambda m: "sa2.fuse_conv."),
    (r"^bottleneck\.qconv\.", lambda m: "sa2.query_conv."),
    (r"^bottleneck\.conv(\d)\.", lambda m: f"sa2.out_convs.{int(m[1]) - 1}."),
    (r"^bottleneck\.gcn(\d)\.(project_in|project_out)\.", lambda m: f"sa2.local.{int(m[1]) - 1}.{m[2]}."),
    (r"^bottleneck\.gcn(\d)\.dwconv(3|5)x\d\.", lambda m: f"sa2.local.{int(m[1]) - 1}.dwconv{m[2]}."),
    (r"^bottleneck\.mlp(\d)\.(norm|pos|fc1|fc2)\.", lambda m: f"sa2.mlps.{int(m[1]) - 1}.{m[2]}."),
    # up4 is the deepest decoder step: decoder.0
    (r"^up(\d)\.AG\.dwconv\.0\.", lambda m: f"decoder.{4 - int(m[1])}.gate.gate_norm."),
    (r"^up(\d)\.AG\.dwconv\.1\.", lambda m: f"decoder.{4 - int(m[1])}.gate.gate_proj."),
    (r"^up(\d)\.AG\.dwconv\.3\.", lambda m: f"decoder.{4 - int(m[1])}.gate.gate_dwconv."),
    (r"^up(\d)\.AG\.conv\.0\.", lambda m: f"decoder.{4 - int(m[1])}.gate.skip_dwconv."),
    (r"^up(\d)\.AG\.proj\.", lambda m: f"decoder.{4 - int(m[1])}.gate.proj."),
    (r"^up(\d)\.AG\.psi\.0\.", lambda m: f"decoder.{4 - int(m[1])}.gate.psi."),
    (r"^up(\d)\.AG\.psi\.1\.", lambda m: f"decoder.{4 - int(m[1])}.gate.psi_norm."),
    (r"^up(\d)\.nConvs\.(\d)\.(conv|norm)\.", lambda m: f"decoder.{4 - int(m[1])}.convs.{m[2]}.{m[3]}."),
    (r"^outc4\.", lambda m: "head."),
    # official train-mode order after the main head: outc3 (stride 2), outc2 (stride 4), outc1 (stride 8)
    (r"^outc([123])\.", lambda m: f"aux_heads.{3 - int(m[1])}."),
]


@dataclass
class SA2NetConversionReport:
    """What a conversion found and did: the inferred configuration, kept tensors, dropped keys (with why)."""

    in_channels: int
    out_channels: int
    base_channels: int
    deep_supervision: bool
    converted: int = 0
    dropped: Dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        what = (
            f"SA2Net(in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"base_channels={self.base_channels}, deep_supervision={self.deep_supervision})"
        )
        return summarize_conversion(what, self)


def rename_official_key(key: str, deep_supervision: bool = True) -> Tuple[Optional[str], str]:
    """Our name for an official key, or ``(None, reason)`` for a key of a module that ours does not build.

    Raises:
        ValueError: for a key that no official SA2-Net module has.
    """
    for pattern, reason in _DEAD:
        if re.match(pattern, key):
            return None, reason
    if not deep_supervision and re.match(r"^outc[123]\.", key):
        return None, _AUX_REASON
    for pattern, repl in _RULES:
        m = re.match(pattern, key)
        if m is not None:
            return repl(m) + key[m.end() :], ""
    raise ValueError(f"Key {key!r} belongs to no module of the official SA2-Net (MyNet).")


def _describe(state: Mapping[str, torch.Tensor]) -> str:
    prefixes = sorted({k.split(".")[0] for k in state})
    guess = ""
    if {"encoder", "sa2", "decoder", "head"} <= set(prefixes):
        guess = " This is already this package's SA2Net layout: load it directly, without converting."
    elif any(p.startswith("backbone") for p in prefixes) and any(p.startswith("decoder_") for p in prefixes):
        guess = " This looks like an MSA²Net checkpoint: use bundle.networks.convert_msa2net instead."
    elif "mtc" in prefixes:
        guess = " This looks like UCTransNet (the baseline in the same repository), not SA2-Net."
    shown = ", ".join(prefixes[:12]) + (", ..." if len(prefixes) > 12 else "")
    return f"found {len(state)} keys with top-level prefixes [{shown}].{guess}"


def convert_official_state_dict(
    state: Mapping[str, torch.Tensor], deep_supervision: bool = False
) -> Tuple["OrderedDict[str, torch.Tensor]", SA2NetConversionReport]:
    """Convert an official SA2-Net state dict to :class:`SA2Net` keys.

    The configuration is read from the tensors: ``in_channels`` and ``base_channels`` from ``inc.conv.weight``,
    ``out_channels`` from ``outc4.weight``. A checkpoint wrapped under ``state_dict``/``model`` or with
    ``module.`` prefixes is accepted.

    Args:
        state: the official state dict (or a checkpoint dict holding it).
        deep_supervision: convert for ``SA2Net(..., deep_supervision=True)`` (keeps ``outc1-3`` as
            ``aux_heads``); with False they are dropped.

    Returns:
        The converted state dict, which loads into ``SA2Net(report.in_channels, report.out_channels,
        report.base_channels, deep_supervision)`` with ``strict=True``, and a report listing dropped keys.

    Raises:
        ValueError: if the state dict is not an official SA2-Net one (the message says what it found), has keys
            no SA2-Net module has, lacks keys, or holds tensors of other shapes.

    Examples::

        >>> state = bundle.io.checkpoint.read_state_dict("official_monuseg.pth")  # doctest: +SKIP
        >>> converted, report = convert_official_state_dict(state)  # doctest: +SKIP
        >>> SA2Net(report.in_channels, report.out_channels).load_state_dict(converted, strict=True)  # doctest: +SKIP
    """
    state = unwrap_state_dict(state, "The given object")
    missing_sig = [k for k in _SIGNATURE if k not in state]
    if missing_sig:
        raise ValueError(
            f"Not an official SA2-Net (MyNet) state dict: it lacks {', '.join(missing_sig)}; " + _describe(state)
        )
    stem = state["inc.conv.weight"]
    report = SA2NetConversionReport(
        in_channels=int(stem.shape[1]),
        out_channels=int(state["outc4.weight"].shape[0]),
        base_channels=int(stem.shape[0]),
        deep_supervision=bool(deep_supervision),
    )
    converted: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in state.items():
        new_key, why = rename_official_key(key, deep_supervision)
        if new_key is None:
            report.dropped[key] = why
        else:
            converted[new_key] = value
    _check_against_model(converted, report)
    report.converted = len(converted)
    return converted, report


def _check_against_model(converted: Mapping[str, torch.Tensor], report: SA2NetConversionReport) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        expected = SA2Net(
            report.in_channels, report.out_channels, report.base_channels, report.deep_supervision
        ).state_dict()
    problems = state_dict_mismatch(expected, converted)
    if problems:
        raise ValueError(
            f"The checkpoint does not fit SA2Net(in_channels={report.in_channels}, out_channels="
            f"{report.out_channels}, base_channels={report.base_channels}, deep_supervision="
            f"{report.deep_supervision}) after renaming: " + "; ".join(problems) + ". It may be truncated or come "
            "from a modified SA2-Net."
        )
