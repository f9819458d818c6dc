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
* ``--studies`` may be a PACS's DICOMweb root (``http://…/dicom-web``): MONAI Label's DICOMweb datastore then lists
  its CT series (the image id is the SeriesInstanceUID) and stores every *final* label back as a DICOM SEG, made by
  dcmqi's ``itkimage2segimage``. ``save`` sends such a label with each organ's SNOMED CT code (MONAI Label 0.8.5
  codes every segment as Spleen unless the request carries the codes; docs/monailabel.md §8).

Example (docs/monailabel.md)::

    python scripts/release/monailabel_app.py layout --app_dir apps/monaibundle --ckpt models/model.pt
    python scripts/release/monailabel_app.py serve --app_dir apps/monaibundle --studies studies/
    python scripts/release/monailabel_app.py infer --image demo_test --out demo_test_seg.nrrd
    python scripts/release/monailabel_app.py serve --app_dir apps/monaibundle --studies http://127.0.0.1:8042/dicom-web
    python scripts/release/monailabel_app.py save --image <SeriesInstanceUID> --label edited.nrrd
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

from bundle.errors import InputError, run_script
from bundle.io.checkpoint import check_checkpoint
from bundle.transforms.geometry import checkpoint_geometry

ROOT = Path(__file__).resolve().parents[2]

NAME = "msa2net_synapse_ct_segmentation"  # the zoo name (scripts/release/package_bundle.py)
STOCK_APP = "monaibundle"
COMPAT = Path(__file__).resolve().parent / "monailabel_compat"
BUNDLE_DIRS = ("bundle", "configs")
BUNDLE_FILES = ("LICENSE",)
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.tmp")
# what the server is told besides the model name: local folder only, no SAM2 download, no training tasks
OFFLINE_CONF = {"zoo_source": "github", "sam2": "false", "skip_trainers": "true", "preload": "false"}
DICOMWEB_CACHE_S = 60  # seconds MONAI Label keeps its QIDO listings of a PACS (its own default: 7200)


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


