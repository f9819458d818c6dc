"""Decathlon-style datalists: read a section with every listed file checked, list what inference segments (given
paths, a datalist section or the zoo's ``--dataset_dir``), and write one atomically."""

from __future__ import annotations

import difflib
import json
import logging
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from bundle.errors import InputError

logger = logging.getLogger(__name__)


def read_datalist(datalist: str, prepared_by: str = "scripts/data/prepare_synapse.py") -> Dict[str, Any]:
    """The JSON object of a datalist file (every datalist reader starts here).

    Args:
        datalist: the JSON file.
        prepared_by: the script that writes this pipeline's datalist (named in the message when it is missing).

    Raises:
        InputError: the file is missing, not JSON, or not a JSON object.
    """
    datalist = str(datalist)
    if not os.path.isfile(datalist):
        raise InputError(
            f"datalist {datalist} does not exist: give an existing decathlon JSON with --datalist, or set "
            f"--dataset_dir to the folder holding dataset.json ({prepared_by} writes one)."
        )
    try:
        with open(datalist) as f:
            content = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"datalist {datalist} is not valid JSON ({err}): fix the file or regenerate it.") from None
    if not isinstance(content, dict):
        raise InputError(f"datalist {datalist} must be a JSON object with 'training' etc. lists, not a list/value.")
    return content


# ----------------------------------------------------------------------------------------------- datalists
def load_datalist(
    datalist: str,
    section: str = "training",
    base_dir: Optional[str] = None,
    keys: Sequence[str] = ("image", "label"),
    allow_empty: bool = False,
    prepared_by: str = "scripts/data/prepare_synapse.py",
) -> List[Dict[str, Any]]:
    """Reads a decathlon datalist section and checks it before any volume is loaded.

    Args:
        datalist: the JSON file.
        section: ``training`` / ``validation`` / ``test``.
        base_dir: base of relative paths (default: the datalist's folder).
        keys: keys every item must have (``image`` and, for training/evaluation, ``label``).
        allow_empty: accept an empty section (returns ``[]``).
        prepared_by: the script that writes this pipeline's datalist (the configs' ``prepare_script``).

    Returns:
        The items with absolute paths, as ``monai.data.load_decathlon_datalist`` returns them.

    Raises:
        InputError: the file is missing or not JSON, the section is absent/empty/not a list, an item lacks a key,
            or a listed file does not exist.
    """
    datalist = str(datalist)
    content = read_datalist(datalist, prepared_by)
    if section not in content:
        raise InputError(
            f"datalist {datalist} has no {section!r} section (found {sorted(content)}): add it, or choose another "
            "section (evaluate: --eval_section, inference: --data_list_key)."
        )
    items = content[section]
    if not isinstance(items, list):
        raise InputError(f"datalist {datalist}: section {section!r} must be a list of {{'image': …}} items.")
    if not items and not allow_empty:
        raise InputError(f"datalist {datalist}: section {section!r} is empty: list at least one case in it.")
    root = str(base_dir) if base_dir else os.path.dirname(os.path.abspath(datalist))
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str) and list(keys) == ["image"]:
            item = {"image": item}
        if not isinstance(item, dict):
            raise InputError(
                f"datalist {datalist}: {section}[{i}] is {item!r}; each item must be a dict {dict.fromkeys(keys, '…')}."
            )
        missing = [k for k in keys if k not in item]
        if missing:
            hint = difflib.get_close_matches(missing[0], list(item), n=1)
            raise InputError(
                f"datalist {datalist}: {section}[{i}] has keys {sorted(item)} but needs {list(keys)} "
                f"(missing {missing}{'; rename ' + repr(hint[0]) + ' to ' + repr(missing[0]) if hint else ''})."
            )
        entry = dict(item)
        for k in keys:
            path = str(entry[k])
            path = path if os.path.isabs(path) else os.path.join(root, path)
            if not os.path.exists(path):
                raise InputError(
                    f"datalist {datalist}: {section}[{i}][{k!r}] = {item[k]!r} does not exist (looked for {path}): "
                    "fix the path or remove the case; relative paths are resolved against --dataset_dir."
                )
            entry[k] = path
        out.append(entry)
    return out


