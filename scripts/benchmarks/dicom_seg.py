"""DICOM SEG output on a real 512×512×200 series: time and peak memory to read the series and write the SEG, the SEG's
size, and whole ``run inference`` runs per ``--output_type`` (issue 22, item 6).

The series: the demo's real DICOM slices (JPEG 2000, 512², 0.98 mm, 2 mm apart) repeated 10× upwards with UIDs
(:func:`bundle.data.dicom_study.export_series`, ``repeat=10``): real pixel data and headers at a clinical depth (the
anatomy repeats). The label map for the writer-only row: the demo's reference labels (TotalSegmentator model output,
5 organs) on the series grid, repeated alike.

Usage (bundle root, demo data fetched)::

    python scripts/benchmarks/dicom_seg.py OUT prepare
    python scripts/benchmarks/dicom_seg.py OUT writer                   # read + build + save, reference labels
    python scripts/benchmarks/dicom_seg.py OUT inference CKPT nifti     # whole run, once per output type
    python scripts/benchmarks/dicom_seg.py OUT inference CKPT dicom_seg
    python scripts/benchmarks/dicom_seg.py OUT dice CKPT                # the demo series as a hospital study:
                                                                        # Dice from the SEG and from the NIfTI

Each mode prints one JSON line (seconds, ``ru_maxrss`` of the process in GiB); run each in a fresh process.
"""

import json
import os
import resource
import sys
import time

import nibabel as nib
import numpy as np
from bench_common import inference_workflow

from bundle.data.demos import TOTALSEG_TO_SYNAPSE
from bundle.data.dicom_study import export_series
from bundle.data.synapse import ORGANS, remap_labels
from bundle.errors import InputError, check_choice, run_script
from bundle.io.dicom_reader import DicomSeriesReader, dicom_record
from bundle.io.dicom_seg import build_seg
from bundle.io.volume import load_image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "demo_data", "raw")


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def prepare(out: str) -> None:
    export_series(os.path.join(DEMO, "example_ct_dicom"), os.path.join(out, "series200"), repeat=10)


