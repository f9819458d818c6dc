"""Write a model-zoo-ready zip of this bundle: top folder = bundle name, code, configs, docs, weights.

``monai.bundle.load()`` reads only ``configs/<workflow>.json``, so JSON copies of the YAML configs are generated
into the zip (the YAML files stay the source of truth). Weights: ``models/model.pt`` (and ``model.ts``) when
present, else ``large_files.yml`` tells ``download_large_files`` where to get them.

Example::

    python scripts/package_bundle.py --out dist/
    python -m monai.bundle download --name msa2net_synapse_ct_segmentation \\
        --url file://$PWD/dist/msa2net_synapse_ct_segmentation_v0.1.0.zip --bundle_dir ./hub
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import fire

ROOT = Path(__file__).resolve().parents[1]
NAME = "msa2net_synapse_ct_segmentation"
INCLUDE_DIRS = ["bundle", "configs", "docs", "scripts"]
INCLUDE_FILES = ["LICENSE", "README.md", "large_files.yml", "pyproject.toml", "models/model.pt", "models/model.ts"]
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


def _json_configs() -> dict:
    """JSON renderings of each YAML config, for ``monai.bundle.load``."""
    from monai.bundle import ConfigParser

    out = {}
    for yaml_path in sorted((ROOT / "configs").glob("*.yaml")):
        out[f"configs/{yaml_path.stem}.json"] = json.dumps(ConfigParser.load_config_file(yaml_path), indent=4)
    return out


def main(out: str = "dist", name: str = NAME) -> str:
    """Write ``<out>/<name>_v<version>.zip`` atomically and return its path."""
    version = json.loads((ROOT / "configs/metadata.json").read_text())["version"]
    if not (ROOT / "models/model.pt").is_file() and not (ROOT / "large_files.yml").is_file():
        raise SystemExit("No models/model.pt and no large_files.yml: the zip would carry no weights.")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}_v{version}.zip"
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".tmp")
    os.close(fd)
    count = 0
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in _files():
            zf.write(path, f"{name}/{path.relative_to(ROOT).as_posix()}")
            count += 1
        for arcname, text in _json_configs().items():
            zf.writestr(f"{name}/{arcname}", text)
            count += 1
    os.replace(tmp, target)  # never a truncated zip under the final name
    print(f"wrote {target} ({count} files, {target.stat().st_size / 1e6:.1f} MB)")
    return str(target)


if __name__ == "__main__":
    fire.Fire(main)