def datalist_image_paths(datalist: str, section: str, base_dir: Optional[str] = None) -> List[str]:
    """The ``image`` paths of one section of a decathlon JSON, relative ones joined to ``base_dir``.

    Args:
        datalist: the JSON file.
        section: its section (``test``, ``validation`` …); items are ``{"image": path, ...}`` dicts or bare paths.
        base_dir: base of relative paths (default: the datalist's folder).

    Raises:
        InputError: the file is missing (saying what to pass instead) or has no such section.
    """
    if not os.path.isfile(str(datalist)):
        raise InputError(
            f"no --input given and datalist {datalist} does not exist: pass --input <file|folder|list>, "
            "--dataset_dir <existing folder of images> or --datalist <decathlon JSON>."
        )
    items = read_datalist(datalist).get(section)
    if items is None:
        raise InputError(f"datalist {datalist} has no {section!r} section: add it or choose --data_list_key.")
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


def list_inputs(
    input: Union[str, os.PathLike, Sequence[str], None],
    expand: Callable[[str], List[str]],
    output_of: Callable[[str], str],
    kind: str,
    datalist: Optional[str] = None,
    data_list_key: str = "test",
    base_dir: Optional[str] = None,
    dataset_dir: Optional[str] = None,
    output_dir: Optional[str] = None,
    overwrite: bool = False,
    exists: Callable[[str], bool] = os.path.exists,
    where: str = "sub-folders are not searched",
) -> List[Dict[str, str]]:
    """What inference segments, as ``[{"image": path}]``: the skeleton of ``list_volumes`` and ``list_images``.

    ``input`` (one path or a list) wins; without it, ``dataset_dir`` itself when :func:`dataset_dir_as_input`
    says so, else the ``data_list_key`` section of ``datalist``. Inputs whose ``output_of(path)`` exists are
    dropped unless ``overwrite`` (a rerun resumes a folder).

    Args:
        expand: one existing ``input`` entry to its paths (a folder to its files); raises :class:`InputError`
            for an entry of the wrong kind.
        output_of: an input path to its output path, or its list of output paths (called only when
            ``output_dir`` is set); an input is skipped when all of them exist.
        kind: what an input is, for the errors (e.g. ``image (.png, …)``).
        exists: whether an ``input`` entry exists (a DICOM series reference is not a path of its own).
        where: what of a folder is searched, for the error when it holds nothing.

    Raises:
        InputError: an input does not exist; from ``expand`` or the datalist; the given inputs (or ``dataset_dir``
            as the input folder) hold nothing; two inputs would be written to the same output.
    """
    from_dataset_dir = dataset_dir_as_input(input, datalist, dataset_dir)
    if from_dataset_dir:
        input = str(dataset_dir)
    if not input and datalist:
        paths = datalist_image_paths(datalist, data_list_key, base_dir)
    else:
        entries = [str(e) for e in ([input] if isinstance(input, (str, os.PathLike)) else list(input or []))]
        for entry in entries:
            if not exists(entry):
                raise InputError(
                    f"input {entry} does not exist: give --input an existing {kind}, a folder of them, or a list."
                )
        paths = [p for entry in entries for p in expand(entry)]
        if from_dataset_dir and not paths:
            raise InputError(
                f"dataset_dir {dataset_dir} holds no dataset.json and no {kind}: point --dataset_dir at the folder "
                "of images (e.g. imagesTs/), or give --input."
            )
        if not paths:  # not "nothing to do": a folder of per-patient sub-folders or other files holds no input
            raise InputError(f"input {input} holds no {kind} ({where}): give --input the files or a list.")
    if output_dir:
        outputs = [[o] if isinstance(o, (str, os.PathLike)) else list(o) for o in map(output_of, paths)]
        seen: Dict[str, str] = {}
        for p, outs in zip(paths, outputs):  # two inputs named alike would write one mask over the other
            for out in outs:
                other = seen.setdefault(os.path.abspath(out), p)
                if other != p:
                    raise InputError(
                        f"inputs {other} and {p} would both be written to {out}: rename one, or segment them into "
                        "different --output_dir folders."
                    )
        if not overwrite:
            paths = [p for p, outs in zip(paths, outputs) if not all(os.path.exists(o) for o in outs)]
    return [{"image": p} for p in paths]


def write_datalist(path: str, sections: Mapping[str, Sequence[Mapping[str, str]]], **extra) -> str:
    """Writes a decathlon-style datalist (``training``/``validation``/``test`` lists of path dicts)."""
    content = dict(extra)
    content.update({k: list(v) for k, v in sections.items()})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(content, f, indent=4)
    return path
