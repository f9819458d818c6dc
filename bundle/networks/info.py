"""Parameter and MAC accounting for MSA²Net variants (used by ``scripts/model/model_info.py`` and the docs)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_parameters", "parameters_by_part", "count_macs"]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameters_by_part(net: nn.Module) -> "OrderedDict[str, int]":
    """Parameters of the encoder, the bottleneck patch expanding, each stage's parts, and the head."""
    parts: "OrderedDict[str, int]" = OrderedDict()
    parts["encoder"] = count_parameters(net.encoder)
    parts["bottleneck_up"] = count_parameters(net.bottleneck_up)
    for i, stage in enumerate(net.stages):
        for name, child in stage.named_children():
            parts[f"stages.{i}.{name} ({type(child).__name__})"] = count_parameters(child)
    parts["head"] = count_parameters(net.head)
    parts["total"] = count_parameters(net)
    return parts


def count_macs(net: nn.Module, input_shape=(1, 1, 224, 224)) -> Dict[str, float]:
    """Multiply-accumulates with ``torch.utils.flop_counter`` (matmul/conv only; MACs = FLOPs / 2).

    FlopCounterMode does not count timm's fused scaled-dot-product attention on CPU, so attention is
    switched to explicit matmuls while counting (as the official timm-0.6 encoder computes it); this makes
    the figures comparable with the official 15.40 / 14.18 GMACs.
    """
    was_training = net.training
    fused = [(m, m.fused_attn) for m in net.modules() if hasattr(m, "fused_attn")]
    net.eval()
    counter = FlopCounterMode(display=False)
    try:
        for m, _ in fused:
            m.fused_attn = False
        with torch.no_grad(), counter:
            net(torch.zeros(input_shape))
    finally:
        for m, flag in fused:
            m.fused_attn = flag
        net.train(was_training)
    flops = counter.get_total_flops()
    return {"gflops": flops / 1e9, "gmacs": flops / 2e9}
