"""Write a model-zoo-ready zip of this bundle: top folder = bundle name, code, configs, docs, weights.

``monai.bundle.load()`` reads only ``configs/<workflow>.json``, so JSON copies of the YAML configs are generated
into the zip (the YAML files stay the source of truth). Weights: ``--weights`` (or ``models/model.pt``) and
``models/model.ts`` go into the zip; ``--weights_url`` instead writes ``large_files.yml`` (URL + sha256 of the
weights, for ``monai.bundle download_large_files``) and leaves the weights out, as the zoo asks for files > 1 MB.

The zip's ``configs/metadata.json`` states the geometry the weights were trained with (their ``geometry`` entry:
axcodes, pixel size, body crop), and a ``model.ts`` is shipped only when its own ``metadata.json`` states the same
(``scripts/model/export_torchscript.py`` writes it so); otherwise packaging stops with the command that fixes it.

Example::

    python scripts/release/package_bundle.py --out dist/                      # models/model.pt inside the zip
    python scripts/release/package_bundle.py --weights_url https://host/model.pt   # large_files.yml instead
    python -m monai.bundle download --name msa2net_synapse_ct_segmentation \\
        --url file://$PWD/dist/msa2net_synapse_ct_segmentation_v0.1.0.zip --bundle_dir ./hub
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import yaml

from bundle.errors import InputError, run_script
from bundle.io.provenance import file_sha256
from bundle.transforms.geometry import Geometry, checkpoint_geometry, metadata_with_geometry

ROOT = Path(__file__).resolve().parents[2]

NAME = "msa2net_synapse_ct_segmentation"
INCLUDE_DIRS = ["bundle", "configs", "docs", "scripts"]
INCLUDE_FILES = ["LICENSE", "README.md", "large_files.yml", "pyproject.toml", "models/README.md"]
WEIGHTS = "models/model.pt"
SKIP_PARTS = {"__pycache__", ".pytest_cache"}
SKIP_SUFFIXES = {".pyc", ".tmp"}


def _files():
    for d in INCLUDE_DIRS:
        for path in sorted((ROOT / d).rglob("*")):
            if path.is_file() and not SKIP_PARTS & set(path.parts) and path.suffix not in SKIP_SUFFIXES:
                yield path
    for f in INCLUDE_FILES:
        if (ROOT / f).is_file():
            yield ROOT / f


def write_large_files(weights: Path, url: str, dest: Path = ROOT / "large_files.yml") -> Path:
    """``large_files.yml`` in the zoo's format: where ``models/model.pt`` is hosted and its sha256."""
    entry = {"path": WEIGHTS, "url": url, "hash_val": file_sha256(str(weights)), "hash_type": "sha256"}
    text = yaml.safe_dump({"large_files": [entry]}, sort_keys=False)
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, dest)
    return dest


def ts_geometry(ts: Path) -> Geometry:
    """The geometry a TorchScript file's own ``metadata.json`` states (the official one when it has none)."""
    import torch

    files = {"metadata.json": ""}
    torch.jit.load(str(ts), map_location="cpu", _extra_files=files)
    image = json.loads(files["metadata.json"] or "{}").get("network_data_format", {}).get("inputs", {}).get("image", {})
    return Geometry(
        image.get("axcodes", "PLS"),
        image.get("pixel_size_mm"),
        bool(image.get("crop_body", False)),
        image.get("slice_window", "whole"),
    )


def _json_configs() -> dict:
    """JSON renderings of each YAML config, for ``monai.bundle.load``."""
    from monai.bundle import ConfigParser

    out = {}
    for yaml_path in sorted((ROOT / "configs").glob("*.yaml")):
        out[f"configs/{yaml_path.stem}.json"] = json.dumps(ConfigParser.load_config_file(yaml_path), indent=4) + "\n"
    return out


def main(
    out: str = "dist", name: str = NAME, weights: str = "", ts: str = "", weights_url: str = "", include_ts: bool = True
) -> str:
    """Write ``<out>/<name>_v<version>.zip`` atomically and return its path.

    Args:
        out: output folder.
        name: bundle name (the zip's top folder).
        weights: checkpoint to ship as ``models/model.pt`` (default: ``models/model.pt`` when present).
        ts: TorchScript file to ship as ``models/model.ts`` (default: ``models/model.ts`` when present).
        weights_url: where the weights are hosted: writes ``large_files.yml`` and leaves the weights out.
        include_ts: ship ``models/model.ts`` when present (it must state the weights' geometry).

    Raises:
        InputError: a named file is missing, no weights at all, or the ``.ts`` states another geometry.
    """
    meta = json.loads((ROOT / "configs/metadata.json").read_text())
    version = meta["version"]
    weights_path = Path(weights) if weights else ROOT / WEIGHTS
    ts_path = Path(ts) if ts else ROOT / "models/model.ts"
    for given, path in ((weights, weights_path), (ts, ts_path)):
        if given and not path.is_file():
            raise InputError(f"{path}: no such file (--weights / --ts name a file to ship).")
    if weights_url:
        if not weights_path.is_file():
            raise InputError(f"--weights_url needs the weights to hash: {weights_path} is missing.")
        print(f"wrote {write_large_files(weights_path, weights_url)}")
    elif not weights_path.is_file() and not (ROOT / "large_files.yml").is_file():
        raise InputError(
            f"No weights ({weights_path}) and no large_files.yml: the zip would carry no weights. "
            "Train first, or pass --weights <checkpoint>."
        )
    if weights_path.is_file():  # the metadata states what the shipped weights need, not the config's defaults
        geometry = checkpoint_geometry(ckpt_path=str(weights_path))
        meta = metadata_with_geometry(meta, geometry)
        stated = ts_geometry(ts_path) if include_ts and ts_path.is_file() and not weights_url else geometry
        if stated != geometry:
            raise InputError(
                f"{ts_path} states {stated.describe()} but the weights {weights_path} were trained with "
                f"{geometry.describe()}: re-export it with python scripts/model/export_torchscript.py --ckpt "
                f"{weights_path} --out {ts_path}, or pass --include_ts False to ship no .ts."
            )
    # hosted weights: no file over the zoo's 1 MB limit goes into the zip (export model.ts after download)
    extra = {} if weights_url else {WEIGHTS: weights_path, **({"models/model.ts": ts_path} if include_ts else {})}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}_v{version}.zip"
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".tmp")
    os.close(fd)
    count = 0
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in _files():
            arcname = path.relative_to(ROOT).as_posix()
            if arcname == "configs/metadata.json":
                zf.writestr(f"{name}/{arcname}", json.dumps(meta, indent=4) + "\n")
            else:
                zf.write(path, f"{name}/{arcname}")
            count += 1
        for arcname, path in extra.items():
            if path.is_file():
                zf.write(path, f"{name}/{arcname}")
                count += 1
        for arcname, text in _json_configs().items():
            zf.writestr(f"{name}/{arcname}", text)
            count += 1
    os.replace(tmp, target)  # never a truncated zip under the final name
    print(f"wrote {target} ({count} files, {target.stat().st_size / 1e6:.1f} MB)")
    return str(target)


if __name__ == "__main__":
    run_script(main)
