"""MSA²Net benchmarks: network forward / train step, whole-volume inference, data loader, side by side.

Every sub-command writes a record ``docs/benchmarks/<name>.json`` and ``.md`` with the device, CPU/GPU model,
library versions, dtype, batch size, threads, load average and date. Shared machines are noisy: on them only
the ``side_by_side`` ratios (implementations timed alternately in one process) are comparable between
implementations; absolute times are context.

Examples::

    python scripts/benchmarks/benchmark.py forward --threads 2                        # CPU: eager/onnx, fp32/bf16
    python scripts/benchmarks/benchmark.py forward --device cuda --dtypes fp32,bf16,fp16 --batches 1,8,32,128
    python scripts/benchmarks/benchmark.py volume --threads 2 --backend auto --batch 4
    python scripts/benchmarks/benchmark.py volume --threads 2 --batch 8 --modes whole,sliding:1.0 --rounds 2
    python scripts/benchmarks/benchmark.py side_by_side --threads 2 --official_repo /tmp/msa2net_src --rounds 10
    python scripts/benchmarks/benchmark.py loader
    python scripts/benchmarks/benchmark.py tensorrt --precisions fp32,tf32 --batches 1,16,32       # CUDA + TensorRT only
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bundle.data.demos import TOTALSEG_TO_SYNAPSE, build_demo  # noqa: E402
from bundle.data.synapse import remap_labels  # noqa: E402
from bundle.data.synthetic import write_body_ct, write_synthetic_case  # noqa: E402
from bundle.errors import run_script  # noqa: E402
from bundle.inferers.axial import AxialSliceInferer  # noqa: E402
from bundle.inferers.backends import cached_onnx, cpu_supports_bf16, optimize_for_inference  # noqa: E402
from bundle.inferers.calibration import CalibrationSlices  # noqa: E402
from bundle.inferers.openvino import OpenVinoInference, quantize_int8  # noqa: E402
from bundle.io.volume import SaveLabelNiftid  # noqa: E402
from bundle.networks import MSA2Net  # noqa: E402
from bundle.networks.convert_msa2net import convert_official_state_dict  # noqa: E402
from bundle.networks.official import official_msa2net  # noqa: E402
from bundle.training.losses import BoundaryDoULoss, make_loss  # noqa: E402
from bundle.transforms.ct import ct_volume_transforms  # noqa: E402
from bundle.transforms.geometry import reorient_array  # noqa: E402

OUT_DIR = ROOT / "docs" / "benchmarks"
_LOAD_START = list(os.getloadavg())  # at process start, before any work
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------------------------- records
def _cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _environment(device: str, threads: int) -> dict:
    def version(name: str) -> str:
        try:
            return __import__(name).__version__
        except ImportError:
            return "not installed"

    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_native_bf16": cpu_supports_bf16(),
        "threads": threads,
        "loadavg_start": _LOAD_START,
        "python": platform.python_version(),
        **{name: version(name) for name in ("torch", "timm", "monai", "onnxruntime", "numpy")},
    }
    if device.startswith("cuda"):
        env["gpu_model"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def _md_table(rows: List[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write(name: str, record: dict, command: str, final: bool = True) -> None:
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
    md = f"# {name}\n\nCommand: `{command}`\n\n{env}\n\n{notes}\n{_md_table(record['rows'])}"
    (OUT_DIR / f"{name}.md").write_text(md)
    print(md)


def _command() -> str:
    return "python " + " ".join(
        [str(Path(sys.argv[0]).relative_to(ROOT) if Path(sys.argv[0]).is_absolute() else sys.argv[0])] + sys.argv[1:]
    )


# ----------------------------------------------------------------------------------------------- helpers
def _split(value) -> List[str]:
    # fire turns "a,b" into a tuple and "1" into an int; accept all of them.
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [v for v in str(value).split(",") if v]


def _setup(threads: int, device: str) -> str:
    torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _build(variant: str, seed: int = 0) -> MSA2Net:
    torch.manual_seed(seed)
    return MSA2Net(in_channels=1, out_channels=9, variant=variant).eval()


def _time(fn: Callable[[], object], device: str, warmup: int, reps: int) -> List[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _loss_fn():
    """BoundaryDoULoss from ``bundle.training.losses`` when it exists, else a labelled placeholder (CE + soft Dice)."""
    try:

        return BoundaryDoULoss(), "bundle.training.losses.BoundaryDoULoss"
    except Exception:
        ce = torch.nn.CrossEntropyLoss()

        def placeholder(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            probs = logits.float().softmax(1)
            onehot = torch.nn.functional.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
            dice = 1 - (2 * (probs * onehot).sum((2, 3)) + 1) / (probs.sum((2, 3)) + onehot.sum((2, 3)) + 1)
            return ce(logits.float(), target) + dice.mean()

        return placeholder, "placeholder CE + soft Dice (bundle.training.losses.BoundaryDoULoss not available)"


# ----------------------------------------------------------------------------------------------- forward
def forward(
    variant: str = "paper",
    device: str = "auto",
    threads: int = 2,
    backends: str = "eager,onnx",
    dtypes: str = "fp32,bf16",
    batches: Optional[str] = None,
    reps: int = 5,
    warmup: int = 2,
    train: bool = True,
    train_batch: int = 2,
    name: str = "",
) -> None:
    """Forward latency (batch 1) / throughput (larger batches) per backend and dtype, and the train step.

    Args:
        variant: MSA²Net variant.
        device: "auto", "cpu" or "cuda".
        threads: torch (and ORT) intra-op threads.
        backends: comma list of ``bundle.inferers.backends`` backends; "onnx" is skipped on CUDA and for non-fp32.
        dtypes: comma list of fp32/bf16/fp16; fp16 is skipped on CPU.
        batches: comma list; default "1" on CPU and "1,8,32,128" on CUDA.
        reps: timed repetitions (median reported).
        warmup: untimed calls first.
        train: also time forward + loss + backward + SGD step.
        train_batch: batch of the train step.
        name: record name (default ``forward_<device>_<variant>``).
    """
    device = _setup(threads, device)
    batch_list = [int(b) for b in _split(batches or ("1,8,32,128" if device == "cuda" else "1"))]
    rows, notes = [], []
    record = {"env": _environment(device, threads), "variant": variant, "rows": rows, "notes": notes}
    name = name or f"forward_{device}_{variant}"
    for backend in _split(backends):
        for dname in _split(dtypes):
            if (backend == "onnx" and (dname != "fp32" or device != "cpu")) or (dname == "fp16" and device == "cpu"):
                continue
            net = _build(variant).to(device)
            fast = optimize_for_inference(net, backend=backend, dtype=DTYPES[dname])
            for b in batch_list:
                x = torch.randn(b, 1, 224, 224, device=device)
                try:
                    first = _time(lambda: fast(x), device, 0, 1)[0]  # compile / autotune happen here
                    t = _time(lambda: fast(x), device, max(0, warmup - 1), reps)
                except RuntimeError as err:  # e.g. CUDA out of memory at batch 128
                    notes.append(f"{backend}/{dname}/batch {b}: {err}".splitlines()[0])
                    continue
                med = statistics.median(t)
                row = {"what": "forward", "backend": backend, "dtype": dname, "batch": b, "median_s": med}
                row.update(min_s=min(t), ms_per_slice=1000 * med / b, slices_per_s=b / med, first_call_s=first)
                if device.startswith("cuda"):
                    row["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                    torch.cuda.reset_peak_memory_stats()
                rows.append(row)
                _write(name, record, _command(), final=False)
            net = fast = None  # free before the next build (a `del` confuses pyflakes: the lambda above)
    if "bf16" in _split(dtypes) and device == "cpu" and not cpu_supports_bf16():
        notes.append("This CPU has no AVX512-BF16/AMX: CPU bf16 is emulated, expected slower than fp32.")
    if train:
        loss_fn, loss_name = _loss_fn()
        notes.append(f"train step loss: {loss_name}")
        for dname in _split(dtypes):
            if device == "cpu" and (dname == "fp16" or (dname == "bf16" and not cpu_supports_bf16())):
                continue  # emulated CPU bf16 training ran > 10 min per step here: not worth timing
            net = _build(variant).to(device).train()
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
            x = torch.randn(train_batch, 1, 224, 224, device=device)
            y = torch.randint(0, 9, (train_batch, 224, 224), device=device)
            scaler = torch.amp.GradScaler(device, enabled=dname == "fp16")

            def step() -> None:
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device_type=device, dtype=DTYPES[dname], enabled=dname != "fp32"):
                    loss = loss_fn(net(x), y)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()

            t = _time(step, device, 1, max(2, reps // 2))
            med = statistics.median(t)
            row = {"what": "train_step", "backend": "eager", "dtype": dname, "batch": train_batch, "median_s": med}
            row.update(min_s=min(t), ms_per_slice=1000 * med / train_batch, slices_per_s=train_batch / med)
            rows.append(row)
            _write(name, record, _command(), final=False)
            del net, opt
    _write(name, record, _command())


# ----------------------------------------------------------------------------------------------- volume
def _bundle_volume_inference(
    fast,
    image_path: Path,
    out_dir: Path,
    batch: int,
    device: str = "cpu",
    amp: Optional[torch.dtype] = None,
    mode: str = "whole",
) -> int:
    """The bundle's own path, as configs/inference.yaml runs it: ct_volume_transforms (the DataLoader's work, CPU)
    -> the volume to ``device`` (the evaluator's prepare_batch) -> AxialSliceInferer there (bicubic 224², network,
    bilinear scores back, per-chunk argmax), under ``amp`` autocast as ``--amp True`` -> SaveLabelNiftid (uint8
    NIfTI, CPU). ``mode``: ``whole`` (official whole-slice resize), ``whole:<mm>`` (one 224² grid of <mm> pixels) or
    ``sliding:<mm>`` (``slice_window: sliding`` at <mm>)."""

    window, _, size = mode.partition(":")
    data = ct_volume_transforms(keys=["image"])({"image": str(image_path)})
    image = data["image"]
    volume = image[None].to(device, non_blocking=True)
    inferer = AxialSliceInferer(
        roi_size=(224, 224), sw_batch_size=batch, pixel_size=float(size) if size else None, slice_window=window
    )
    with torch.autocast(torch.device(device).type, dtype=amp, enabled=amp is not None):
        pred = inferer(volume, fast)[0]
    SaveLabelNiftid(keys="pred", output_dir=str(out_dir), overwrite=True)({"image": image, "pred": pred})
    return int(image.shape[-1])


def _reset_peak_rss() -> bool:
    """Resets the process's peak RSS (VmHWM) so that the next row's peak is its own (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_gib() -> float:
    """VmHWM (since the last :func:`_reset_peak_rss`), else the process maximum."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def volume(
    variant: str = "paper",
    device: str = "auto",
    threads: int = 2,
    backend: str = "auto",
    dtype: str = "fp32",
    batch: int = 4,
    slices: int = 200,
    modes: str = "whole",
    rounds: int = 1,
    name: str = "",
) -> None:
    """Whole-volume inference of a synthetic 512×512×``slices`` CT NIfTI (0.7 mm pixels), read to written mask.

    ``modes``: comma-separated ``whole`` (official whole-slice resize), ``whole:<mm>`` or ``sliding:<mm>``
    (``slice_window: sliding``); timed alternately, ``rounds`` times each, in this process (a shared machine's load
    hits every mode alike). Peak RSS per row: the process's VmHWM reset before the row (Linux), so a row's peak
    includes what earlier rows left allocated (``rss_start_gib``); the first row's includes the setup.

    The path is the bundle's own, as configs/inference.yaml wires it.
    """
    device = _setup(threads, device)
    tmp = Path(tempfile.mkdtemp(prefix="msa2net_bench_"))
    image = tmp / "ct.nii.gz"
    write_body_ct(image, (512, 512, slices))
    net = _build(variant).to(device)
    on_cuda = device.startswith("cuda")
    t0 = time.perf_counter()
    # CUDA: fp32 network under the engine's autocast, as inference.yaml's --amp True; CPU: the backend's own dtype
    fast = optimize_for_inference(net, backend=backend, dtype=torch.float32 if on_cuda else DTYPES[dtype])
    amp = DTYPES[dtype] if on_cuda and dtype != "fp32" else None
    with torch.autocast(torch.device(device).type, dtype=amp, enabled=amp is not None):
        fast(torch.randn(1, 1, 224, 224, device=device))  # builds/exports/compiles outside the timed part
    setup_s = time.perf_counter() - t0
    notes = [
        "path: bundle.transforms.ct.ct_volume_transforms -> volume to the device -> "
        "bundle.inferers.axial.AxialSliceInferer there (resampling and argmax on the device) -> SaveLabelNiftid"
    ]
    notes.append("setup_s (build + ONNX export or cache hit + session, untimed otherwise): counted in the first peak")
    notes.append(
        "modes: whole = official whole-slice resize; whole:P = one 224² grid of P mm; sliding:P = slice_window "
        "sliding at P mm (0.5 overlap, windows over the body's box); rows alternate in one process"
    )
    if on_cuda:
        notes.append(f"CUDA {dtype}: the inferer under torch.autocast (configs/inference.yaml --amp True)")
    rows, record_name = [], name or f"volume_{device}_{variant}_{backend}_{dtype}_b{batch}_bundle"
    for r in range(int(rounds)):
        for mode in _split(modes):
            rss_start = _peak_rss_gib() if _reset_peak_rss() else float("nan")
            if on_cuda:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            depth = _bundle_volume_inference(fast, image, tmp / "out", batch, device, amp, mode)
            wall = time.perf_counter() - t0
            row = {"mode": mode, "round": r + 1, "backend": backend, "dtype": dtype, "batch": batch, "slices": depth}
            row.update(
                wall_s=wall,
                slices_per_s=depth / wall,
                setup_s=setup_s,
                peak_rss_gib=_peak_rss_gib(),
                rss_start_gib=rss_start,
                load_1min=os.getloadavg()[0],
            )
            if on_cuda:
                row["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            rows.append(row)
            print(json.dumps(row), flush=True)
            record = {"env": _environment(device, threads), "variant": variant, "rows": rows, "notes": notes}
            _write(record_name, record, _command(), final=False)  # a row at a time: a killed run keeps its rows
    _write(record_name, record, _command())
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- loader
def loader(
    threads: int = 2,
    workers="0,2",
    volumes: int = 4,
    shape="512,512,100",
    batch_size: int = 20,
    slices_per_volume: int = 4,
    batches: int = 20,
    augment: bool = True,
    consumer_batch: int = 2,
    device: str = "auto",
    name: str = "loader",
) -> None:
    """Slices/s delivered by ``configs/train.yaml``'s training DataLoader against the network's consumption rate.

    The loader is built from the config itself (``train#dataloader``: CacheDataset of HU-windowed volumes, slice
    sampling, resize to 224², the official augmentation list) over synthetic CT volumes of ``shape``; the cache is
    filled first (timed apart), then ``batches`` batches are drawn per worker count. The consumer rate is one
    training step (forward + BDoU + backward + SGD) of the paper variant at ``consumer_batch`` on ``device``.
    """
    from monai.bundle import ConfigParser

    device = _setup(threads, device)
    dims = [int(v) for v in _split(shape)]
    rows, notes = [], []
    tmp = Path(tempfile.mkdtemp(prefix="msa2net_loader_"))
    try:
        items = []
        for i in range(volumes):
            img, lab = tmp / f"vol{i}.nii.gz", tmp / f"vol{i}_label.nii.gz"
            write_synthetic_case(str(img), str(lab), shape=dims, seed=i)
            items.append({"image": img.name, "label": lab.name})
        (tmp / "dataset.json").write_text(json.dumps({"training": items, "validation": items[:1]}))
        for w in [int(v) for v in _split(workers)]:
            parser = ConfigParser()
            parser.read_config(str(ROOT / "configs" / "train.yaml"))
            parser.update(
                {
                    "bundle_root": str(ROOT),
                    "dataset_dir": str(tmp),
                    "output_dir": str(tmp / "run"),
                    "num_workers": w,
                    "batch_size": batch_size,
                    "slices_per_volume": slices_per_volume,
                    "slices_per_epoch": batch_size * batches,
                    "augment": augment,
                    "cache_rate": 1.0,
                }
            )
            start = time.perf_counter()
            dataloader = parser.get_parsed_content("train#dataloader")
            cache_s = time.perf_counter() - start
            start, slices, first = time.perf_counter(), 0, None
            for batch in dataloader:
                slices += batch["image"].shape[0]
                first = first or time.perf_counter() - start
            total = time.perf_counter() - start
            rows.append(
                {
                    "what": "loader",
                    "workers": w,
                    "batch": batch_size,
                    "slices": slices,
                    "cache_fill_s": round(cache_s, 2),
                    "first_batch_s": round(first, 3),
                    "slices_per_s": slices / total,
                }
            )
        net = _build("paper").to(device).train()
        loss_fn, loss_name = _loss_fn()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(consumer_batch, 1, 224, 224, device=device)
        y = torch.randint(0, 9, (consumer_batch, 224, 224), device=device)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()

        t = statistics.median(_time(step, device, warmup=1, reps=3))
        rows.append({"what": f"train step ({loss_name})", "batch": consumer_batch, "slices_per_s": consumer_batch / t})
        notes.append(
            f"synthetic CT {volumes} x {dims}, augmentation {'on' if augment else 'off'}; the loader keeps up when its "
            "slices/s exceeds the train step's"
        )
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    record = {"env": _environment(device, threads), "rows": rows, "notes": notes}
    _write(name, record, _command())


# ----------------------------------------------------------------------------------------------- data path
_OFFICIAL_LOADER = """
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from datasets.datasets_synapse import Synapse_dataset
from torch.utils.data import DataLoader
ds = Synapse_dataset(base_dir=sys.argv[2], list_dir=sys.argv[3], split="train", img_size=224)
np.random.seed(int(sys.argv[6])); torch.manual_seed(int(sys.argv[6]))
loader = DataLoader(ds, batch_size=int(sys.argv[5]), shuffle=True, num_workers=0)
want, seen, start = int(sys.argv[4]), 0, time.perf_counter()
while seen < want:
    for batch in loader:  # as the official trainer: image (B, 224, 224) -> (B, 1, 224, 224) float, label long
        image, label = batch["image"].unsqueeze(1).float(), batch["label"].long()
        seen += image.shape[0]
        if seen >= want:
            break
print(json.dumps({"slices": seen, "seconds": time.perf_counter() - start, "numpy": np.__version__}))
"""


def _real_ct_cases(data: str, cases: int, depth: int, dest: Path) -> tuple:
    """The demo's real 512² DICOM series (HU) and its labels, tiled along z to ``depth`` slices per case.

    Written twice: as NIfTI volumes for the bundle (stored as the series is, LPS) and as the official release's
    ``train_npz/caseXXXX_sliceYYY.npz`` slices (HU window → [0, 1], the canonical PLS layout) + ``train.txt``.
    """
    import nibabel as nib
    from monai.transforms import LoadImage

    data_dir = ROOT / data
    if not (data_dir / "dataset.json").exists():
        build_demo(str(data_dir))
    ct = LoadImage(reader="ITKReader", image_only=True)(str(data_dir / "raw" / "example_ct_dicom"))
    affine = np.asarray(ct.affine)
    seg = nib.load(str(data_dir / "raw" / "example_seg_dicom.nii.gz"))
    lab = remap_labels(np.asarray(seg.dataobj).astype(np.int64), TOTALSEG_TO_SYNAPSE)
    # the label file is stored y-flipped against the series: same world grid, reoriented onto the series' order
    lab = reorient_array(lab, seg.affine, "".join(nib.aff2axcodes(affine)))
    image = np.asarray(ct, dtype=np.float32)
    reps = -(-depth // image.shape[-1])
    image, lab = np.tile(image, (1, 1, reps))[..., :depth], np.tile(lab, (1, 1, reps))[..., :depth]
    (dest / "npz").mkdir(parents=True, exist_ok=True)
    items, names = [], []
    pls_img = reorient_array(np.clip((image + 125.0) / 400.0, 0, 1), affine)
    pls_lab = reorient_array(lab, affine)
    for c in range(cases):
        img_path, lab_path = dest / f"case{c:04d}.nii.gz", dest / f"case{c:04d}_label.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), str(img_path))
        nib.save(nib.Nifti1Image(lab.astype(np.uint8), affine), str(lab_path))
        items.append({"image": img_path.name, "label": lab_path.name})
        for z in range(depth):
            name = f"case{c:04d}_slice{z:03d}"
            np.savez(
                dest / "npz" / f"{name}.npz",
                image=pls_img[..., z].astype(np.float32),
                label=pls_lab[..., z].astype(np.float32),
            )
            names.append(name)
    (dest / "dataset.json").write_text(json.dumps({"training": items, "validation": items[:1]}))
    (dest / "train.txt").write_text("\n".join(names) + "\n")
    return dest / "dataset.json", dest / "npz", dest


def _train_workflow(**override):
    """``configs/train.yaml`` as a ConfigWorkflow with ``override`` (initialised)."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=str(ROOT / "configs" / "train.yaml"),
        meta_file=str(ROOT / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        bundle_root=str(ROOT),
        **override,
    )
    wf.initialize()
    return wf


def _ours(dataset_dir: Path, backend: str, slices: int, batch: int, nested: bool = False) -> dict:
    """One epoch of ``slices`` slices through ``train#trainer`` with a 1×1-conv stand-in network, one core."""
    override = {
        "dataset_dir": str(dataset_dir),
        "output_dir": str(dataset_dir / f"run_{backend}"),
        "network_def": {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 9, "kernel_size": 1},
        "epochs": 1,
        "batch_size": batch,
        "slices_per_epoch": slices,
        "num_workers": 0,
        "val_interval": 10**6,
        "show_progress": False,
        "device": "cpu",
        "augment_backend": backend,
        "learning_rate": 0.0,
        "loss_name": "ce",  # the data path is measured, not BDoU's boundary convolutions (network side)
    }
    if nested:  # the configuration before the fix: a nested Compose, so CacheDataset cached the file paths
        override["train#preprocessing"] = {
            "_target_": "Compose", "transforms": ["@train#deterministic_transforms", "@train#random_transforms"]
        }  # fmt: skip
    wf = _train_workflow(**override)
    start = time.perf_counter()
    loader = wf.parser.get_parsed_content("train#dataloader")  # builds the cache / slice table
    build = time.perf_counter() - start
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(1)
    start, seen = time.perf_counter(), 0
    for item in loader:  # the data path alone: every batch as the trainer receives it
        seen += item["image"].shape[0]
    alone = time.perf_counter() - start
    trainer = wf.parser.get_parsed_content("train#trainer")
    start = time.perf_counter()
    trainer.run()
    run = time.perf_counter() - start
    wf.finalize()
    return {
        "slices": seen,
        "seconds": alone,
        "build_s": build,
        "trainer_s": run,
        "trainer_slices": trainer.state.iteration * batch,
    }


def datapath(
    data: str = "demo_data",
    cases: int = 2,
    depth: int = 100,
    slices: int = 400,
    batch: int = 20,
    rounds: int = 3,
    official_repo: Optional[str] = None,
    official_python: Optional[str] = None,
    backends: str = "batched,monai,monai_nested",
    name: str = "datapath_cpu",
) -> None:
    """Slices/s per core of the whole training data path, ours against the official loader, in alternating rounds.

    Same real CT slices for both (the demo's 512² DICOM series, tiled to ``depth`` slices per case, ``cases``
    cases): ours through ``train#trainer`` (load, cache or slice table, slice sampling, resize, the official
    augmentation list, batch preparation, a 1×1-conv stand-in step), per ``backends``: ``batched`` (slice table,
    batched augmentation), ``monai`` (flat Compose, CacheDataset), ``monai_nested`` (the config before the fix);
    the official ``datasets_synapse.Synapse_dataset`` (npz slices, imgaug, scipy zoom) through a DataLoader, run by
    ``official_python`` (a venv with numpy < 1.24 and imgaug 0.4.0: docs/performance.md) from ``official_repo``.
    One thread each (``torch.set_num_threads(1)``, no workers): per-core rates. Build times (cache fill, slice
    table) are reported apart.
    """
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="msa2net_datapath_"))
    rows, notes, runs = [], [], {}
    try:
        _, npz_dir, list_dir = _real_ct_cases(data, cases, depth, tmp)
        for r in range(rounds):
            for backend in _split(backends):
                out = _ours(tmp, backend.replace("_nested", ""), slices, batch, nested=backend.endswith("_nested"))
                runs.setdefault(backend, []).append(out)
            if official_repo and official_python:
                script = tmp / "official_loader.py"
                script.write_text(_OFFICIAL_LOADER)
                res = subprocess.run(
                    [official_python, str(script), official_repo, str(npz_dir), str(list_dir), str(slices),
                     str(batch), str(r)],
                    capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                )  # fmt: skip
                if res.returncode:
                    raise RuntimeError(f"official loader failed: {res.stderr[-2000:]}")
                runs.setdefault("official", []).append(json.loads(res.stdout.strip().splitlines()[-1]))
        official = (
            statistics.median(x["slices"] / x["seconds"] for x in runs.get("official", []))
            if "official" in runs
            else None
        )
        for what, results in runs.items():
            rate = statistics.median(x["slices"] / x["seconds"] for x in results)
            row = {"path": what, "rounds": len(results), "slices_per_s_per_core": rate}
            if "build_s" in results[0]:
                row["build_s"] = statistics.median(x["build_s"] for x in results)
                row["through_trainer_slices_per_s"] = statistics.median(
                    x["trainer_slices"] / x["trainer_s"] for x in results
                )
            if official:
                row["x_official"] = rate / official
            rows.append(row)
        notes.extend(
            [
                f"real CT: the demo DICOM series (512x512x20, 0.98 mm) tiled to {cases} cases x {depth} slices; "
                f"epochs of {slices} slices at batch {batch}; 1 thread, 0 workers; rounds alternate ours/official; "
                "median of rounds",
                "slices_per_s_per_core: iterating the training loader (ours: train#dataloader, every batch normalised "
                "and augmented as the trainer receives it; official: DataLoader over Synapse_dataset, batch 20, "
                "shuffled)",
                "through_trainer_slices_per_s: the same epoch through train#trainer with a 1x1-conv stand-in network "
                "and cross-entropy (train Dice post-processing, handlers, backward, SGD step included)",
            ]
        )
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    record = {"env": _environment("cpu", 1), "rows": rows, "notes": notes}
    _write(name, record, _command())


