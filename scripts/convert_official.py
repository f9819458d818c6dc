"""Convert an official MSA²Net checkpoint (github.com/xmindflow/MSA-2Net) to this bundle's format.

Example::

    python scripts/convert_official.py --src msa2net_seed_1234_epoch_699.pth --dst models/model.pt --variant released

The result is a plain state dict that ``MSA2Net(variant=...)`` loads with ``strict=True``; the keys of modules
the official model builds but never runs are dropped and listed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bundle.networks import MSA2Net  # noqa: E402
from bundle.networks.convert import convert_official_state_dict, official_variant_of, read_checkpoint  # noqa: E402


def main(src: str, dst: str = "models/model.pt", variant: str = "auto", verbose: bool = False) -> None:
    """Convert ``src`` to ``dst``; ``variant`` is ``released``, ``paper`` or ``auto`` (read from the keys)."""
    state = read_checkpoint(src)
    if variant == "auto":
        variant = official_variant_of(state)
    converted, report = convert_official_state_dict(state, variant=variant)
    # The proof that the result is usable: a strict load into our network.
    MSA2Net(in_channels=1, out_channels=report.out_channels, variant=variant).load_state_dict(converted, strict=True)
    dst_path = Path(dst)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dst_path.parent, suffix=".tmp", delete=False) as tmp:
        torch.save(converted, tmp.name)
    os.replace(tmp.name, dst_path)  # atomic: never a truncated file under the final name
    print(report.summary())
    if verbose:
        for key, why in sorted(report.dropped.items()):
            print(f"  dropped {key}: {why}")
    print(f"wrote {dst_path} (load with MSA2Net(out_channels={report.out_channels}, variant='{variant}'))")


if __name__ == "__main__":
    fire.Fire(main)
