"""Export a trained checkpoint to TorchScript (``models/model.ts``) with the geometry it was trained with.

MONAI's ``ckpt_export`` writes the ``--meta_file`` it is given into the ``.ts`` (its ``metadata.json``), and the
bundle's ``configs/metadata.json`` states the official geometry (PLS, whole-slice resize, no body crop). This runs
the same ``ckpt_export`` with that file restated from the checkpoint's own ``geometry`` entry, so the ``.ts`` says
what the weights need; ``configs/inference_ts.yaml`` applies its storage order and refuses a pixel size or body crop
(MONAI's own transforms cannot apply them; ``configs/inference.yaml`` with the checkpoint does).

Example::

    python scripts/model/export_torchscript.py --ckpt models/model.pt --out models/model.ts
"""

from __future__ import annotations

import json
import os
import tempfile

from bundle.errors import InputError, run_script
from bundle.io.atomic import atomic_path
from bundle.transforms.geometry import checkpoint_geometry, metadata_with_geometry

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

META = os.path.join(ROOT, "configs", "metadata.json")
CONFIG = os.path.join(ROOT, "configs", "inference.yaml")


def main(ckpt: str = "models/model.pt", out: str = "models/model.ts", config_file: str = CONFIG) -> None:
    """Write ``out`` (atomically) from ``ckpt``.

    Args:
        ckpt: a checkpoint this bundle wrote (``{"model": weights, "geometry": …}``) or a bare state dict
            (converted official weights: the official geometry).
        out: the TorchScript file to write.
        config_file: the config whose ``network_def`` is exported (its ``variant``/``num_classes`` must match).

    Raises:
        InputError: the checkpoint is missing, unreadable or for another network.
    """
    import torch
    from monai.bundle import ckpt_export

    geometry = checkpoint_geometry(ckpt_path=ckpt)  # official for a bare state dict; InputError if unreadable
    state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    with open(META) as f:
        meta = metadata_with_geometry(json.load(f), geometry)
    with tempfile.TemporaryDirectory() as tmp:
        meta_file = os.path.join(tmp, "metadata.json")
        with open(meta_file, "w") as f:
            json.dump(meta, f)
        with atomic_path(out) as tmp_out:
            try:
                ckpt_export(
                    net_id="network_def",
                    filepath=str(tmp_out),
                    ckpt_file=str(ckpt),
                    meta_file=meta_file,
                    config_file=config_file,
                    key_in_ckpt="model" if "model" in state else "",
                    bundle_root=ROOT,
                )
            except RuntimeError as err:  # torch's strict load: name the likely fix, not 50 KB of keys
                raise InputError(
                    f"checkpoint {ckpt} does not fit the network_def of {config_file} ({str(err).splitlines()[0][:160]}"
                    "): pass the --variant / --num_classes it was trained with as overrides of that config."
                ) from None
    note = "" if geometry.official else "; configs/inference_ts.yaml refuses it (use configs/inference.yaml)"
    print(f"wrote {out} ({geometry.describe()}{note})")


if __name__ == "__main__":
    run_script(main)
