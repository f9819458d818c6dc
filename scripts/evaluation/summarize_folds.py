"""Mean ± std over folds of the microscopy test scores (the official SA2-Net table; std with ddof 1).

Example (from the repository root)::

    python scripts/evaluation/summarize_folds.py runs/microscopy/fold*/test/scores.json
"""

from __future__ import annotations

import argparse
import json
import sys

from bundle.errors import InputError, install_error_hook
from bundle.evaluation.tables import summarize_folds


def main(argv=None) -> int:
    install_error_hook()  # InputError -> one line on stderr, exit code 1 (MSA2NET_TRACEBACK=1: full traceback)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scores", nargs="+", help="one scores.json per fold (run evaluating's test output)")
    args = p.parse_args(argv)
    for path in args.scores:
        try:
            open(path).close()
        except OSError as err:
            raise InputError(f"{path} cannot be read ({err.strerror}): give each fold's test/scores.json.") from None
    summary = summarize_folds(args.scores)
    print(json.dumps(summary, indent=2))
    print(
        f"Dice {100 * summary['dice_mean']:.2f} ± {100 * summary['dice_std']:.2f}  "
        f"IoU {100 * summary['iou_mean']:.2f} ± {100 * summary['iou_std']:.2f}  ({summary['n_folds']} folds)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
