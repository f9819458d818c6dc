"""Load on the bundle ↔ PACS path: N studies pushed to a local Orthanc and segmented concurrently, one
``run inference --dicomweb_url`` process per study, then checked through QIDO: one SEG per study, referencing that
study's CT series, nothing lost or duplicated (a second round stores nothing new). Loopback only; bounded in count
(``--studies``, ``--concurrency``) and time (``--timeout`` per process).

The studies: the demo's real DICOM series (JPEG 2000, 512², 20 slices) with a localizer, exported N times under new
Study/Series/SOP UIDs (:func:`bundle.data.dicom_study.write_study`).

Usage (bundle root; Debian orthanc + orthanc-dicomweb installed, demo data fetched)::

    python scripts/benchmarks/pacs_load.py --out runs/pacs_load --ckpt runs/demo/model.pt --studies 8

Prints one JSON line per study (seconds, peak RSS of its process) and a summary line; exit 1 when a study is lost
or duplicated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_SERIES = os.path.join(ROOT, "demo_data", "raw", "example_ct_dicom")


def make_studies(series: str, dest: str, n: int) -> List[dict]:
    """``n`` hospital-style studies of ``series`` under distinct UIDs: ``[{"folder", "study_uid", "ct_uid"}]``."""
    import glob

    import pydicom
    from pydicom.uid import generate_uid

    from bundle.data.dicom_study import write_study

    studies = []
    for i in range(n):
        study_uid = generate_uid(entropy_srcs=["pacs-load-study", str(i)])
        ct_uid = generate_uid(entropy_srcs=["pacs-load-series", str(i)])
        folder = write_study(series, os.path.join(dest, f"study{i}"), study_uid=study_uid, series_uid=ct_uid)
        first = sorted(glob.glob(os.path.join(folder, "CT", "*.dcm")))[0]
        assert str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID) == ct_uid
        studies.append({"folder": folder, "study_uid": study_uid, "ct_uid": ct_uid})
    return studies


def segment(url: str, study: dict, out: str, ckpt: str, overlay: Optional[str], timeout: float) -> dict:
    """One ``run inference`` process for one study; its wall time and peak RSS (``time -v`` is not needed: the
    child's rusage is read through a wrapper)."""
    configs = "['configs/inference.yaml'" + (f",'{overlay}'" if overlay else "") + "]"
    cmd = [sys.executable, "-c", _RUSAGE_WRAPPER, "-m", "monai.bundle", "run", "inference", "--config_file", configs,
           "--dicomweb_url", url, "--study_uid", study["study_uid"], "--output_type", "dicom_seg", "--output_dir",
           out, "--ckpt_path", ckpt, "--num_workers", "0", "--show_progress", "False"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    peak = next((ln.split()[1] for ln in proc.stderr.splitlines() if ln.startswith("MAXRSS_KB ")), "0")
    return {
        "study": study["study_uid"],
        "rc": proc.returncode,
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(int(peak) / 2**20, 2),
        "error": proc.stderr[-400:] if proc.returncode else "",
    }


# runs "python -m <module> …" and prints the process's peak RSS on exit (the child of a subprocess has its own)
_RUSAGE_WRAPPER = (
    "import atexit, resource, runpy, sys; "
    "atexit.register(lambda: print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)); "
    "sys.argv = sys.argv[2:]; runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
)


def seg_series(url: str, study_uid: str) -> List[dict]:
    """The SEG series of a study as QIDO finds them: ``[{"series_uid", "instances", "referenced"}]``."""
    from dicomweb_client.api import DICOMwebClient

    web = DICOMwebClient(url)
    found = []
    for item in web.search_for_series(study_uid, search_filters={"Modality": "SEG"}):
        uid = item["0020000E"]["Value"][0]
        instances = web.search_for_instances(study_uid, uid)
        (ds,) = web.retrieve_series(study_uid, uid, media_types=(("application/dicom", "*"),))
        found.append({"series_uid": uid, "instances": len(instances),
                      "referenced": str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)})  # fmt: skip
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--config_overlay", default=None, help="an extra config file (e.g. a stand-in network)")
    parser.add_argument("--series", default=DEMO_SERIES)
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)

    from bundle.data.orthanc import LocalOrthanc
    from bundle.errors import install_error_hook

    install_error_hook()  # InputError -> one line, exit code 1

    studies = make_studies(args.series, os.path.join(args.out, "studies"), args.studies)
    with LocalOrthanc(os.path.join(args.out, "orthanc")) as pacs:
        t0 = time.perf_counter()
        import glob

        for s in studies:
            pacs.upload(sorted(glob.glob(os.path.join(s["folder"], "**", "*.dcm"), recursive=True)))
        upload_s = time.perf_counter() - t0
        rounds = []
        for round_ in (1, 2):  # the second round must store nothing new
            t1 = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                rows = list(pool.map(lambda s: segment(pacs.dicomweb, s, os.path.join(args.out, f"r{round_}",
                                                                                      s["study_uid"]),
                                                       args.ckpt, args.config_overlay, args.timeout), studies))  # fmt: skip
            rounds.append((time.perf_counter() - t1, rows))
            for row in rows:
                print(json.dumps({"round": round_, **row}), flush=True)
        problems = []
        for s in studies:
            segs = seg_series(pacs.dicomweb, s["study_uid"])
            if len(segs) != 1 or segs[0]["instances"] != 1 or segs[0]["referenced"] != s["ct_uid"]:
                problems.append({"study": s["study_uid"], "segs": segs})
    failed = [r for _, rows in rounds for r in rows if r["rc"] != 0]
    walls = [r["wall_s"] for r in rounds[0][1]]
    summary = {
        "studies": args.studies,
        "concurrency": args.concurrency,
        "upload_s": round(upload_s, 1),
        "round1_wall_s": round(rounds[0][0], 1),
        "round2_wall_s": round(rounds[1][0], 1),
        "per_study_s": {"min": min(walls), "max": max(walls)},
        "peak_rss_gib_max": max(r["peak_rss_gib"] for r in rounds[0][1]),
        "failed_runs": len(failed),
        "lost_or_duplicated": problems,
        "load_avg_1min": round(os.getloadavg()[0], 1),
        "self_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    print(json.dumps({"summary": summary}))
    return 1 if problems or failed else 0


if __name__ == "__main__":
    sys.exit(main())
