"""Parameters per part, MACs and output shape of an MSA²Net variant.

Example::

    python scripts/model/model_info.py --variant paper
    python scripts/model/model_info.py --variant all --json docs/model_info.json
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bundle.errors import run_script
from bundle.networks import VARIANTS, MSA2Net
from bundle.networks.info import count_macs, parameters_by_part


def describe(variant: str, in_channels: int = 1, out_channels: int = 9) -> dict:
    net = MSA2Net(in_channels=in_channels, out_channels=out_channels, variant=variant).eval()
    with torch.no_grad():
        shape = list(net(torch.zeros(1, in_channels, 224, 224)).shape)
    return {
        "variant": variant,
        "config": {k: v for k, v in vars(net.config).items()},
        "parameters": parameters_by_part(net),
        "macs_224": count_macs(net, (1, in_channels, 224, 224)),
        "output_shape": shape,
    }


def main(variant: str = "paper", in_channels: int = 1, out_channels: int = 9, json_out: str = "") -> None:
    """Print the accounting for ``variant`` (or ``all``); optionally write it as JSON."""
    names = list(VARIANTS) if variant == "all" else [variant]
    infos = [describe(v, in_channels, out_channels) for v in names]
    for info in infos:
        print(
            f"== {info['variant']}  output {info['output_shape']}  "
            f"{info['macs_224']['gmacs']:.3f} GMACs ({info['macs_224']['gflops']:.3f} GFLOPs) at 224x224"
        )
        for part, n in info["parameters"].items():
            print(f"  {part:<48s} {n:>12,d}")
    if json_out:
        Path(json_out).write_text(json.dumps(infos, indent=4, default=list) + "\n")  # the zoo's JSON format


if __name__ == "__main__":
    run_script(main)
