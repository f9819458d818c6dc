"""A 512×512×200 CT volume through configs/inference.yaml on CPU, per backend and sw_batch_size (issues 9 and 26).

Usage (bundle root): ``python scripts/benchmarks/inference_200_cpu.py OUT prepare [CALIBRATION]`` (writes a synthetic
int16 NIfTI and a random MSA2Net ``paper`` checkpoint, fills the ONNX export cache and, with a calibration CT volume
and OpenVINO + NNCF installed, the ``openvino_int8`` cache), then once per setting, each in a fresh process:
``python scripts/benchmarks/inference_200_cpu.py OUT auto 8`` (or ``onnx``, ``openvino``, ``openvino_bf16``;
``openvino_int8 8 whole 1 CALIBRATION``). Prints wall time (config parsed → mask written) and peak RSS as one JSON
line.

Slice windowing (issue 25): ``python scripts/benchmarks/inference_200_cpu.py OUT auto 8 whole,sliding:1.0 2`` runs
the listed modes alternately, twice each, in one process (a shared machine's load hits both alike): ``whole`` (the
checkpoint's geometry: the official whole-slice resize), ``whole:<mm>`` (one 224² grid of <mm> pixels) or
``sliding:<mm>`` (``--slice_window sliding --pixel_size <mm>``). Peak RSS per run is the process's VmHWM reset before
it (Linux), printed with the RSS the run started from (what earlier runs left allocated).
"""

import argparse
import gc
import json
import os
import time

import nibabel as nib
import numpy as np
import torch
from bench_common import inference_workflow, peak_rss_gib, reset_peak_rss
from monai.bundle import ConfigParser

from bundle.errors import install_error_hook
from bundle.inferers.backends import optimize_for_inference
from bundle.inferers.openvino import openvino_missing
from bundle.networks import MSA2Net

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def calibration_slices(ckpt: str, calibration: str) -> torch.Tensor:
    """The calibration volume's slices as configs/inference.yaml prepares them for ``ckpt`` (the INT8 cache key)."""
    parser = ConfigParser()
    parser.read_config(f"{ROOT}/configs/inference.yaml")
    parser.update({"bundle_root": ROOT, "ckpt_path": ckpt, "backend": "eager", "calibration": [calibration]})
    inferer = parser.get_parsed_content("inferer")
    return inferer.calibration(inferer)


def prepare(out: str, calibration: str = "") -> None:
    """The synthetic volume, a random ``paper`` checkpoint, the ONNX export cache and (with ``calibration``) the INT8
    cache, so that each measured run finds them as a second run would."""
    arr = np.full((512, 512, 200), -1000, np.int16)
    yy, xx = np.arange(512)[:, None] - 256, np.arange(512)[None, :] - 256
    arr[(yy**2 / 200**2 + xx**2 / 160**2) < 1] = 40
    arr[200:260, 150:230, 30:170] = 150
    nib.save(nib.Nifti1Image(arr, np.diag([0.7, 0.7, 1.5, 1.0])), os.path.join(out, "vol200.nii.gz"))
    torch.manual_seed(0)
    net = MSA2Net(in_channels=1, out_channels=9, variant="paper")
    ckpt = os.path.join(out, "random_paper.pt")
    torch.save(net.state_dict(), ckpt)
    net.load_state_dict(torch.load(ckpt, weights_only=True))
    optimize_for_inference(net.eval(), backend="onnx")  # fill the ONNX cache, as a second run would find it
    if calibration and not openvino_missing("openvino_int8"):
        optimize_for_inference(net, backend="openvino_int8", calibration=calibration_slices(ckpt, calibration))


def segment(out: str, backend: str, bs: int, mode: str, calibration: list) -> dict:
    """One run of configs/inference.yaml; ``mode``: whole (the checkpoint's: official), whole:<mm>, sliding:<mm>."""
    window, _, size = mode.partition(":")
    geometry = dict(slice_window=window, pixel_size=float(size)) if size else {}
    wf = inference_workflow(
        os.path.join(out, "vol200.nii.gz"),
        os.path.join(out, f"pred{bs}_{window}_{backend}"),
        os.path.join(out, "random_paper.pt"),
        sw_batch_size=bs,
        backend=backend,
        calibration=calibration,
        **geometry,
    )
    reset_peak_rss()
    start_rss = peak_rss_gib()
    t0 = time.time()
    wf.initialize()
    wf.run()
    wall = time.time() - t0
    wf.finalize()
    return {
        "backend": backend,
        "sw_batch_size": bs,
        "mode": mode,
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(peak_rss_gib(), 3),
        "rss_start_gib": round(start_rss, 3),
        "load": os.getloadavg(),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="512×512×200 CT through configs/inference.yaml (see the module doc).")
    parser.add_argument("out")
    parser.add_argument(
        "mode", help="prepare, or a backend (auto, onnx, openvino, openvino_bf16, openvino_int8, eager)"
    )
    parser.add_argument("rest", nargs="*", help="prepare: [CALIBRATION]; a backend: SW_BATCH [MODES [ROUNDS [CAL]]]")
    args = parser.parse_args(argv)
    if args.mode == "prepare":
        return prepare(args.out, *args.rest[:1])
    bs = int(args.rest[0]) if args.rest else 8
    modes = args.rest[1].split(",") if len(args.rest) > 1 else ["whole"]
    rounds = int(args.rest[2]) if len(args.rest) > 2 else 1
    calibration = args.rest[3:4]  # openvino_int8: the CT volume the prepare step calibrated on
    for _ in range(rounds):
        for m in modes:
            print(json.dumps(segment(args.out, args.mode, bs, m, calibration)), flush=True)
            gc.collect()


if __name__ == "__main__":
    install_error_hook()
    main()