# ----------------------------------------------------------------------------------------------- training
def training(
    device: str = "auto",
    backends: str = "batched,monai",
    batch: int = 20,
    iterations: int = 30,
    warmup: int = 5,
    cases: int = 4,
    depth: int = 100,
    amp: bool = True,
    channels_last: bool = True,
    compile: bool = False,
    workers: int = 8,
    threads: int = 0,
    name: str = "",
) -> None:
    """End-to-end training slices/s through ``train#trainer`` (real MSA²Net, BDoU, SGD) per data path, against
    the no-loading rate: the same step on batches resident on the device.

    Volumes: ``cases`` synthetic CT cases of 512 × 512 × ``depth`` (a machine without the demo data can run it).
    ``amp`` autocasts bf16 on CUDA. The first ``warmup`` iterations are not timed. The target (issue: training at
    GPU speed) is end-to-end ≥ 90 % of the no-loading rate.
    """
    from ignite.engine import Events

    device = _setup(threads or torch.get_num_threads(), device)
    tmp = Path(tempfile.mkdtemp(prefix="msa2net_training_"))
    rows, notes = [], []
    try:
        items = []
        for i in range(cases):
            img, lab = tmp / f"vol{i}.nii.gz", tmp / f"vol{i}_label.nii.gz"
            write_synthetic_case(str(img), str(lab), shape=(512, 512, depth), seed=i)
            items.append({"image": img.name, "label": lab.name})
        (tmp / "dataset.json").write_text(json.dumps({"training": items, "validation": items[:1]}))
        total = warmup + iterations
        for backend in _split(backends):
            wf = _train_workflow(
                dataset_dir=str(tmp),
                output_dir=str(tmp / f"run_{backend}"),
                device=device,
                amp=amp,
                channels_last=channels_last,
                compile=compile,
                epochs=1,
                batch_size=batch,
                slices_per_epoch=batch * total,
                num_workers=workers if backend == "monai" else 0,
                val_interval=10**6,
                show_progress=False,
                augment_backend=backend,
            )
            start = time.perf_counter()
            loader = wf.parser.get_parsed_content("train#dataloader")
            build = time.perf_counter() - start
            start, seen = time.perf_counter(), 0
            for item in loader:  # the data path alone, batches ready on the device
                seen += item["image"].shape[0]
            _sync(device)
            rows.append({"what": f"data path alone ({backend})", "batch": batch,
                         "slices_per_s": seen / (time.perf_counter() - start)})  # fmt: skip
            trainer = wf.parser.get_parsed_content("train#trainer")
            stamps = []

            def stamp(engine) -> None:
                _sync(device)
                stamps.append(time.perf_counter())

            trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
            trainer.run()
            timed = stamps[warmup:]
            rate = batch * (len(timed) - 1) / (timed[-1] - timed[0])
            rows.append(
                {"what": f"train end-to-end ({backend})", "batch": batch, "slices_per_s": rate, "build_s": build}
            )
            wf.finalize()
        # the no-loading rate: the same step (network, BDoU, SGD, autocast) on resident tensors
        net = _build("paper").to(device).train()
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        loss_fn = make_loss("bdou")
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        x = torch.randn(batch, 1, 224, 224, device=device)
        y = torch.randint(0, 9, (batch, 1, 224, 224), device=device).float()
        on_cuda = device.startswith("cuda")

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(
                device_type="cuda" if on_cuda else "cpu", dtype=torch.bfloat16, enabled=amp and on_cuda
            ):
                loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()

        t = statistics.median(_time(step, device, warmup, iterations))
        resident = batch / t
        rows.append({"what": "train step, resident batch (no loading)", "batch": batch, "slices_per_s": resident})
        for row in rows[:-1]:
            if row["what"].startswith("train"):
                row["x_no_loading"] = row["slices_per_s"] / resident
        notes.append(
            f"synthetic CT {cases} x 512x512x{depth}; amp bf16 {amp and on_cuda}; channels_last {channels_last}; "
            f"compile {compile}; monai backend with {workers} workers; {iterations} timed iterations after {warmup}"
        )
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    record = {"env": _environment(device, torch.get_num_threads()), "rows": rows, "notes": notes}
    _write(name or f"training_{device}", record, _command())


