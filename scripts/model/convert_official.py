"""Convert an official MSA²Net or SA2-Net checkpoint to this bundle's format: the one converter command.

Examples::

    python scripts/model/convert_official.py --src msa2net_seed_1234_epoch_699.pth --dst models/model.pt
    python scripts/model/convert_official.py --network sa2net --src monuseg.pth --dst sa2net.pt --deep_supervision True

The result is a plain state dict that the network loads with ``strict=True`` (proved here before anything is
written); the keys of modules the official model builds but never runs are dropped and listed. The key maps live
beside each network (``bundle/networks/convert_msa2net.py`` for MSA²Net, ``bundle/networks/convert_sa2net.py`` for SA2-Net).
"""

from __future__ import annotations

import json

import torch

from bundle.errors import InputError, run_script
from bundle.io.atomic import atomic_path, atomic_write_text
from bundle.io.checkpoint import read_state_dict
from bundle.networks import MSA2Net, SA2Net
from bundle.networks import convert_msa2net as msa2net_keys
from bundle.networks import convert_sa2net as sa2net_keys


def main(
    src: str,
    dst: str = "models/model.pt",
    network: str = "msa2net",
    variant: str = "auto",
    deep_supervision: bool = False,
    mapping: str = "",
    verbose: bool = False,
) -> None:
    """Convert ``src`` to ``dst``.

    Args:
        src: the official checkpoint (.pth/.pt; a raw state dict or one under ``state_dict``/``model``).
        dst: where to write the converted state dict (atomically).
        network: ``msa2net`` or ``sa2net``.
        variant: MSA²Net only: ``released``, ``paper`` or ``auto`` (read from the keys).
        deep_supervision: SA2-Net only: keep the official ``outc1-3`` heads as ``aux_heads``.
        mapping: SA2-Net only: also write ``{official_key: our_key or null}`` as JSON here.
        verbose: list every dropped key.
    """
    state = read_state_dict(src)
    if network == "msa2net":
        if variant == "auto":
            variant = msa2net_keys.official_variant_of(state)
        converted, report = msa2net_keys.convert_official_state_dict(state, variant=variant)
        net = MSA2Net(in_channels=1, out_channels=report.out_channels, variant=variant)
        how = f"MSA2Net(out_channels={report.out_channels}, variant='{variant}')"
    elif network == "sa2net":
        converted, report = sa2net_keys.convert_official_state_dict(state, deep_supervision=deep_supervision)
        net = SA2Net(report.in_channels, report.out_channels, report.base_channels, deep_supervision=deep_supervision)
        how = f"SA2Net({report.in_channels}, {report.out_channels}, {report.base_channels}, {deep_supervision})"
        if mapping:
            keys = {k: sa2net_keys.rename_official_key(k, deep_supervision)[0] for k in state}
            atomic_write_text(mapping, json.dumps(keys, indent=1))
    else:
        raise InputError(f"--network {network!r}: give msa2net or sa2net.")
    net.load_state_dict(converted, strict=True)  # the proof that the result is usable
    with atomic_path(dst) as tmp:
        torch.save(converted, tmp)
    print(report.summary())
    if verbose:
        for key, why in sorted(report.dropped.items()):
            print(f"  dropped {key}: {why}")
    print(f"wrote {dst} (load with {how})")


if __name__ == "__main__":
    run_script(main)
