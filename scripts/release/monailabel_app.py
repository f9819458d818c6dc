"""Serve this bundle with MONAI Label's stock ``monaibundle`` app (3D Slicer, OHIF): lay out the app, start, query.

MONAI Label 0.8.5 ships the ``monaibundle`` sample app in its wheel (``<prefix>/monailabel/sample-apps``); the app
serves every bundle folder named by ``--conf models <name>`` from ``<app>/model/<name>/`` through
``monailabel.tasks.infer.bundle.BundleInferTask``, which reads ``configs/inference.yaml`` (ids ``network_def``,
``preprocessing``, ``inferer``, ``post_transforms``/``postprocessing``, ``device``, ``bundle_root``),
``configs/metadata.json`` (input/output keys and label names) and ``models/model.pt`` (``checkpoint["model"]``).
This module only arranges files and the command line around that app; nothing of MONAI Label is changed.

* ``layout`` copies the stock app (if the folder has none) and writes ``<app>/model/<name>/`` = this bundle's
  ``bundle/`` package, ``configs/``, ``LICENSE`` and the checkpoint, checked strictly against the network first
  (MONAI Label itself loads weights non-strictly: a wrong file would only log a warning).
* ``server_command`` / ``server_env`` / ``serve`` start ``python -m monailabel.main start_server`` offline: the
  local model folder (``zoo_source`` not ``monaihosting``, so nothing is looked up online), no SAM2 (its weights
  are downloaded at run time), no trainers; ``PYTHONPATH`` gets ``monailabel_compat/`` (``pydicom_seg`` name,
  see that module).
* ``infer`` is the request 3D Slicer sends (``POST /infer/<model>?image=<id>``, result as uint8 ``.nrrd``).

Example (docs/monailabel.md)::

    python scripts/release/monailabel_app.py layout --app_dir apps/monaibundle --ckpt models/model.pt
    python scripts/release/monailabel_app.py serve --app_dir apps/monaibundle --studies studies/
    python scripts/release/monailabel_app.py infer --image demo_test --out demo_test_seg.nrrd
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bundle.errors import InputError, run_script  # noqa: E402
from bundle.io.checkpoint import check_checkpoint  # noqa: E402
from bundle.transforms.geometry import checkpoint_geometry  # noqa: E402

NAME = "msa2net_synapse_ct_segmentation"  # the zoo name (scripts/release/package_bundle.py)
STOCK_APP = "monaibundle"
COMPAT = Path(__file__).resolve().parent / "monailabel_compat"
BUNDLE_DIRS = ("bundle", "configs")
BUNDLE_FILES = ("LICENSE",)
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.tmp")
# what the server is told besides the model name: local folder only, no SAM2 download, no training tasks
OFFLINE_CONF = {"zoo_source": "github", "sam2": "false", "skip_trainers": "true", "preload": "false"}


def stock_app_dir(name: str = STOCK_APP) -> Path:
    """The sample app ``name`` inside the installed MONAI Label wheel (the folders ``monailabel apps`` copies from)."""
    try:
        import monailabel
    except ImportError:
        raise InputError(
            "MONAI Label is not installed in this environment: pip install -e '.[monailabel]' and then "
            "pip install --no-deps monailabel==0.8.5 (docs/monailabel.md explains the two steps)."
        ) from None
    pkg = Path(monailabel.__file__).resolve().parent
    candidates = [
        pkg.parent / "sample-apps",  # a source checkout
        Path(sys.prefix) / "monailabel" / "sample-apps",  # the wheel's data files in a venv
        Path(sys.prefix) / "local" / "monailabel" / "sample-apps",
        Path.home() / ".local" / "monailabel" / "sample-apps",
    ]
    for base in candidates:
        if (base / name / "main.py").is_file():
            return base / name
    raise InputError(
        f"MONAI Label's sample app {name!r} is not where the wheel installs it ({candidates[1]}): reinstall "
        "monailabel==0.8.5 into this environment, or copy the app with `monailabel apps --download --name "
        f"{name} --output apps` and pass that folder as --app_dir."
    )


def _checked_state(ckpt: Path, bundle_root: Path) -> Dict[str, object]:
    """``{"model": state_dict, "geometry": …}`` of ``ckpt``, refused unless it fits the config's network exactly."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(bundle_root)
    network = parser.get_parsed_content("network_def")
    state = check_checkpoint(str(ckpt), {"model": network}, "cpu")["model"]  # InputError on another network
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}  # DDP prefix
    return {"model": state, "geometry": checkpoint_geometry(str(ckpt)).state_dict()}