# ----------------------------------------------------------------------------------------------- tensorrt
def tensorrt(
    variant: str = "paper",
    precisions: str = "fp32,tf32",
    batches: str = "1,16,32",
    opt_level: int = 3,
    reps: int = 20,
    warmup: int = 3,
    slices: int = 200,
    name: str = "tensorrt_cuda",
    device: str = "cuda",
) -> None:
    """TensorRT engines as configs/inference_trt.yaml builds them, against eager PyTorch on CUDA: parity and speed.

    Per precision, one engine for batches 1..max(batches) (``bundle.inferers.tensorrt.trt_network``, built once:
    ``build_s``); on one random MSA²Net and input: max |Δ logit|, relative L2 and argmax agreement (all pixels, and
    pixels whose fp32 top-1/top-2 margin exceeds 0.05) against eager fp32 with TF32 off; forward slices/s per batch
    for the engine and for eager fp32 (torch defaults) / bf16 autocast in the same process; one whole-volume run
    (a synthetic 512×512×``slices`` CT through bundle.inference.AxialSliceInferer, as the inference config runs it).
    Without CUDA or TensorRT the record says why (no rows) instead of failing.
    """
    import copy

    from bundle.errors import InputError
    from bundle.inferers.tensorrt import check_tensorrt, trt_network

    batch_list = [int(b) for b in _split(batches)]
    rows, notes = [], []
    env = _environment(device if torch.cuda.is_available() else "cpu", torch.get_num_threads())
    try:
        env["tensorrt"] = check_tensorrt(device, "fp32")
    except InputError as err:
        notes.append(f"skipped: {err}")
        _write(name, {"env": env, "variant": variant, "rows": rows, "notes": notes}, _command())
        return
    tmp = Path(tempfile.mkdtemp(prefix="msa2net_trt_"))
    net = _build(variant).to(device)
    ckpt = tmp / "model.pt"  # names the engines (trt_network hashes it), as models/model.pt does in the config
    torch.save({"model": net.state_dict()}, ckpt)
    x = torch.randn(4, 1, 224, 224, device=device, generator=torch.Generator(device).manual_seed(1))
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
    with torch.inference_mode():
        ref = net(x).float()
    torch.backends.cudnn.allow_tf32 = True  # torch's default again for the eager timings
    top2 = ref.topk(2, dim=1).values
    confident = (top2[:, 0] - top2[:, 1]) > 0.05
    image = tmp / "ct.nii.gz"
    write_body_ct(image, (512, 512, slices))
    for dname in ("fp32", "bf16"):  # eager baselines, same process
        fast = optimize_for_inference(copy.deepcopy(net), backend="eager", dtype=DTYPES[dname])
        for b in batch_list:
            xb = torch.randn(b, 1, 224, 224, device=device)
            med = statistics.median(_time(lambda: fast(xb), device, warmup, reps))
            rows.append({"what": "forward", "backend": "eager", "dtype": dname, "batch": b, "slices_per_s": b / med})
    for precision in _split(precisions):
        try:
            check_tensorrt(device, precision)
        except InputError as err:
            notes.append(f"{precision} skipped: {err}")
            continue
        engine = trt_network(copy.deepcopy(net), str(ckpt), device, precision, max(batch_list), opt_level, str(tmp))
        t0 = time.perf_counter()
        with torch.no_grad():  # as AxialSliceInferer calls it (the ONNX export traces; inference_mode is not needed)
            engine(x[:1])  # exports to ONNX and builds the engine (saved under tmp)
        build_s = time.perf_counter() - t0
        with torch.no_grad():
            out = engine(x).float().clone()  # the engine reuses its output buffer: keep a copy
        diff = out - ref
        agree = out.argmax(1) == ref.argmax(1)
        row = {"what": "parity_vs_eager_fp32", "backend": "tensorrt", "dtype": precision, "batch": int(x.shape[0])}
        row.update(max_abs_diff=diff.abs().max().item(), rel_l2=(diff.norm() / ref.norm()).item())
        row.update(
            argmax_agreement=agree.float().mean().item(),
            argmax_agreement_confident=agree[confident].float().mean().item(),
        )
        row.update(build_s=build_s)
        rows.append(row)
        for b in batch_list:
            xb = torch.randn(b, 1, 224, 224, device=device)
            med = statistics.median(_time(lambda: engine(xb), device, warmup, reps))
            rows.append(
                {"what": "forward", "backend": "tensorrt", "dtype": precision, "batch": b, "slices_per_s": b / med}
            )
        t0 = time.perf_counter()
        depth = _bundle_volume_inference(lambda v: engine(v).float(), image, tmp / "out", max(batch_list), device)
        wall = time.perf_counter() - t0
        rows.append(
            {
                "what": "volume",
                "backend": "tensorrt",
                "dtype": precision,
                "batch": max(batch_list),
                "slices_per_s": depth / wall,
            }
        )
        engine = None
    notes.append(
        f"engines: MONAI trt_compile (ONNX → TensorRT), batch 1-{max(batch_list)}, builder level {opt_level}; parity "
        "reference: eager fp32 with TF32 off; eager timings with torch defaults (cuDNN TF32 on); volume: synthetic "
        f"512x512x{slices} CT read to mask, volume and resampling on the device (inference.yaml's path), reading and "
        "HU window on the CPU included"
    )
    _write(name, {"env": env, "variant": variant, "rows": rows, "notes": notes}, _command())
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- organ Dice
def _infer_config(backend: str, image: str, out_dir: Path, ckpt: str, calibration: str, threads: int) -> Path:
    """One ``configs/inference.yaml`` run of ``backend`` on ``image``; returns the written label map."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=str(ROOT / "configs" / "inference.yaml"),
        meta_file=str(ROOT / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        bundle_root=str(ROOT),
        input=image,
        output_dir=str(out_dir),
        ckpt_path=ckpt,
        num_workers=0,
        show_progress=False,
        overwrite=True,
        backend=backend,
        calibration=[calibration] if calibration else [],
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    name = Path(image.rstrip("/")).name.replace(".nii.gz", "")
    return out_dir / f"{name}_seg.nii.gz"


def organ_dice(
    backends: str = "eager,onnx,openvino,openvino_bf16,openvino_int8",
    ckpt: str = "runs/demo/model.pt",
    data: str = "demo_data",
    calibration: str = "demo_data/imagesTr/demo_train.nii.gz",
    threads: int = 2,
    name: str = "organ_dice_cpu_demo",
) -> None:
    """Per-organ Dice of each backend on the demo's two real scans, through ``configs/inference.yaml``.

    Scans: the held-out slices (``imagesTs``, 13 slices at 3 mm, scored against ``labelsTs``) and the unseen DICOM
    series (20 slices of 512², scored in world space against ``raw/example_seg_dicom.nii.gz`` on the organs it
    holds, as ``scripts/demo/run_demo.py`` does). Each row: a backend's Dice per organ, its change against
    ``eager`` (fp32, the reference; first in ``backends``), and the share of voxels, and of voxels labelled as an
    organ by either, whose label equals eager's. INT8 backends calibrate on ``calibration`` (not a scored scan).
    """
    sys.path.insert(0, str(ROOT / "scripts" / "demo"))
    from run_demo import DICOM_ORGANS, dice_per_organ, dicom_dice, load_canonical  # the demo's own scoring

    _setup(threads, "cpu")
    data_dir = ROOT / data
    scans = {
        "held_out": (str(data_dir / "imagesTs" / "demo_test.nii.gz"), str(data_dir / "labelsTs" / "demo_test.nii.gz")),
        "dicom": (str(data_dir / "raw" / "example_ct_dicom"), str(data_dir / "raw" / "example_seg_dicom.nii.gz")),
    }
    tmp = Path(tempfile.mkdtemp(prefix="msa2net_dice_"))
    calibration_path = str(ROOT / calibration) if calibration else ""
    preds: Dict[str, Dict[str, np.ndarray]] = {}
    rows = []
    for backend in _split(backends):
        for scan, (image, label) in scans.items():
            t0 = time.perf_counter()
            pred_path = _infer_config(backend, image, tmp / backend / scan, str(ROOT / ckpt), calibration_path, threads)
            wall = time.perf_counter() - t0
            pred = load_canonical(str(pred_path))
            if scan == "dicom":
                scores, _ = dicom_dice(str(pred_path), label)  # every organ the reference holds
            else:
                scores = dice_per_organ(pred, load_canonical(label))
            preds.setdefault(scan, {})[backend] = pred
            ref = preds[scan][_split(backends)[0]]
            organs = (ref > 0) | (pred > 0)
            row = {"backend": backend, "scan": scan, "wall_s_incl_setup": wall}
            row.update({f"dice_{k}": v for k, v in scores.items()})
            row["mean_dice"] = float(np.nanmean(list(scores.values())))
            base = next(r for r in rows + [row] if r["scan"] == scan and r["backend"] == _split(backends)[0])
            deltas = {k: row[f"dice_{k}"] - base[f"dice_{k}"] for k in scores}
            row.update({f"delta_{k}": v for k, v in deltas.items()})
            row["max_abs_delta"] = float(np.nanmax(np.abs(list(deltas.values()))))
            row["label_agreement"] = float((pred == ref).mean())
            row["organ_label_agreement"] = float((pred == ref)[organs].mean()) if organs.any() else 1.0
            rows.append(row)
            print(json.dumps(row), flush=True)
    notes = [
        "Dice against the demo's reference labels (TotalSegmentator model outputs, not manual); deltas against the "
        f"first backend ({_split(backends)[0]}); DICOM series: the organs it holds ({', '.join(DICOM_ORGANS)}).",
        f"INT8 calibration: {calibration or 'none'} (the demo's training CT: no scored slice), slices prepared by the "
        "run's own preprocessing and slice mapping (bundle.inferers.calibration).",
        "wall_s_incl_setup: one process, shared cores; includes network build, export/calibration cache look-up and "
        "compilation: not a speed figure (see side_by_side and inference_200_cpu).",
    ]
    record = {"env": _environment("cpu", threads), "ckpt": ckpt, "rows": rows, "notes": notes}
    _write(name, record, _command())
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- INT8 recipes
# which operations stay fp32 (regular expressions of the ONNX node names of bundle.networks.MSA2Net)
INT8_RECIPES = {
    "all": (),
    "se_fp32": (r"^/encoder/.*/conv/se/.*",),  # the openvino_int8 backend's recipe (bundle.inferers.openvino)
    "stage0_fp32": (r"^/encoder/stem/.*", r"^/encoder/stages\.0/.*"),
    "encoder_convs_fp32": (r"^/encoder/.*/conv/.*", r"^/encoder/stem/.*"),
    "encoder_fp32": (r"^/encoder/.*",),
    "decoder_fp32": (r"^/stages\..*", r"^/bottleneck_up/.*", r"^/head/.*"),
}


def _ort_int8(onnx_path: Path, calibration: torch.Tensor, dest: Path) -> Path:
    """ONNX Runtime static QDQ quantization: per-channel int8 weights, uint8 activations (MinMax over the
    calibration slices), convolutions and matrix products; the rest fp32."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": s[None].numpy()} for s in calibration])

        def get_next(self):
            return next(self.items, None)

    pre = dest.with_suffix(".pre.onnx")
    quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "MatMul", "Gemm"], calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"CalibMaxIntermediateOutputs": 4})  # fmt: skip
    pre.unlink()
    return dest


