"""Inference over many cases survives a bad one: it is skipped, reported in ``failures.json``, and the run fails at
the end (non-zero exit) instead of at the first bad file.

* :class:`SkipBadCases` (a MONAI ``Dataset``): a case whose loading or checks raise becomes a *marker*, an empty
  image (1, 1, 1, 0) whose meta carries ``bad_case`` (the reason) and the file name. The slice inferer runs no
  slice on it (0 slices) and :class:`BadCaseSafeCompose` / :class:`UnlessBadCase` keep the postprocessing (writer)
  from touching it.
* :class:`FailureReport` (Ignite handler): collects the markers, writes ``<output_dir>/failures.json``
  atomically at ``COMPLETED`` (``[]`` when all cases passed) and then raises :class:`CasesFailed` if any failed;
  its message is the summary line and one line per failed case, which the error hook of
  :func:`bundle.errors.install_error_hook` prints without a traceback (``MSA2NET_TRACEBACK=1`` shows it).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Dict, Hashable, List, Mapping

import torch
from monai.data import Dataset, MetaTensor
from monai.transforms import Compose, Transform

from bundle.errors import CasesFailed, root_input_error
from bundle.io.atomic import atomic_write_text

logger = logging.getLogger(__name__)


BAD_CASE = "bad_case"


def _reason(err: BaseException) -> str:
    message = root_input_error(err)
    if message is not None:
        return message
    while err.__cause__ is not None:  # MONAI's "applying transform …" wrapper says nothing about the file
        err = err.__cause__
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


class SkipBadCases(Dataset):
    """``monai.data.Dataset`` that turns a failing case into a marker instead of raising.

    Args:
        data: the items (``[{"image": path}, …]``).
        transform: the preprocessing.
        image_key: key whose path names the case, and that holds the marker image.
    """

    def __init__(self, data, transform: Callable | None = None, image_key: str = "image") -> None:
        super().__init__(data=data, transform=transform)
        self.image_key = image_key

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except Exception as err:  # any failure of one case: report it, go on with the others
            item = self.data[index]
            name = item.get(self.image_key, f"case {index}") if isinstance(item, Mapping) else str(item)
            reason = _reason(err)
            logger.error(f"skipping {name}: {reason}")
            marker = MetaTensor(torch.zeros(1, 1, 1, 0), meta={"filename_or_obj": str(name), BAD_CASE: reason})
            return {self.image_key: marker}


def is_bad_case(value: Any) -> bool:
    """True for a :class:`SkipBadCases` marker (or a dict holding one)."""
    if isinstance(value, Mapping):
        return any(is_bad_case(v) for v in value.values())
    meta = getattr(value, "meta", None)
    return isinstance(meta, Mapping) and bool(meta.get(BAD_CASE))


class UnlessBadCase(Transform):
    """Applies ``transform`` (e.g. the writer) to good cases only; markers pass through unchanged.

    Args:
        transform: a dict transform.
    """

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        return dict(data) if is_bad_case(data) else self.transform(data)


class BadCaseSafeCompose(Compose):
    """``Compose`` that passes :class:`SkipBadCases` markers through untouched (for the inference postprocessing).

    Same arguments as ``monai.transforms.Compose``; a drop-in ``_target_`` replacement that keeps the config ids.
    """

    def __call__(self, input_, *args: Any, **kwargs: Any):
        return input_ if is_bad_case(input_) else super().__call__(input_, *args, **kwargs)


class FailureReport:
    """Collects skipped cases, writes ``failures.json`` and fails the run at the end if any case failed.

    Args:
        output_dir: where ``failures.json`` goes (the inference ``output_dir``).
        filename: report name.
        raise_on_failure: raise :class:`CasesFailed` at ``COMPLETED`` (non-zero exit of ``monai.bundle run``).
    """

    def __init__(self, output_dir: str, filename: str = "failures.json", raise_on_failure: bool = True) -> None:
        self.path = os.path.join(str(output_dir), filename)
        self.raise_on_failure = raise_on_failure
        self.failures: List[Dict[str, str]] = []
        self.cases = 0

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Any) -> None:
        self.failures, self.cases = [], 0

    def _iteration(self, engine: Any) -> None:
        batch = engine.state.batch
        items = batch if isinstance(batch, list) else [batch]
        for item in items:
            self.cases += 1
            for value in item.values() if isinstance(item, Mapping) else []:
                meta = getattr(value, "meta", None)
                if isinstance(meta, Mapping) and meta.get(BAD_CASE):
                    reason, name = meta[BAD_CASE], meta.get("filename_or_obj")
                    reason = reason[0] if isinstance(reason, (list, tuple)) else reason
                    name = name[0] if isinstance(name, (list, tuple)) else name
                    self.failures.append({"file": str(name), "reason": str(reason)})
                    break

    def _completed(self, engine: Any) -> None:
        atomic_write_text(self.path, json.dumps(self.failures, indent=2))
        if not self.failures:
            logger.info(f"all {self.cases} cases done; {self.path}: no failures")
            return
        summary = failure_summary(self.failures, self.cases, self.path)
        logger.error(summary)
        if self.raise_on_failure:
            raise CasesFailed(summary)


def failure_summary(failures: List[Dict[str, str]], cases: int, path: str, max_lines: int = 200) -> str:
    """The summary line, then one line per failed case (its reason, which names the file; else ``file: reason``)."""
    head = f"{len(failures)} of {cases} cases failed (details in {path}):"
    lines = [
        f"  failed: {f['reason']}" if f["file"] in f["reason"] else f"  failed: {f['file']}: {f['reason']}"
        for f in failures[:max_lines]
    ]
    if len(failures) > max_lines:
        lines.append(f"  … and {len(failures) - max_lines} more (all in {path})")
    return "\n".join([head, *lines])