def layout(
    app_dir: str,
    ckpt: str = str(ROOT / "models" / "model.pt"),
    name: str = NAME,
    bundle_root: str = str(ROOT),
    link: bool = False,
) -> str:
    """Make ``app_dir`` a ``monaibundle`` app serving this bundle as model ``name``; returns the model folder.

    Args:
        app_dir: the app folder (created; the stock ``monaibundle`` app is copied in when it has no ``main.py``).
        ckpt: the trained checkpoint (``models/model.pt`` as training writes it, or converted official weights).
        name: model name (``--conf models <name>``, ``/infer/<name>``; the name shown in 3D Slicer).
        bundle_root: the bundle whose ``bundle/``, ``configs/`` and ``LICENSE`` are copied.
        link: symlink the checkpoint instead of writing a checked copy (MONAI Label reloads a changed file by its
            mtime, so a retrained ``models/model.pt`` is served without a new layout). The link target must
            already be in the form MONAI Label loads (``{"model": state_dict, …}`` or a bare state dict, no
            ``module.`` prefix).
    """
    app, root, ckpt_path = Path(app_dir).resolve(), Path(bundle_root).resolve(), Path(ckpt).resolve()
    if not ckpt_path.is_file():
        raise InputError(
            f"checkpoint {ckpt} does not exist: train first (docs/ct_bundle.md) or pass --ckpt <your model.pt>."
        )
    if not (root / "configs" / "inference.yaml").is_file():
        raise InputError(f"{root} is not this bundle's root (no configs/inference.yaml): pass --bundle_root.")
    state = _checked_state(ckpt_path, root)
    if link and any(k.startswith("module.") for k in _raw_keys(ckpt_path)):
        raise InputError(
            f"checkpoint {ckpt} has DDP 'module.' keys, which MONAI Label would not load: run layout without "
            "--link (it writes a cleaned copy)."
        )
    if not (app / "main.py").is_file():
        app.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(stock_app_dir(), app, ignore=shutil.ignore_patterns("logs", "model", "__pycache__"))
    final = app / "model" / name
    tmp = app / "model" / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "models").mkdir(parents=True)
    for d in BUNDLE_DIRS:
        shutil.copytree(root / d, tmp / d, ignore=SKIP)
    for f in BUNDLE_FILES:
        if (root / f).is_file():
            shutil.copy2(root / f, tmp / f)
    if link:
        os.symlink(ckpt_path, tmp / "models" / "model.pt")
    else:
        import torch

        torch.save(state, tmp / "models" / "model.pt")
    old = app / "model" / f".{name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)  # the served folder is never half-written
    shutil.rmtree(old, ignore_errors=True)
    return str(final)


def _raw_keys(ckpt: Path) -> List[str]:
    import torch

    obj = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    obj = obj.get("model", obj) if isinstance(obj, dict) else {}
    return list(obj)


