"""Score a folder of finished masks (any tool's) against a folder of reference labels, as ``run evaluating`` does.

Writes ``metrics_long.csv``, ``summary.json`` and ``table1.md`` (protocol + clinical metrics, the paper's Table 1
layout) to ``--out``. Cases pair by file name without extension and one suffix such as ``_seg`` / ``_label``
(``bundle/evaluation/folder.py``); unmatched cases and pairs on different grids are refused with one line.
Examples (from the repository root)::

    python scripts/evaluation/evaluate_folder.py --pred eval/inference --label data/synapse/labelsTs --out eval/folder
    python scripts/evaluation/evaluate_folder.py --pred out/ --label labels/ --out rep/ --num_classes 3 \\
        --class_names liver,tumour
"""

from __future__ import annotations

import argparse
import os
import sys

from bundle.errors import install_error_hook
from bundle.evaluation.folder import evaluate_folder


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pred", required=True, help="folder of predicted label volumes (.nii.gz/.nii/.nrrd/.mha)")
    p.add_argument("--label", required=True, help="folder of reference label volumes")
    p.add_argument("--out", required=True, help="report folder (metrics_long.csv, summary.json, table1.md)")
    p.add_argument("--num_classes", type=int, default=9, help="label values 0..num_classes-1 (default 9: Synapse)")
    p.add_argument("--class_names", default=None, help="comma-separated organ names for labels 1..num_classes-1")
    p.add_argument("--nsd_tolerance_mm", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    p.add_argument(
        "--axcodes",
        default="PLS",
        help="canonical order both masks are scored in, as run evaluating does (the checkpoint's; default PLS); "
        "'none' keeps the stored order",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    install_error_hook()  # InputError -> one line on stderr, exit code 1 (MSA2NET_TRACEBACK=1: full traceback)
    args = parse_args(argv)

    names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
    summary = evaluate_folder(
        args.pred,
        args.label,
        args.out,
        num_classes=args.num_classes,
        class_names=names,
        nsd_tolerance_mm=args.nsd_tolerance_mm,
        axcodes=None if str(args.axcodes).lower() == "none" else args.axcodes,
    )
    prot, clin = summary["protocol"], summary["clinical"]
    print(
        f"{summary['num_cases']} cases in {summary['seconds']:.1f} s: protocol mean DSC {prot['mean_dice'] * 100:.2f}"
        f" %, HD95 {prot['mean_hd95']:.2f} voxels; clinical HD95 {clin['mean_hd95_mm']:.2f} mm, NSD "
        f"{clin['mean_nsd'] * 100:.2f} %. Report: {os.path.join(args.out, 'table1.md')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
