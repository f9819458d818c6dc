"""Whole-volume inference through the bundle's inferer (``volume``): backends, slice-window modes, peak RSS."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
from bench_common import (
    DTYPES,
    build_network,
    command_line,
    environment,
    peak_rss_gib,
    reset_peak_rss,
    setup,
    split_list,
    write_record,
)

from bundle.data.synthetic import write_body_ct
from bundle.inferers.axial import AxialSliceInferer
from bundle.inferers.backends import optimize_for_inference
from bundle.io.volume import SaveLabelNiftid
from bundle.transforms.ct import ct_volume_transforms


# ----------------------------------------------------------------------------------------------- volume
def bundle_volume_inference(
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
    device = setup(threads, device)
    tmp = Path(tempfile.mkdtemp(prefix="msa2net_bench_"))
    image = tmp / "ct.nii.gz"
    write_body_ct(image, (512, 512, slices))
    net = build_network(variant).to(device)
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
        for mode in split_list(modes):
            rss_start = peak_rss_gib() if reset_peak_rss() else float("nan")
            if on_cuda:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            depth = bundle_volume_inference(fast, image, tmp / "out", batch, device, amp, mode)
            wall = time.perf_counter() - t0
            row = {"mode": mode, "round": r + 1, "backend": backend, "dtype": dtype, "batch": batch, "slices": depth}
            row.update(
                wall_s=wall,
                slices_per_s=depth / wall,
                setup_s=setup_s,
                peak_rss_gib=peak_rss_gib(),
                rss_start_gib=rss_start,
                load_1min=os.getloadavg()[0],
            )
            if on_cuda:
                row["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            rows.append(row)
            print(json.dumps(row), flush=True)
            record = {"env": environment(device, threads), "variant": variant, "rows": rows, "notes": notes}
            write_record(
                record_name, record, command_line(), final=False
            )  # a row at a time: a killed run keeps its rows
    write_record(record_name, record, command_line())
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
