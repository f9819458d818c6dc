"""One 512×512×300 CT volume through configs/inference.yaml on CPU: wall time and memory (docs/operations.md §5).

Usage (from the bundle root): ``python scripts/benchmarks/inference_large_cpu.py OUT_DIR`` twice — the first call writes
a synthetic int16 volume (``bundle.data.synthetic.write_body_ct``: body ellipse, one organ, noise; 0.7 × 0.7 × 1.5 mm)
and a randomly initialised MSA2Net ``paper`` checkpoint and exits, the second runs inference in a fresh process so
that the peak RSS is the inference's own.
"""

import json
import os
import platform
import resource
import time

import nibabel as nib
import numpy as np
import torch
from bench_common import inference_workflow

from bundle.data.synthetic import write_body_ct
from bundle.errors import run_script
from bundle.networks import MSA2Net


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def prepare(out):
    write_body_ct(os.path.join(out, "large.nii.gz"), shape=(512, 512, 300), spacing=(0.7, 0.7, 1.5))

    torch.manual_seed(0)
    net = MSA2Net(in_channels=1, out_channels=9, variant="paper", encoder_weights=None)
    torch.save(net.state_dict(), os.path.join(out, "random_paper.pt"))


def run(out):
    from ignite.engine import Events

    vol = os.path.join(out, "large.nii.gz")
    wf = inference_workflow(vol, os.path.join(out, "pred"), os.path.join(out, "random_paper.pt"), sw_batch_size=16)
    wf.initialize()
    marks = {}
    evaluator = wf.parser.get_parsed_content("evaluator")
    evaluator.add_event_handler(Events.STARTED, lambda e: marks.update(start=rss_mb()))
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: marks.update(after=rss_mb()))
    t0 = time.time()
    wf.run()
    wall = time.time() - t0
    pred = nib.load(os.path.join(out, "pred", "large_seg.nii.gz"))
    return {
        "volume": [512, 512, 300],
        "input": "int16 NIfTI (gz)",
        "network": "MSA2Net paper, random weights",
        "sw_batch_size": 16,
        "wall_s": round(wall, 1),
        "rss_at_start_mb": round(marks["start"], 1),
        "rss_after_case_mb": round(marks["after"], 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "output_shape": list(pred.shape),
        "output_dtype": str(pred.get_data_dtype()),
        "output_affine_equals_input": bool(np.allclose(pred.affine, nib.load(vol).affine)),
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
    }


def main(out: str) -> None:
    """First call: write the volume and checkpoint into ``out``; later calls: one inference run, as JSON."""
    os.makedirs(out, exist_ok=True)
    if not os.path.exists(os.path.join(out, "random_paper.pt")):
        return prepare(out)
    print(json.dumps(run(out), indent=1))


if __name__ == "__main__":
    run_script(main)
