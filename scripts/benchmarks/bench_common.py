"""What every benchmark shares: the record writer (docs/benchmarks/<name>.json + .md with device, versions,
load, date), thread/device setup, timing and peak-memory helpers."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from bundle.inferers.backends import cpu_supports_bf16
from bundle.inferers.calibration import CalibrationSlices
from bundle.networks import MSA2Net

ROOT = Path(__file__).resolve().parents[2]


OUT_DIR = ROOT / "docs" / "benchmarks"


LOAD_START = list(os.getloadavg())  # at process start, before any work


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------------------------- records
def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: str, threads: int) -> dict:
    def version(name: str) -> str:
        try:
            return __import__(name).__version__
        except ImportError:
            return "not installed"

    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_native_bf16": cpu_supports_bf16(),
        "threads": threads,
        "loadavg_start": LOAD_START,
        "python": platform.python_version(),
        **{name: version(name) for name in ("torch", "timm", "monai", "onnxruntime", "numpy")},
    }
    if device.startswith("cuda"):
        env["gpu_model"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def md_table(rows: List[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_record(name: str, record: dict, command: str, final: bool = True) -> None:
    """Writes the record; ``final=False`` (after each row of a long run) rewrites the JSON only, so a run stopped
    by a time limit leaves the rows it had measured."""
    record["env"]["loadavg_end"] = list(os.getloadavg())
    record["command"] = command
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"{name}.json").write_text(json.dumps(record, indent=4) + "\n")  # the model zoo's JSON format
    if not final:
        return
    env = "\n".join(f"- {k}: {v}" for k, v in record["env"].items())
    notes = "".join(f"- {n}\n" for n in record.get("notes", []))
    md = f"# {name}\n\nCommand: `{command}`\n\n{env}\n\n{notes}\n{md_table(record['rows'])}"
    (OUT_DIR / f"{name}.md").write_text(md)
    print(md)


def command_line() -> str:
    return "python " + " ".join(
        [str(Path(sys.argv[0]).relative_to(ROOT) if Path(sys.argv[0]).is_absolute() else sys.argv[0])] + sys.argv[1:]
    )


# ----------------------------------------------------------------------------------------------- helpers
def split_list(value) -> List[str]:
    # fire turns "a,b" into a tuple and "1" into an int; accept all of them.
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [v for v in str(value).split(",") if v]


def setup(threads: int, device: str) -> str:
    torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_network(variant: str, seed: int = 0) -> MSA2Net:
    torch.manual_seed(seed)
    return MSA2Net(in_channels=1, out_channels=9, variant=variant).eval()


def time_calls(fn: Callable[[], object], device: str, warmup: int, reps: int) -> List[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def reset_peak_rss() -> bool:
    """Resets the process's peak RSS (VmHWM) so that the next row's peak is its own (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_gib() -> float:
    """VmHWM (since the last :func:`reset_peak_rss`), else the process maximum."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def inference_workflow(input, output_dir, ckpt_path, **overrides):
    """``configs/inference.yaml`` as the CLI runs it (no log file, no workers, no progress bar, outputs overwritten),
    with ``overrides`` of its ids; the caller initializes and runs it."""
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(
        config_file=str(ROOT / "configs" / "inference.yaml"),
        meta_file=str(ROOT / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        bundle_root=str(ROOT),
        **{"num_workers": 0, "show_progress": False, "overwrite": True, **overrides},
        input=str(input),
        output_dir=str(output_dir),
        ckpt_path=str(ckpt_path),
    )


# ----------------------------------------------------------------------------------------------- side by side
def alternate(
    impls: Dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, rounds: int, baselines=()
) -> List[dict]:
    """Times ``impls`` on ``x`` alternately (order reversed every other round); one row per implementation with
    the median/min seconds per slice and, against each of ``baselines`` present, the per-round ratio's median and
    interquartile range."""
    times: Dict[str, List[float]] = {k: [] for k in impls}
    order = list(impls)
    for r in range(rounds):
        for k in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            impls[k](x)
            times[k].append((time.perf_counter() - start) / len(x))
    rows = []
    for k in impls:
        row = {"impl": k, "median_s_per_slice": statistics.median(times[k]), "min_s_per_slice": min(times[k])}
        for other in baselines:
            if other in times and other != k:
                ratios = sorted(a / b for a, b in zip(times[k], times[other]))
                row[f"ratio_vs_{other}_median"] = statistics.median(ratios)
                row[f"ratio_vs_{other}_q25_q75"] = (
                    f"{ratios[len(ratios) // 4]:.3f}-{ratios[(3 * len(ratios)) // 4]:.3f}"
                )
        rows.append(row)
    return rows


def network_slices(paths: str, ckpt: str) -> torch.Tensor:
    """Every slice of the volumes ``paths`` (comma-separated) as ``configs/inference.yaml`` feeds the network for
    ``ckpt`` (its geometry: orientation, body crop, pixel size), through :class:`CalibrationSlices`."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(ROOT), "ckpt_path": ckpt or str(ROOT / "absent.pt"), "backend": "eager"})
    volumes = [str(ROOT / p) if not os.path.isabs(p) else p for p in split_list(paths)]
    inferer = parser.get_parsed_content("inferer")
    return CalibrationSlices(volumes, parser.get_parsed_content("preprocessing"), max_slices=100_000)(inferer)