def server_env(env: Optional[Dict[str, str]] = None, python: str = "") -> Dict[str, str]:
    """``env`` (default: this process's) with ``monailabel_compat/`` first on ``PYTHONPATH`` and the interpreter's
    ``bin/`` first on ``PATH``: MONAI Label runs dcmqi's ``itkimage2segimage`` by name (pip's ``dcmqi`` puts it
    there) and, not finding it, downloads dcmqi 1.2.4 from GitHub at start, which fails offline."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(COMPAT), env.get("PYTHONPATH", "")) if p)
    scripts = str(Path(python or sys.executable).parent)  # not resolved: a venv's python links out of the venv
    env["PATH"] = os.pathsep.join(p for p in (scripts, env.get("PATH", "")) if p)
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


def is_dicomweb(studies: str) -> bool:
    """Whether ``--studies`` names a DICOMweb server (MONAI Label's test: an ``http(s)://`` prefix)."""
    return str(studies).startswith(("http://", "https://"))


def dicomweb_env(env: Dict[str, str], cache_s: int = DICOMWEB_CACHE_S) -> Dict[str, str]:
    """``env`` for a DICOMweb ``--studies``: the series and SEG listings cached ``cache_s`` seconds (MONAI Label's
    default, 7200 s, hides a study sent to the PACS, or a label saved, for two hours); a value already set wins."""
    env = dict(env)
    env.setdefault("MONAI_LABEL_DICOMWEB_CACHE_EXPIRY", str(int(cache_s)))
    return env


def check_dicomweb(url: str, env: Optional[Dict[str, str]] = None, timeout: float = 10.0) -> None:
    """Refuses, in one line, a DICOMweb root that does not answer QIDO-RS, or a server environment without dcmqi's
    ``itkimage2segimage`` (which MONAI Label would otherwise download from GitHub at start)."""
    env = server_env() if env is None else env
    if shutil.which("itkimage2segimage", path=env.get("PATH")) is None:
        raise InputError(
            "dcmqi's itkimage2segimage is not installed: pip install dcmqi==1.5.7 (the bundle's test extra); MONAI "
            "Label converts every final label to a DICOM SEG with it and would otherwise download dcmqi at start."
        )
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/studies?limit=1", timeout=timeout) as resp:
            json.loads(resp.read() or b"[]")
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise InputError(
            f"the DICOMweb server {url} does not answer a QIDO-RS search ({err}): check the URL (its DICOMweb "
            "root, e.g. http://<pacs>:8042/dicom-web for Orthanc) and that the PACS is running."
        ) from None


def serve(
    app_dir: str,
    studies: str,
    name: str = NAME,
    host: str = "127.0.0.1",
    port: int = 8000,
    dicomweb_cache_s: int = DICOMWEB_CACHE_S,
) -> int:
    """Runs the server in the foreground until Ctrl-C; returns its exit code.

    Args:
        studies: a folder of CT volumes, or a PACS's DICOMweb root (``http://<pacs>/dicom-web``).
        dicomweb_cache_s: DICOMweb only: seconds MONAI Label keeps its listing of the PACS (see :func:`dicomweb_env`).
    """
    if not (Path(app_dir) / "model" / name / "configs" / "inference.yaml").is_file():
        raise InputError(f"{app_dir} does not serve {name!r} yet: run `layout --app_dir {app_dir}` first.")
    env = server_env()
    if is_dicomweb(studies):
        check_dicomweb(studies, env)
        env = dicomweb_env(env, dicomweb_cache_s)
    elif not Path(studies).is_dir():
        raise InputError(
            f"studies folder {studies} does not exist: create it and put the CT volumes there, or give a PACS's "
            "DICOMweb root (http://<pacs>/dicom-web)."
        )
    return subprocess.call(server_command(app_dir, studies, name, host, port), env=env)


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


def label_info(label: str, bundle_root: str = str(ROOT), algorithm_type: str = "SEMIAUTOMATIC") -> List[dict]:
    """MONAI Label's ``label_info`` for the label map ``label``: one entry per label value present, ascending (the
    order in which 0.8.5's ``nifti_to_dicom_seg`` pairs entries with values), each with the dcmqi
    ``segmentAttribute`` that codes the organ as the bundle's own SEG writer does (SNOMED CT, kidneys with laterality).

    Args:
        label: a label map with the bundle's values (1 spleen … 8 pancreas).
        bundle_root: where ``configs/metadata.json`` names the labels.
        algorithm_type: DICOM SegmentAlgorithmType: ``SEMIAUTOMATIC`` (the model's result, reviewed: a final
            label), ``AUTOMATIC`` or ``MANUAL``.
    """
    import numpy as np

    from bundle.io.dicom_seg import _COLORS, ANATOMICAL_STRUCTURE, SNOMED
    from bundle.io.volume import load_image

    with open(Path(bundle_root) / "configs" / "metadata.json") as f:
        meta = json.load(f)
    names = {int(k): v for k, v in meta["network_data_format"]["outputs"]["pred"]["channel_def"].items()}
    values = [int(v) for v in np.unique(np.asarray(load_image(label))) if v != 0]
    unknown = [v for v in values if v not in names]
    if unknown:
        raise InputError(
            f"label map {label} has values {unknown} that name no organ of this bundle (1..{max(names)}): save the "
            "segmentation exported from this model's labels."
        )
    category = dict(zip(("CodeValue", "CodeMeaning"), ANATOMICAL_STRUCTURE), CodingSchemeDesignator="SCT")
    out = []
    for value in values:
        name = names[value]
        code, meaning, side = SNOMED.get(name, (*ANATOMICAL_STRUCTURE, None))
        attribute = {
            "labelID": value,
            "SegmentLabel": name.replace("_", " "),
            "SegmentDescription": name,
            "SegmentAlgorithmType": algorithm_type,
            "SegmentedPropertyCategoryCodeSequence": category,
            "SegmentedPropertyTypeCodeSequence": {
                "CodeValue": code,
                "CodingSchemeDesignator": "SCT",
                "CodeMeaning": meaning,
            },
            "recommendedDisplayRGBValue": list(_COLORS[(value - 1) % len(_COLORS)]),
        }
        if algorithm_type != "MANUAL":
            attribute["SegmentAlgorithmName"] = "MSA2Net"
        if side is not None:
            attribute["SegmentedPropertyTypeModifierCodeSequence"] = {
                "CodeValue": side[0],
                "CodingSchemeDesignator": "SCT",
                "CodeMeaning": side[1],
            }
        out.append({"name": name, "idx": value, "segmentAttribute": attribute})
    if out:
        out[0]["model_name"] = "MSA2Net"  # becomes the SEG's SeriesDescription
    return out


def save(
    image: str,
    label: str,
    url: str = "http://127.0.0.1:8000",
    tag: str = "final",
    coded: bool = True,
    timeout: float = 600.0,
) -> dict:
    """``PUT /datastore/label``: saves ``label`` for ``image``; with a DICOMweb datastore a *final* label is stored
    on the PACS as a DICOM SEG. ``coded``: send :func:`label_info` (each organ's code) instead of nothing, which
    MONAI Label 0.8.5 turns into segments named "unknown" and coded Spleen. Returns the server's answer."""
    import requests

    if not os.path.isfile(label):
        raise InputError(f"label map {label} does not exist: pass the file /infer returned or Slicer exported.")
    params = {"label_info": label_info(label)} if coded else {}
    try:
        with open(label, "rb") as f:
            resp = requests.put(
                url.rstrip("/") + "/datastore/label",
                params={"image": image, "tag": tag},
                data={"params": json.dumps(params)},
                files={"label": (os.path.basename(label), f)},
                timeout=timeout,
            )
    except requests.ConnectionError:
        raise InputError(f"no MONAI Label server answers at {url}: start it with `serve` or pass --url.") from None
    if resp.status_code != 200:
        raise InputError(
            f"MONAI Label at {url} did not save the label for {image} (HTTP {resp.status_code}: {resp.text[:200]}): "
            "the server's log names the cause."
        )
    return resp.json()


def compare(a: str, b: str) -> dict:
    """Voxel agreement of two label maps (any format MONAI reads), after checking they share one grid.

    Returns ``{"shape": [...], "same_shape", "affine_max_abs_diff" (mm), "agreement" (fraction of equal voxels),
    "exact"}``; arrays and affines as MONAI loads them (RAS), so a ``.nrrd`` (LPS on disk) and a ``.nii.gz`` compare.
    """
    import numpy as np

    from bundle.io.volume import load_image

    x, y = load_image(a), load_image(b)
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
            "save": save,
            "compare": compare,
            "stock_app_dir": lambda: str(stock_app_dir()),
        }
    )
