"""Training data path: the data loader against the official one (``loader``, ``datapath``) and a short
training run (``training``)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from bench_common import build_network, command_line, environment, setup, split_list, sync, time_calls, write_record

from bundle.data.demos import TOTALSEG_TO_SYNAPSE, build_demo
from bundle.data.synapse import remap_labels
from bundle.data.synthetic import write_synthetic_case
from bundle.io.volume import load_image
from bundle.training.losses import BoundaryDoULoss, make_loss
from bundle.transforms.geometry import reorient_array

ROOT = Path(__file__).resolve().parents[2]


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

    device = setup(threads, device)
    dims = [int(v) for v in split_list(shape)]
    rows, notes = [], []
    tmp = Path(tempfile.mkdtemp(prefix="msa2net_loader_"))
    try:
        items = []
        for i in range(volumes):
            img, lab = tmp / f"vol{i}.nii.gz", tmp / f"vol{i}_label.nii.gz"
            write_synthetic_case(str(img), str(lab), shape=dims, seed=i)
            items.append({"image": img.name, "label": lab.name})
        (tmp / "dataset.json").write_text(json.dumps({"training": items, "validation": items[:1]}))
        for w in [int(v) for v in split_list(workers)]:
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
        net = build_network("paper").to(device).train()
        loss_fn, loss_name = BoundaryDoULoss(), "bundle.training.losses.BoundaryDoULoss"
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(consumer_batch, 1, 224, 224, device=device)
        y = torch.randint(0, 9, (consumer_batch, 224, 224), device=device)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()

        t = statistics.median(time_calls(step, device, warmup=1, reps=3))
        rows.append({"what": f"train step ({loss_name})", "batch": consumer_batch, "slices_per_s": consumer_batch / t})
        notes.append(
            f"synthetic CT {volumes} x {dims}, augmentation {'on' if augment else 'off'}; the loader keeps up when its "
            "slices/s exceeds the train step's"
        )
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    record = {"env": environment(device, threads), "rows": rows, "notes": notes}
    write_record(name, record, command_line())


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
    from monai.data import ITKReader

    data_dir = ROOT / data
    if not (data_dir / "dataset.json").exists():
        build_demo(str(data_dir))
    ct = load_image(str(data_dir / "raw" / "example_ct_dicom"), reader=ITKReader())
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
            for backend in split_list(backends):
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
    record = {"env": environment("cpu", 1), "rows": rows, "notes": notes}
    write_record(name, record, command_line())


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

    device = setup(threads or torch.get_num_threads(), device)
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
        for backend in split_list(backends):
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
            sync(device)
            rows.append({"what": f"data path alone ({backend})", "batch": batch,
                         "slices_per_s": seen / (time.perf_counter() - start)})  # fmt: skip
            trainer = wf.parser.get_parsed_content("train#trainer")
            stamps = []

            def stamp(engine) -> None:
                sync(device)
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
        net = build_network("paper").to(device).train()
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

        t = statistics.median(time_calls(step, device, warmup, iterations))
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
    record = {"env": environment(device, torch.get_num_threads()), "rows": rows, "notes": notes}
    write_record(name or f"training_{device}", record, command_line())
