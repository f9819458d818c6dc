"""Run, in one command, every check the MONAI model zoo's CI runs on a bundle; exit non-zero on any failure.

Checks (as in the zoo's ``ci/verify_bundle.py`` min + full modes, pre-commit hooks and code-format job):
files present, version in changelog, ``verify_metadata`` against the offline schema, ``verify_net_in_out``,
TorchScript ``ckpt_export`` in script mode + reload + numerical comparison with eager, ONNX ``onnx_export`` +
ONNX Runtime comparison, the config workflows (train, train+evaluate, inference, inference_ts) with
``check_properties`` run end to end on tiny synthetic CT volumes as the zoo's unit tests do, JSON/YAML/large-file
hooks, and black/isort/flake8 with the zoo's settings.

Weights: ``models/model.pt`` when present. Without it the files check fails (a zoo bundle needs the weights or a
``large_files.yml``) unless ``--random_weights True``, which runs every check on a random-initialised model (what
CI does: no trained weights are committed).

Example::

    python scripts/release/verify_bundle.py                       # all checks, trained weights in models/model.pt
    python scripts/release/verify_bundle.py --random_weights True # CI
    python scripts/release/verify_bundle.py --skip format,onnx
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Tuple

from bundle.errors import run_script

ROOT = Path(__file__).resolve().parents[2]

META = "configs/metadata.json"
INFER = "configs/inference.yaml"
SCHEMA = ROOT / "tests/fixtures/meta_schema_20240725.json"
REQUIRED_FILES = ["LICENSE", META, INFER, "configs/train.yaml", "configs/logging.conf", "docs/README.md"]
FORMAT_PATHS = ["bundle", "scripts", "tests"]
FLAKE8_ARGS = [
    "--max-line-length", "120", "--select", "B,C,E,F,N,P,T4,W,B9",
    "--ignore", "E203,E501,E741,W503,W504,C408,N812,B023,B905,B028,B907,C419",
    "--per-file-ignores", "__init__.py:F401",
]  # fmt: skip
# Export tolerances on raw fp32 logits (CPU). TorchScript runs the same ATen kernels as eager: differences are
# summation-order noise (measured 0). ONNX Runtime fuses and reorders ops (measured 9e-6, docs/performance.md).
# 1e-4 is > 10x the worst seen and far below a change that could move an argmax on a trained model.
TS_TOLERANCE = 1e-4
ONNX_TOLERANCE = 1e-4


def _run(cmd: List[str], timeout: int = 900) -> Tuple[bool, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    tail = (proc.stderr + proc.stdout).strip().splitlines()[-8:]  # stdout last: results are printed there
    return proc.returncode == 0, "\n".join(tail)


def _last_json(out: str) -> dict:
    """The last JSON line a helper process printed (warnings may follow it on stderr)."""
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no result printed: {out}")


def check_files(work: Path, random_weights: bool = False) -> str:
    missing = [f for f in REQUIRED_FILES if not (ROOT / f).is_file()]
    has_weights = (ROOT / "models/model.pt").is_file() or (ROOT / "large_files.yml").is_file()
    if not has_weights and not random_weights:
        missing.append(
            "models/model.pt or large_files.yml (train, or run scripts/release/package_bundle.py --weights_url ...; "
            "--random_weights True checks the code with a random-initialised model)"
        )
    if missing:
        raise AssertionError(f"missing: {', '.join(missing)}")
    return "all required files present" + ("" if has_weights else " (no weights: random-initialised model)")


def check_version(work: Path) -> str:
    meta = json.loads((ROOT / META).read_text())
    if meta.get("version") not in meta.get("changelog", {}):
        raise AssertionError(f"version {meta.get('version')!r} is not a key of 'changelog'")
    return f"version {meta['version']} is in the changelog"


def check_metadata(work: Path) -> str:
    schema = work / "schema.json"
    shutil.copy(SCHEMA, schema)  # offline: verify_metadata downloads only when --filepath is missing
    ok, out = _run([sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", META,
                    "--filepath", str(schema)])  # fmt: skip
    if not ok:
        raise AssertionError(out)
    return "metadata.json valid against meta_schema_20240725"


def check_net_in_out(work: Path) -> str:
    ok, out = _run([sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", META,
                    "--config_file", INFER, "--device", "cpu"])  # fmt: skip
    if not ok:
        raise AssertionError(out)
    return "network input/output shapes and dtypes match metadata"


def _checkpoint(work: Path) -> Path:
    """``models/model.pt``, else a random-initialised checkpoint of ``network_def`` (made once per run)."""
    ckpt = ROOT / "models/model.pt"
    if ckpt.is_file():
        return ckpt
    random_ckpt = work / "random_model.pt"
    if random_ckpt.is_file():
        return random_ckpt
    code = (
        "import torch; from monai.bundle import ConfigParser; p = ConfigParser(); "
        f"p.read_config('{INFER}'); p.read_meta('{META}'); torch.manual_seed(0); "
        # the layout configs/train.yaml writes: weights beside the geometry they were trained with
        f"torch.save({{'model': p.get_parsed_content('network_def').state_dict(), "
        f"'geometry': {{'axcodes': 'PLS', 'pixel_size': None}}}}, '{random_ckpt}')"
    )
    ok, out = _run([sys.executable, "-c", code])
    if not ok:
        raise AssertionError(f"could not build a random checkpoint: {out}")
    return random_ckpt


def _key_in_ckpt(ckpt: Path) -> str:
    """``model`` for the files training writes (``{"model", "geometry"}``), ``""`` for a bare state dict."""
    import torch

    return "model" if "model" in torch.load(str(ckpt), map_location="cpu", weights_only=True, mmap=True) else ""


def _torchscript(work: Path) -> Path:
    """Script-mode export of the checkpoint through ``monai.bundle ckpt_export`` (made once per run)."""
    ts = work / "verify_model.ts"
    if not ts.is_file():
        ok, out = _run([sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
                        "--ckpt_file", str(_checkpoint(work)), "--key_in_ckpt", _key_in_ckpt(_checkpoint(work)),
                        "--meta_file", META, "--config_file", INFER])  # fmt: skip
        if not ok:
            raise AssertionError(out)
    return ts


def _max_diff_vs_eager(ckpt: Path, load_exported: str, run_exported: str, batch: int) -> float:
    """Max |Δ logit| between the eager ``network_def`` with ``ckpt`` and an exported model, in a fresh process.

    ``load_exported`` binds ``m`` to the exported model; ``run_exported`` maps the input ``x`` to its logits.
    """
    code = (
        "import torch, json; from monai.bundle import ConfigParser; p = ConfigParser(); "
        f"p.read_config('{INFER}'); p.read_meta('{META}'); net = p.get_parsed_content('network_def').eval(); "
        f"s = torch.load('{ckpt}', weights_only=True); net.load_state_dict(s.get('model', s)); {load_exported}; "
        "c = p.get('_meta_#network_data_format#inputs#image#num_channels'); "
        f"x = torch.randn({batch}, c, 224, 224, generator=torch.Generator().manual_seed(0)); "
        f"d = (({run_exported}) - net(x)).abs().max().item(); print(json.dumps({{'max_abs_diff': d}}))"
    )
    ok, out = _run([sys.executable, "-c", "import torch\nwith torch.no_grad():\n    exec(" + repr(code) + ")"])
    if not ok:
        raise AssertionError(out)
    return _last_json(out)["max_abs_diff"]


def check_torchscript(work: Path) -> str:
    ts = _torchscript(work)
    diff = _max_diff_vs_eager(_checkpoint(work), f"m = torch.jit.load('{ts}').eval()", "m(x)", batch=2)
    if diff > TS_TOLERANCE:
        raise AssertionError(f"TorchScript output differs from eager by {diff:.3g} > {TS_TOLERANCE}")
    return f"script-mode export loads; max |Δ| vs eager {diff:.2g} (tolerance {TS_TOLERANCE})"


def check_onnx(work: Path) -> str:
    ckpt, onnx_path = _checkpoint(work), work / "verify_model.onnx"
    ok, out = _run([sys.executable, "-m", "monai.bundle", "onnx_export", "network_def", "--filepath", str(onnx_path),
                    "--ckpt_file", str(ckpt), "--key_in_ckpt", _key_in_ckpt(ckpt), "--meta_file", META,
                    "--config_file", INFER])  # fmt: skip
    if not ok:
        raise AssertionError(out)
    diff = _max_diff_vs_eager(
        ckpt,
        f"import onnxruntime as ort; m = ort.InferenceSession('{onnx_path}', providers=['CPUExecutionProvider'])",
        "torch.from_numpy(m.run(None, {m.get_inputs()[0].name: x.numpy()})[0])",
        batch=1,  # monai's onnx_export fixes the batch of its example input
    )
    if diff > ONNX_TOLERANCE:
        raise AssertionError(f"ONNX Runtime output differs from eager by {diff:.3g} > {ONNX_TOLERANCE}")
    return f"onnx_export loads in ONNX Runtime; max |Δ| vs eager {diff:.2g} (tolerance {ONNX_TOLERANCE})"


TINY_TRAIN = dict(
    epochs=1, batch_size=2, slices_per_volume=2, slices_per_epoch=4, num_workers=0, val_interval=1, show_progress=False
)


def check_workflows(work: Path) -> str:
    """Each workflow initialises, passes ``check_properties`` and runs on tiny synthetic CT (zoo unit-test style)."""
    from monai.bundle import ConfigWorkflow

    from bundle.data.synthetic import write_synthetic_dataset

    data = work / "synthetic_ct"
    write_synthetic_dataset(str(data))
    run_dir = work / "run"
    common = dict(
        bundle_root=str(ROOT), dataset_dir=str(data), output_dir=str(run_dir), ckpt_path=str(run_dir / "m.pt")
    )
    volume = str(data / "images" / "vol1.nii.gz")
    cases = [
        ("train", ["train.yaml"], {**common, **TINY_TRAIN}),
        ("train", ["train.yaml", "evaluate.yaml"], {**common, "num_workers": 0, "show_progress": False}),
        ("infer", ["inference.yaml"], {**common, "input": volume, "output_dir": str(work / "seg"), "num_workers": 0}),
        ("infer", ["inference_ts.yaml"], {"bundle_root": str(ROOT), "input": volume, "num_workers": 0,
                                          "ts_path": str(_torchscript(work)), "output_dir": str(work / "seg_ts")}),
    ]  # fmt: skip
    for kind, files, override in cases:
        paths = [str(ROOT / "configs" / f) for f in files]
        wf = ConfigWorkflow(
            config_file=paths if len(paths) > 1 else paths[0],
            meta_file=str(ROOT / META),
            logging_file=str(ROOT / "configs/logging.conf"),
            workflow_type=kind,
            **override,
        )
        wf.initialize()
        missing = wf.check_properties()
        if missing:
            raise AssertionError(f"{files}: missing required properties {missing}")
        wf.run()
        wf.finalize()
    for out in (work / "seg" / "vol1_seg.nii.gz", work / "seg_ts" / "vol1_seg.nii.gz"):
        if not out.is_file():
            raise AssertionError(f"inference wrote no {out.name} under {out.parent}")
    return "train, train+evaluate, inference and inference_ts initialise, pass check_properties and run on synthetic CT"


def check_hooks(work: Path) -> str:
    problems = []
    jsons = sorted(str(p.relative_to(ROOT)) for top in ("configs", "docs") for p in (ROOT / top).rglob("*.json"))
    ok, out = _run(
        [sys.executable, "-m", "pre_commit_hooks.pretty_format_json", "--no-sort-keys", "--indent=4", *jsons]
    )
    if not ok:
        problems.append(f"JSON formatting (the zoo's pretty-format-json): {out}")
    yamls = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))
    ok, out = _run([sys.executable, "-m", "pre_commit_hooks.check_yaml", *yamls])
    if not ok:
        problems.append(f"YAML: {out}")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    big = [f for f in tracked if (ROOT / f).is_file() and (ROOT / f).stat().st_size > 1024 * 1024]
    if big:
        problems.append(f"files over 1 MB (zoo limit; move to large_files.yml): {big}")
    if problems:
        raise AssertionError("\n".join(problems))
    return f"{len(jsons)} JSON files formatted, {len(yamls)} YAML files parse, no tracked file over 1 MB"


def check_format(work: Path) -> str:
    for cmd in (
        [
            sys.executable,
            "-m",
            "black",
            "--skip-magic-trailing-comma",
            "--line-length",
            "120",
            "--check",
            *FORMAT_PATHS,
        ],
        [sys.executable, "-m", "isort", "--profile", "black", "--line-length", "120", "--check", *FORMAT_PATHS],
        [sys.executable, "-m", "flake8", *FLAKE8_ARGS, *FORMAT_PATHS],
    ):
        ok, out = _run(cmd)
        if not ok:
            raise AssertionError(f"{cmd[2]}: {out}")
    return "black, isort and flake8 clean (zoo settings)"


CHECKS: List[Tuple[str, Callable[[Path], str]]] = [
    ("files", check_files),
    ("version", check_version),
    ("metadata", check_metadata),
    ("net_in_out", check_net_in_out),
    ("export", check_torchscript),
    ("onnx", check_onnx),
    ("workflows", check_workflows),
    ("hooks", check_hooks),
    ("format", check_format),
]


def main(skip: str = "", only: str = "", random_weights: bool = False) -> None:
    """Run the checks (comma-separated names in ``skip``/``only``: files, version, metadata, net_in_out,
    export, onnx, workflows, hooks, format); ``random_weights`` allows a bundle without weights (CI)."""
    skipped = set(filter(None, (skip.split(",") if isinstance(skip, str) else skip)))
    wanted = set(filter(None, (only.split(",") if isinstance(only, str) else only)))
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, check in CHECKS:
            if name in skipped or (wanted and name not in wanted):
                continue
            start = time.time()
            try:
                detail = check(Path(tmp), random_weights) if check is check_files else check(Path(tmp))
                print(f"PASS {name:<11s} {detail} ({time.time() - start:.0f} s)", flush=True)
            except Exception as err:  # every failure is collected, then reported together
                failures.append(name)
                print(f"FAIL {name:<11s} {err}", flush=True)
    if failures:
        print(f"\n{len(failures)} check(s) failed: {', '.join(failures)}")
        sys.exit(1)
    print("\nALL CHECKS PASSED")


if __name__ == "__main__":
    run_script(main)
