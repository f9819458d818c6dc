"""Where each output of an inference folder came from: ``<output_dir>/provenance.json``.

A rerun into a folder skips inputs whose outputs exist (unless ``--overwrite True``), so one folder can hold masks
of several runs, checkpoints and options. :class:`ProvenanceRecord` (an Ignite handler on the inference engine)
records, for every output this run writes, its input, the time, the checkpoint(s) by path and SHA-256, the
bundle version and the options that change a mask; at the end it says which outputs in the folder it kept from
earlier runs and warns when they came from other weights or options, or have no record at all.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from bundle import __version__
from bundle.io.atomic import atomic_write_text

logger = logging.getLogger(__name__)

FILENAME = "provenance.json"
_OUTPUT_SUFFIXES = (".nii.gz", ".dcm", ".png")
_PATH_KEYS = ("pred_path", "pred_seg_path")  # where the writers leave the paths they wrote


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    """SHA-256 of a file, computed once per process for a given size and modification time."""
    stat = os.stat(path)
    return _sha256(os.path.abspath(path), stat.st_size, stat.st_mtime)


def checkpoint_identity(paths: Sequence[str]) -> List[Dict[str, str]]:
    """``[{"path", "sha256"}]`` of the checkpoints that exist (the weights a mask was made with)."""
    return [{"path": os.path.abspath(p), "sha256": file_sha256(p)} for p in paths if p and os.path.isfile(str(p))]


def read_record(output_dir: str) -> Dict[str, Any]:
    """The folder's record (``{"outputs": {}}`` when there is none or it cannot be read)."""
    path = os.path.join(str(output_dir), FILENAME)
    try:
        with open(path) as f:
            record = json.load(f)
        if isinstance(record, dict) and isinstance(record.get("outputs"), dict):
            return record
    except (OSError, ValueError):
        pass
    return {"outputs": {}}


class ProvenanceRecord:
    """Ignite handler: updates ``<output_dir>/provenance.json`` and reports kept outputs at ``COMPLETED``.

    Args:
        output_dir: the inference output folder.
        checkpoints: the checkpoint file(s) whose weights make the masks.
        options: the settings that change a mask (geometry, TTA, post-processing, backend …), JSON-able.
    """

    def __init__(self, output_dir: str, checkpoints: Sequence[str], options: Optional[Mapping[str, Any]] = None):
        self.output_dir = str(output_dir)
        self.checkpoints = [str(c) for c in checkpoints if c]
        self.options = {k: v if isinstance(v, (bool, int, float, str, type(None))) else str(v)
                        for k, v in dict(options or {}).items()}  # fmt: skip
        self.written: Dict[str, Dict[str, Any]] = {}

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _iteration(self, engine: Any) -> None:
        batch, output = engine.state.batch, engine.state.output  # the writers' paths land in the output dicts
        batch, output = (batch, output) if isinstance(batch, list) else ([batch], [output])
        now = datetime.datetime.now().isoformat(timespec="seconds")
        for item, out in zip(batch, output):
            if not isinstance(item, Mapping) or not isinstance(out, Mapping):
                continue
            source = getattr(item.get("image"), "meta", {}).get("filename_or_obj", "")
            for key in _PATH_KEYS:
                if out.get(key):
                    self.written[os.path.basename(str(out[key]))] = {"input": str(source), "written": now}

    def _identity(self) -> Dict[str, Any]:
        return {"checkpoints": checkpoint_identity(self.checkpoints), "bundle_version": __version__,
                "options": self.options}  # fmt: skip

    def _completed(self, engine: Any) -> None:
        if not os.path.isdir(self.output_dir):
            return
        record = read_record(self.output_dir)
        identity = self._identity()
        if self.written:  # a run that wrote nothing leaves the folder as it was
            for name, entry in self.written.items():
                record["outputs"][name] = {**entry, **identity}
            atomic_write_text(os.path.join(self.output_dir, FILENAME), json.dumps(record, indent=4))
        self._report_kept(record, identity)

    def _report_kept(self, record: Dict[str, Any], identity: Dict[str, Any]) -> None:
        present = sorted(f for f in os.listdir(self.output_dir) if f.endswith(_OUTPUT_SUFFIXES))
        kept = [f for f in present if f not in self.written]
        if not kept:
            return
        unknown = [f for f in kept if f not in record["outputs"]]
        other = [f for f in kept if f in record["outputs"] and _differs(record["outputs"][f], identity)]
        same = len(kept) - len(unknown) - len(other)
        logger.info(
            f"{self.output_dir}: kept {len(kept)} output(s) of earlier runs ({same} from these weights and options); "
            f"this run wrote {len(self.written)}; {FILENAME} says where each came from"
        )
        if other:
            first = record["outputs"][other[0]]
            weights = ", ".join(
                f"{os.path.basename(c['path'])} sha256 {c['sha256'][:12]}" for c in first["checkpoints"]
            )
            logger.warning(
                f"{len(other)} kept output(s) come from other weights or options (e.g. {other[0]}: {weights}, "
                f"{first.get('written', '?')}): {', '.join(other[:5])}{' …' if len(other) > 5 else ''}; "
                "--overwrite True remakes them with this checkpoint"
            )
        if unknown:
            logger.warning(
                f"{len(unknown)} output(s) in {self.output_dir} have no provenance record (written by an older "
                f"bundle or another tool): {', '.join(unknown[:5])}{' …' if len(unknown) > 5 else ''}"
            )


def _differs(entry: Mapping[str, Any], identity: Mapping[str, Any]) -> bool:
    sums = [c.get("sha256") for c in entry.get("checkpoints", [])]
    return sums != [c["sha256"] for c in identity["checkpoints"]] or entry.get("options") != identity["options"]