def reference_labels(grid_affine: np.ndarray, shape) -> np.ndarray:
    """The demo reference (stored LAS) on the (repeated) series grid, in Synapse ids."""
    ref = nib.load(os.path.join(DEMO, "example_seg_dicom.nii.gz"))
    lab = remap_labels(np.asarray(ref.dataobj).astype(np.int64), TOTALSEG_TO_SYNAPSE).astype(np.uint8)
    ornt = nib.orientations.ornt_transform(nib.io_orientation(ref.affine), nib.io_orientation(grid_affine))
    lab = nib.orientations.apply_orientation(lab, ornt)
    return np.tile(lab, (1, 1, shape[2] // lab.shape[2]))


def writer(out: str) -> dict:
    t0 = time.perf_counter()
    img = load_image(os.path.join(out, "series200"), reader=DicomSeriesReader("dicom_seg"))
    t1 = time.perf_counter()
    record = dicom_record(img.meta)
    mask = reference_labels(np.asarray(img.meta["affine"]), img.shape)
    t2 = time.perf_counter()
    seg = build_seg(mask, record["files"], ORGANS, slice_spacing=record["slice_spacing"])
    t3 = time.perf_counter()
    path = os.path.join(out, "series200_seg.dcm")
    seg.save_as(path)
    t4 = time.perf_counter()
    return {
        "mode": "writer",
        "slices": int(img.shape[2]),
        "organs": int(len(np.unique(mask)) - 1),
        "frames": int(seg.NumberOfFrames),
        "read_series_s": round(t1 - t0, 2),
        "build_seg_s": round(t3 - t2, 2),
        "save_seg_s": round(t4 - t3, 2),
        "seg_mb": round(os.path.getsize(path) / 1e6, 2),
        "peak_rss_gib": round(_peak_gib(), 2),
    }


def inference(out: str, ckpt: str, output_type: str) -> dict:
    wf = inference_workflow(
        os.path.join(out, "series200"), os.path.join(out, f"pred_{output_type}"), ckpt, output_type=output_type
    )
    t0 = time.perf_counter()
    wf.initialize()
    wf.run()
    return {
        "mode": "inference",
        "output_type": output_type,
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_rss_gib": round(_peak_gib(), 2),
    }


def seg_on_grid(seg_path: str, nifti_path: str) -> np.ndarray:
    """A SEG's organs (Synapse ids by segment label) on a NIfTI mask's grid, frame by frame through each frame's
    source instance position (highdicom's reading)."""
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    lut = np.zeros(seg.number_of_segments + 1, np.uint8)
    lut[1:] = [ORGANS.index(d.SegmentLabel.replace(" ", "_")) + 1 for d in seg.SegmentSequence]
    grid = nib.load(nifti_path)
    out = np.zeros(grid.shape, np.uint8)
    inv = np.linalg.inv(grid.affine)
    for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence:
        uid = item.ReferencedSOPInstanceUID
        frame = seg.get_pixels_by_source_instance([uid], combine_segments=True, relabel=False)[0]
        src = _sources[uid]
        lps = np.asarray(src.ImagePositionPatient, dtype=float)
        k = int(round((inv @ np.array([-lps[0], -lps[1], lps[2], 1.0]))[2]))
        out[:, :, k] = lut[frame].T
    return out


_sources: dict = {}


def dice(out: str, ckpt: str) -> dict:
    """The demo model on the demo series arranged as a hospital study (UIDs, a localizer): per-organ Dice against
    the reference from the NIfTI output and from the SEG output of one ``--output_type both`` run."""
    import subprocess

    import pydicom

    from bundle.data.dicom_study import write_study
    from bundle.evaluation.demo import DICOM_ORGANS, dice_per_organ, load_canonical  # the demo's own scoring
    from bundle.transforms.geometry import reorient_array

    study = write_study(os.path.join(DEMO, "example_ct_dicom"), os.path.join(out, "study"))
    for f in os.listdir(os.path.join(study, "CT")):
        ds = pydicom.dcmread(os.path.join(study, "CT", f), stop_before_pixels=True)
        _sources[str(ds.SOPInstanceUID)] = ds
    pred = os.path.join(out, "pred_both")
    subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml",
                    "--input", study, "--output_dir", pred, "--ckpt_path", ckpt, "--num_workers", "0",
                    "--overwrite", "True", "--show_progress", "False", "--output_type", "both"],
                   cwd=ROOT, check=True)  # fmt: skip
    nifti = os.path.join(pred, "CT_seg.nii.gz")
    truth = remap_labels(load_canonical(os.path.join(DEMO, "example_seg_dicom.nii.gz")).astype(np.int64),
                         TOTALSEG_TO_SYNAPSE)  # fmt: skip
    from_nifti = dice_per_organ(load_canonical(nifti), truth)
    from_seg = dice_per_organ(reorient_array(seg_on_grid(os.path.join(pred, "CT_seg.dcm"), nifti),
                                             nib.load(nifti).affine), truth)  # fmt: skip
    return {
        "mode": "dice",
        "nifti": {k: round(from_nifti[k], 4) for k in DICOM_ORGANS + ("pancreas",)},
        "seg": {k: round(from_seg[k], 4) for k in DICOM_ORGANS + ("pancreas",)},
        "identical": bool(all(from_nifti[k] == from_seg[k] or (np.isnan(from_nifti[k]) and np.isnan(from_seg[k]))
                              for k in ORGANS)),  # fmt: skip
    }


def main(out: str, mode: str, ckpt: str = "", output_type: str = "nifti") -> None:
    """``OUT prepare | writer | inference CKPT nifti|dicom_seg|both | dice CKPT``: one JSON line per measuring mode."""
    check_choice("mode", mode, ("prepare", "writer", "inference", "dice"))
    os.makedirs(out, exist_ok=True)
    if mode == "prepare":
        return prepare(out)
    if mode != "writer" and not ckpt:
        raise InputError(f"{mode} needs the checkpoint: python scripts/benchmarks/dicom_seg.py OUT {mode} CKPT ...")
    row = writer(out) if mode == "writer" else dice(out, ckpt) if mode == "dice" else inference(out, ckpt, output_type)
    row["load_avg_1min"] = round(os.getloadavg()[0], 1)
    print(json.dumps(row))


if __name__ == "__main__":
    run_script(main)