def server_env(env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """``env`` (default: this process's) with ``monailabel_compat/`` first on ``PYTHONPATH``."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(COMPAT), env.get("PYTHONPATH", "")) if p)
    return env


def server_command(
    app_dir: str, studies: str, name: str = NAME, host: str = "127.0.0.1", port: int = 8000, python: str = ""
) -> List[str]:
    """The ``monailabel start_server`` command line for the laid-out app (what ``serve`` runs)."""
    cmd = [python or sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app_dir)]
    cmd += ["--studies", str(studies), "--host", host, "--port", str(int(port)), "--conf", "models", name]
    for key, value in OFFLINE_CONF.items():
        cmd += ["--conf", key, value]
    return cmd


def serve(app_dir: str, studies: str, name: str = NAME, host: str = "127.0.0.1", port: int = 8000) -> int:
    """Runs the server in the foreground until Ctrl-C; returns its exit code."""
    if not (Path(app_dir) / "model" / name / "configs" / "inference.yaml").is_file():
        raise InputError(f"{app_dir} does not serve {name!r} yet: run `layout --app_dir {app_dir}` first.")
    if not Path(studies).is_dir():
        raise InputError(f"studies folder {studies} does not exist: create it and put the CT volumes there.")
    return subprocess.call(server_command(app_dir, studies, name, host, port), env=server_env())


def wait_ready(url: str = "http://127.0.0.1:8000", timeout: float = 300.0, proc=None) -> dict:
    """Polls ``GET /info/`` until the server answers; returns the app info. ``proc``: fail early if it exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the MONAI Label server exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/info/", timeout=10) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            last = str(err)
        time.sleep(1.0)
    raise TimeoutError(f"no answer from {url}/info/ within {timeout:.0f} s ({last})")


def infer(
    image: str,
    url: str = "http://127.0.0.1:8000",
    model: str = NAME,
    out: str = "",
    ext: str = ".nrrd",
    timeout: float = 900.0,
) -> str:
    """``POST /infer/<model>?image=<id>`` as 3D Slicer sends it; writes the label map to ``out`` atomically.

    Args:
        image: the study id (file name without extension in the studies folder).
        url: the server.
        model: model name.
        out: output file (default ``<image>_seg<ext>``).
        ext: result format the server writes (Slicer asks for ``.nrrd``; ``.nii.gz`` works too).
        timeout: seconds to wait for the answer.
    """
    query = urllib.parse.urlencode({"image": image, "output": "image"})
    target = f"{url.rstrip('/')}/infer/{urllib.parse.quote(model)}?{query}"
    params = json.dumps({"result_extension": ext, "result_dtype": "uint8"})  # device: the server's first
    body = urllib.parse.urlencode({"params": params}).encode()
    req = urllib.request.Request(target, data=body, method="POST")
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    out = out or f"{image}_seg{ext}"
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        data = resp.read()
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, out)
    return out


def compare(a: str, b: str) -> dict:
    """Voxel agreement of two label maps (any format MONAI reads), after checking they share one grid.

    Returns ``{"shape": [...], "same_shape", "affine_max_abs_diff" (mm), "agreement" (fraction of equal voxels),
    "exact"}``; arrays and affines as MONAI loads them (RAS), so a ``.nrrd`` (LPS on disk) and a ``.nii.gz`` compare.
    """
    import numpy as np
    from monai.transforms import LoadImage

    load = LoadImage(image_only=True)
    x, y = load(a), load(b)
    same = tuple(x.shape) == tuple(y.shape)
    diff = float(np.abs(np.asarray(x.affine, np.float64) - np.asarray(y.affine, np.float64)).max())
    agree = float((np.asarray(x) == np.asarray(y)).mean()) if same else 0.0
    return {
        "shape": list(x.shape),
        "same_shape": same,
        "affine_max_abs_diff": diff,
        "agreement": agree,
        "exact": bool(same and agree == 1.0),
    }


if __name__ == "__main__":
    run_script(
        {
            "layout": layout,
            "serve": serve,
            "command": lambda **kw: " ".join(server_command(**kw)),
            "infer": infer,
            "compare": compare,
            "stock_app_dir": lambda: str(stock_app_dir()),
        }
    )
