"""Datalist builders per source: raw BTCV/Synapse, TransUNet's preprocessed release, the real-CT demo; and the one
reader of a datalist section's image paths that volume and 2D-image inference share."""

import json
import os
from typing import List, Optional

from .synapse import BTCV_TO_SYNAPSE, ORGANS, TRANSUNET_TEST_CASES, write_datalist

__all__ = ["BTCV_TO_SYNAPSE", "ORGANS", "TRANSUNET_TEST_CASES", "datalist_image_paths", "write_datalist"]


def datalist_image_paths(
    datalist: str, section: str, base_dir: Optional[str] = None, origin: str = "bundle"
) -> List[str]:
    """The ``image`` paths of one section of a decathlon JSON, relative ones joined to ``base_dir``.

    Args:
        datalist: the JSON file.
        section: its section (``test``, ``validation`` …); items are ``{"image": path, ...}`` dicts or bare paths.
        base_dir: base of relative paths (default: the datalist's folder).
        origin: the module named in error messages.

    Raises:
        ValueError: the file is missing (saying to pass ``--input`` or ``--datalist``) or has no such section.
    """
    if not os.path.isfile(datalist):
        raise ValueError(
            f"{origin}: no --input given and datalist {datalist} does not exist: pass --input "
            "<file|folder|list> or --datalist <decathlon JSON>."
        )
    with open(datalist) as f:
        items = json.load(f).get(section)
    if items is None:
        raise ValueError(f"{origin}: datalist {datalist} has no {section!r} section.")
    root = base_dir or os.path.dirname(os.path.abspath(datalist))
    paths = [item["image"] if isinstance(item, dict) else item for item in items]
    return [p if os.path.isabs(p) else os.path.join(root, p) for p in paths]
