"""Datalist builders per source: raw BTCV/Synapse, TransUNet's preprocessed release, the real-CT demo; and the one
reader of a datalist section's image paths that volume and 2D-image inference share."""

import json
import os
from typing import List, Optional

from .synapse import BTCV_TO_SYNAPSE, ORGANS, TRANSUNET_TEST_CASES, write_datalist

__all__ = [
    "BTCV_TO_SYNAPSE",
    "ORGANS",
    "TRANSUNET_TEST_CASES",
    "datalist_image_paths",
    "dataset_dir_as_input",
    "write_datalist",
]


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
            "<file|folder|list>, --dataset_dir <existing folder of images> or --datalist <decathlon JSON>."
        )
    with open(datalist) as f:
        items = json.load(f).get(section)
    if items is None:
        raise ValueError(f"{origin}: datalist {datalist} has no {section!r} section.")
    root = base_dir or os.path.dirname(os.path.abspath(datalist))
    paths = [item["image"] if isinstance(item, dict) else item for item in items]
    return [p if os.path.isabs(p) else os.path.join(root, p) for p in paths]


def dataset_dir_as_input(input, datalist: Optional[str], dataset_dir: Optional[str]) -> bool:
    """True when inference should segment the files of ``dataset_dir`` itself (the model zoo's ``--dataset_dir``).

    That is the case when no ``input`` is given, ``dataset_dir`` is a folder, and the datalist is the default
    ``<dataset_dir>/dataset.json`` and does not exist. A folder holding a ``dataset.json`` keeps the datalist
    behaviour, and a ``--datalist`` given explicitly is never replaced by a folder listing.
    """
    if input or not dataset_dir or not os.path.isdir(str(dataset_dir)):
        return False
    if datalist and os.path.isfile(str(datalist)):
        return False
    default = os.path.join(str(dataset_dir), "dataset.json")
    return not datalist or os.path.abspath(str(datalist)) == os.path.abspath(default)
