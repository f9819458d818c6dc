"""Run, in one command, every check the MONAI model zoo's CI runs on a bundle; exit non-zero on any failure.

Checks (as in the zoo's ``ci/verify_bundle.py`` min + full modes, pre-commit hooks and code-format job):
files present, version in changelog, ``verify_metadata`` against the offline schema, ``verify_net_in_out``,
TorchScript ``ckpt_export`` in script mode + reload + numerical comparison with eager, the config workflows
with ``check_properties``, JSON/YAML/large-file hooks, and black/isort/flake8 with the zoo's settings.
Without ``models/model.pt`` the checks run on a random-initialised model (as CI does here).

Example::

    python scripts/verify_bundle.py            # all checks
    python scripts/verify_bundle.py --skip format,export
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

import fire

ROOT = Path(__file__).resolve().parents[1]
META = "configs/metadata.json"
INFER = "configs/inference.yaml"
SCHEMA = ROOT / "tests/data/meta_schema_20240725.json"
REQUIRED_FILES = ["LICENSE", META, INFER, "configs/train.yaml", "configs/logging.conf", "docs/README.md"]
FORMAT_PATHS = ["bundle", "scripts", "tests"]
FLAKE8_ARGS = [
    "--max-line-length", "120", "--select", "B,C,E,F,N,P,T4,W,B9",
    "--ignore", "E203,E501,E741,W503,W504,C408,N812,B023,B905,B028,B907,C419",
    "--per-file-ignores", "__init__.py:F401",
]  # fmt: skip
TS_TOLERANCE = 1e-4  # scripted vs eager fp32 on CPU: same kernels, differences are summation-order noise


def _run(cmd: List[str], timeout: int = 900) -> Tuple[bool, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-6:]
    return proc.returncode == 0, "\n".join(tail)


def check_files(work: Path) -> str:
    missing = [f for f in REQUIRED_FILES if not (ROOT / f).is_file()]
    if not (ROOT / "models/model.pt").is_file() and not (ROOT / "large_files.yml").is_file():
        missing.append("models/model.pt or large_files.yml")
    if missing:
        raise AssertionError(f"missing: {', '.join(missing)}")
    return "all required files present"


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
    ckpt = ROOT / "models/model.pt"
    if ckpt.is_file():
        return ckpt
    random_ckpt = work / "random_model.pt"
    code = (
        "import torch; from monai.bundle import ConfigParser; p = ConfigParser(); "
        f"p.read_config('{INFER}'); p.read_meta('{META}'); torch.manual_seed(0); "
        f"torch.save(p.get_parsed_content('network_def').state_dict(), '{random_ckpt}')"
    )
    ok, out = _run([sys.executable, "-c", code])
    if not ok:
        raise AssertionError(f"could not build a random checkpoint: {out}")
    return random_ckpt


def check_torchscript(work: Path) -> str:
    ckpt, ts = _checkpoint(work), work / "verify_model.ts"
    ok, out = _run([sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
                    "--ckpt_file", str(ckpt), "--meta_file", META, "--config_file", INFER])  # fmt: skip
    if not ok:
        raise AssertionError(out)
    code = (
        "import torch, json; from monai.bundle import ConfigParser; p = ConfigParser(); "
        f"p.read_config('{INFER}'); p.read_meta('{META}'); net = p.get_parsed_content('network_def').eval(); "
        f"net.load_state_dict(torch.load('{ckpt}', weights_only=True)); ts = torch.jit.load('{ts}').eval(); "
        "c = p.get('_meta_#network_data_format#inputs#image#num_channels'); "
        "x = torch.randn(2, c, 224, 224, generator=torch.Generator().manual_seed(0)); "
        "d = (ts(x) - net(x)).abs().max().item(); print(json.dumps({'max_abs_diff': d}))"
    )
    ok, out = _run([sys.executable, "-c", "import torch\nwith torch.no_grad():\n    exec(" + repr(code) + ")"])
    if not ok:
        raise AssertionError(out)
    diff = json.loads(out.splitlines()[-1])["max_abs_diff"]
    if diff > TS_TOLERANCE:
        raise AssertionError(f"TorchScript output differs from eager by {diff:.3g} > {TS_TOLERANCE}")
    return f"script-mode export loads; max |Δ| vs eager {diff:.2g} (tolerance {TS_TOLERANCE})"


def check_workflows(work: Path) -> str:
    code = (
        "from monai.bundle import ConfigWorkflow\n"
        "cases = [('train', ['configs/train.yaml']), ('infer', ['configs/inference.yaml']),\n"
        "         ('train', ['configs/train.yaml', 'configs/evaluate.yaml'])]\n"
        "bad = []\n"
        "for kind, files in cases:\n"
        "    wf = ConfigWorkflow(config_file=files, workflow_type=kind, meta_file='configs/metadata.json',\n"
        "                        logging_file='configs/logging.conf')\n"
        "    wf.initialize()\n"
        "    missing = wf.check_properties()\n"
        "    if missing: bad.append(f'{files}: missing properties {missing}')\n"
        "assert not bad, bad\n"
    )
    ok, out = _run([sys.executable, "-c", code])
    if not ok:
        raise AssertionError(out)
    return "train, inference and train+evaluate workflows initialise with all required properties"


def check_hooks(work: Path) -> str:
    problems = []
    ok, out = _run([sys.executable, "-m", "pre_commit_hooks.pretty_format_json", "--no-sort-keys", "--indent=4", META])
    if not ok:
        problems.append(f"metadata.json formatting: {out}")
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
    return f"metadata JSON formatted, {len(yamls)} YAML files parse, no tracked file over 1 MB"


def check_format(work: Path) -> str:
    for cmd in (
        [sys.executable, "-m", "black", "--skip-magic-trailing-comma", "--line-length", "120", "--check", *FORMAT_PATHS],
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
    ("workflows", check_workflows),
    ("hooks", check_hooks),
    ("format", check_format),
]


def main(skip: str = "", only: str = "") -> None:
    """Run the checks (comma-separated names in ``skip``/``only``: files, version, metadata, net_in_out,
    export, workflows, hooks, format)."""
    skipped = set(filter(None, (skip.split(",") if isinstance(skip, str) else skip)))
    wanted = set(filter(None, (only.split(",") if isinstance(only, str) else only)))
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, check in CHECKS:
            if name in skipped or (wanted and name not in wanted):
                continue
            start = time.time()
            try:
                detail = check(Path(tmp))
                print(f"PASS {name:<11s} {detail} ({time.time() - start:.0f} s)", flush=True)
            except Exception as err:  # every failure is collected, then reported together
                failures.append(name)
                print(f"FAIL {name:<11s} {err}", flush=True)
    if failures:
        print(f"\n{len(failures)} check(s) failed: {', '.join(failures)}")
        sys.exit(1)
    print("\nALL CHECKS PASSED")


if __name__ == "__main__":
    fire.Fire(main)