def int8_recipes(
    ckpt: str = "runs/demo/model.pt",
    inputs: str = "demo_data/imagesTs/demo_test.nii.gz,demo_data/raw/example_ct_dicom",
    calibration: str = "demo_data/imagesTr/demo_train.nii.gz",
    recipes: str = ",".join(INT8_RECIPES),
    onnx_int8: bool = True,
    variant: str = "paper",
    threads: int = 2,
    batch: int = 8,
    rounds: int = 6,
    name: str = "int8_recipes_cpu_demo",
) -> None:
    """INT8 post-training quantization recipes of a trained checkpoint, side by side with fp32 and bf16.

    Each recipe of :data:`INT8_RECIPES` is an NNCF quantization (transformer preset) of the fp32 ONNX export with
    some operations left fp32; ``onnx_int8`` adds ONNX Runtime's static QDQ quantization. All calibrate on the
    slices of ``calibration`` and are scored on the slices of ``inputs`` (both prepared as configs/inference.yaml
    prepares them for ``ckpt``) at 224²: argmax agreement with eager fp32 on all pixels and on organ pixels (an
    organ in either), and time per slice alternately with ONNX Runtime fp32, OpenVINO fp32 and bf16.
    """
    import onnxruntime as ort

    _setup(threads, "cpu")
    net = _build(variant)
    trained = torch.load(ckpt, map_location="cpu", weights_only=True)
    net.load_state_dict(trained.get("model", trained))
    slices, calib = _network_slices(inputs, ckpt), _network_slices(calibration, ckpt)
    onnx_path = cached_onnx(net)
    tmp = Path(tempfile.mkdtemp(prefix="msa2net_int8_"))
    impls: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1

    def ort_session(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])

    impls["onnx_fp32"] = ort_session(onnx_path)
    impls["openvino_fp32"] = OpenVinoInference(onnx_path, "fp32")
    try:
        impls["openvino_bf16"] = OpenVinoInference(onnx_path, "bf16")
    except Exception as err:  # no native bf16
        print(f"openvino bf16 skipped: {err}")
    setup_s = {}
    for recipe in _split(recipes):
        t0 = time.perf_counter()
        path = quantize_int8(onnx_path, calib, tmp / f"{recipe}.xml", ignored=INT8_RECIPES[recipe])
        setup_s[f"openvino_int8_{recipe}"] = time.perf_counter() - t0
        impls[f"openvino_int8_{recipe}"] = OpenVinoInference(path, "fp32")  # already quantized: compile only
    if onnx_int8:
        t0 = time.perf_counter()
        impls["onnx_int8_qdq"] = ort_session(_ort_int8(onnx_path, calib, tmp / "ort_int8.onnx"))
        setup_s["onnx_int8_qdq"] = time.perf_counter() - t0
    with torch.no_grad():
        ref = torch.cat([net(slices[i : i + batch]) for i in range(0, len(slices), batch)]).argmax(1)
    agreement = {}
    for k, f in impls.items():
        labels = torch.cat([f(slices[i : i + batch]) for i in range(0, len(slices), batch)]).argmax(1)
        organs = (ref > 0) | (labels > 0)
        agreement[k] = (float((labels == ref).float().mean()), float((labels == ref)[organs].float().mean()))
    x = slices[torch.arange(batch) % len(slices)].contiguous()
    rows = _alternate(impls, x, rounds, ("onnx_fp32", "openvino_fp32"))
    for row in rows:
        row.update(argmax_agreement=agreement[row["impl"]][0], organ_argmax_agreement=agreement[row["impl"]][1])
        row["fp32_ops"] = "; ".join(INT8_RECIPES.get(row["impl"].replace("openvino_int8_", ""), ())) or "-"
        row["quantize_s"] = setup_s.get(row["impl"], "")
    notes = [
        f"{len(slices)} slices of {inputs} scored, {len(calib)} slices of {calibration} calibrate; prepared as "
        f"configs/inference.yaml prepares them for {ckpt}. Agreement at 224² against eager fp32 of the same weights.",
        "NNCF recipes: model_type TRANSFORMER (asymmetric activations, SmoothQuant; softmax, LayerNorm, GELU never "
        "quantized), fp32_ops left unquantized; the rest of each INT8 graph computes in fp32 (precision hint f32).",
        "Times: alternating rounds in one process (only ratios are comparable), batch of real slices.",
    ]
    record = {"env": _environment("cpu", threads), "ckpt": ckpt, "batch": batch, "rounds": rounds}
    record.update(rows=rows, notes=notes)
    _write(name, record, _command())
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- side by side
def _alternate(
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


def side_by_side(
    variant: str = "paper",
    threads: int = 2,
    batch: int = 1,
    rounds: int = 10,
    optimised: str = "onnx,eager",
    official_repo: str = "",
    seed: int = 0,
    name: str = "",
    ckpt: str = "",
    inputs: str = "",
    calibration: str = "",
) -> None:
    """Time implementations alternately in one process (order reversed every round); report ratios.

    Baseline ``ours_eager_fp32``: ``net.eval()`` under ``torch.no_grad()``, contiguous NCHW, nothing else.
    With ``official_repo`` (an extracted checkout) the official network is built by ``bundle.networks.official`` and
    its weights converted into ours, so every implementation computes the same function (max |Δ| to the baseline is
    reported).

    ``ckpt``: a trained checkpoint of ours; every implementation, the official network included (its weights put
    back under the official names), computes it. ``inputs``: CT volumes (comma-separated files or DICOM folders)
    whose slices, prepared as ``configs/inference.yaml`` prepares them for ``ckpt``, are the inputs: the max |Δ|
    and argmax agreement are taken over all of them, the timing on the first ``batch``. ``calibration``: volumes
    for INT8 backends (same preparation). ``optimised`` takes any ``optimize_for_inference`` backend, and
    ``eager_bf16`` (bf16 autocast). Ratios are given against ours eager fp32, the official code and ours ONNX.
    """

    device = _setup(threads, "cpu")
    impls: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    if official_repo:
        official = official_msa2net(official_repo, variant, seed).eval()
        official_state = official.state_dict()
        state, _ = convert_official_state_dict(official_state, variant=variant)
    else:
        state = _build(variant, seed).state_dict()
    if ckpt:
        trained = torch.load(ckpt, map_location="cpu", weights_only=True)
        trained = trained.get("model", trained)
        if official_repo:  # the conversion renames tensors; map each official name to ours through the same objects
            ours_name = {id(v): k for k, v in state.items()}
            official.load_state_dict(
                {k: trained[ours_name[id(v)]] if id(v) in ours_name else v for k, v in official_state.items()}
            )
        state = trained
    base = _build(variant)
    base.load_state_dict(state)
    slices = _network_slices(inputs, ckpt) if inputs else None
    calib = _network_slices(calibration, ckpt) if calibration else None

    def baseline(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return base(x)

    impls["ours_eager_fp32"] = baseline
    for backend in _split(optimised):
        net = _build(variant)
        net.load_state_dict(state)
        if backend == "eager_bf16":
            impls["ours_eager_bf16"] = optimize_for_inference(net, backend="eager", dtype=torch.bfloat16)
            continue
        impls[f"ours_{backend}"] = optimize_for_inference(net, backend=backend, calibration=calib)
    if official_repo:

        def official_fn(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return official(x)

        impls["official"] = official_fn
    if slices is None:
        gen = torch.Generator().manual_seed(seed + 1)
        x = torch.randn(batch, 1, 224, 224, generator=gen)
        checked = [x]
    else:
        x = slices[torch.arange(batch) % len(slices)].contiguous()
        checked = [slices[i : i + batch] for i in range(0, len(slices), batch)]
    refs = [baseline(c) for c in checked]
    diffs, agree = {}, {}
    for k, f in impls.items():
        outs = [f(c) for c in checked]
        diffs[k] = max(float((o - r).abs().max()) for o, r in zip(outs, refs))
        same = torch.cat([(o.argmax(1) == r.argmax(1)).flatten() for o, r in zip(outs, refs)])
        agree[k] = float(same.float().mean())
    rows = _alternate(impls, x, rounds, ("ours_eager_fp32", "official", "ours_onnx"))
    for row in rows:
        row.update(max_abs_diff_vs_baseline=diffs[row["impl"]], argmax_agreement=agree[row["impl"]])
    notes = [
        "Implementations alternate within each round (order reversed every other round); only ratios from one run"
        " are comparable, absolute times depend on the shared machine's load.",
        "Warm-up: the equality check runs each implementation once before timing (ONNX export happens at build).",
    ]
    if slices is not None:
        notes.append(
            f"Inputs: {len(slices)} real CT slices of {inputs} as configs/inference.yaml prepares them for {ckpt}; "
            f"max |Δ| and argmax agreement over all of them (224², against ours eager fp32), timing on {batch}."
        )
    if calib is not None:
        notes.append(f"INT8 calibration: {len(calib)} slices of {calibration} (not among the inputs).")
    record = {"env": _environment(device, threads), "variant": variant, "batch": batch, "rounds": rounds}
    record.update(ckpt=ckpt, rows=rows, notes=notes)
    _write(name or f"side_by_side_cpu_{variant}_b{batch}", record, _command())


def _network_slices(paths: str, ckpt: str) -> torch.Tensor:
    """Every slice of the volumes ``paths`` (comma-separated) as ``configs/inference.yaml`` feeds the network for
    ``ckpt`` (its geometry: orientation, body crop, pixel size), through :class:`CalibrationSlices`."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(ROOT), "ckpt_path": ckpt or str(ROOT / "absent.pt"), "backend": "eager"})
    volumes = [str(ROOT / p) if not os.path.isabs(p) else p for p in _split(paths)]
    inferer = parser.get_parsed_content("inferer")
    return CalibrationSlices(volumes, parser.get_parsed_content("preprocessing"), max_slices=100_000)(inferer)


if __name__ == "__main__":
    run_script(
        {
            "forward": forward,
            "volume": volume,
            "loader": loader,
            "datapath": datapath,
            "training": training,
            "side_by_side": side_by_side,
            "organ_dice": organ_dice,
            "int8_recipes": int8_recipes,
            "tensorrt": tensorrt,
        }
    )
