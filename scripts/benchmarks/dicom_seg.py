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

Each mode prints one JSON line (seconds, ``ru_maxrss`` of the process in GiB); run each in a fresh process.
"""

import json
import os
import resource
import sys
import time

import nibabel as nib
import numpy as np
from monai.transforms import LoadImage

from bundle.data.demos import TOTALSEG_TO_SYNAPSE
from bundle.data.dicom_study import export_series
from bundle.data.synapse import ORGANS, remap_labels
from bundle.io.dicom_reader import DicomSeriesReader, dicom_record
from bundle.io.dicom_seg import build_seg

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
    img = LoadImage(image_only=True)(os.path.join(out, "series200"), reader=DicomSeriesReader("dicom_seg"))
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
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=f"{ROOT}/configs/inference.yaml",
        meta_file=f"{ROOT}/configs/metadata.json",
        logging_file=False,
        workflow_type="infer",
        bundle_root=ROOT,
        input=os.path.join(out, "series200"),
        output_dir=os.path.join(out, f"pred_{output_type}"),
        ckpt_path=ckpt,
        num_workers=0,
        show_progress=False,
        overwrite=True,
        output_type=output_type,
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


if __name__ == "__main__":
    out_dir, mode = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    if mode == "prepare":
        prepare(out_dir)
    else:
        row = writer(out_dir) if mode == "writer" else inference(out_dir, sys.argv[3], sys.argv[4])
        row["load_avg_1min"] = round(os.getloadavg()[0], 1)
        print(json.dumps(row))
