"""Errors the user can fix, and how they reach the terminal.

:class:`InputError` (a ``ValueError``) is the one type for bad user input (data, checkpoints, command lines): its
message names the user's file or option and the fix, never a source path. MONAI wraps errors raised inside transforms
and config components in ``RuntimeError`` chains; :func:`prepare_run` (the first item of every config's ``run``)
installs an exception hook that prints only the :class:`InputError` line of such a chain (``MSA2NET_TRACEBACK=1``
shows the full traceback) and refuses ``--id`` overrides that name no config id. The catalogue of messages is
``docs/operations.md``.
"""

from __future__ import annotations

import ast
import difflib
import logging
import os
import re
import sys
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from monai.apps import get_logger

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """Bad user input (data, checkpoint, command line). The message names the file and the fix."""


def check_choice(option: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices`` (an option the command line sets), as MONAI's ``look_up_option`` but
    raising :class:`InputError` with the option's name, so it prints as one line.

    Raises:
        InputError: ``value`` is not one of ``choices``.
    """
    if value not in choices:
        raise InputError(f"--{option} {value!r} is not one of {list(choices)}.")
    return value


def check_subset(option: str, values: Sequence[Any], choices: Sequence[Any]) -> tuple:
    """``values`` as a tuple if it is a non-empty list of distinct members of ``choices``.

    Raises:
        InputError: empty, repeated or unknown members.
    """
    values = tuple(values)
    if not values or len(set(values)) != len(values) or not set(values) <= set(choices):
        raise InputError(
            f"--{option} must be a non-empty list of distinct names from {list(choices)}, got {list(values)}."
        )
    return values


# ----------------------------------------------------------------------------------------------- command line
def root_input_error(err: BaseException) -> Optional[str]:
    """The :class:`InputError` message in ``err``'s cause/context chain (or in a DataLoader worker's text).

    Project errors are recognised by type (never by message text), so a message stays true when code moves.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        worker = "\nOriginal Traceback" in str(err)  # re-raised from a DataLoader worker: its traceback is the text
        if isinstance(err, InputError) and not worker:
            return str(err)
        match = re.search(r"(?:bundle\.errors\.)?InputError: (.+)", str(err))
        if match:
            return match.group(1).strip()
        err = err.__cause__ or err.__context__
    return None


def _quiet() -> bool:
    return os.environ.get("MSA2NET_TRACEBACK", "0") in ("", "0")


class _InputErrorLogFilter(logging.Filter):
    """Drops the log records that repeat an exception carrying an :class:`InputError` (the hook prints it once).

    Before the error reaches the exception hook, MONAI's ``StatsHandler`` logs it with ``logger.exception`` and
    Ignite's ``Engine`` logs "… is terminating due to exception: …" once per engine (evaluator inside trainer: twice);
    an error raised in a DataLoader worker carries the worker's whole traceback in its text. So one bad label printed
    ~200 lines and a missing checkpoint three times. Records the bundle logs while it handles a case (a skipped case
    in a folder run) are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not _quiet():
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and root_input_error(exc) is not None:
            return False
        if record.levelno >= logging.ERROR and "is terminating due to exception: " in str(record.msg):
            handling = sys.exc_info()[1]  # Ignite logs inside its `except` block
            return handling is None or root_input_error(handling) is None
        return True


# loggers that log engine exceptions: StatsHandler's default name, Ignite's engines, and the root logger
_ENGINE_LOGGERS = ("monai.handlers.StatsHandler", "ignite", "")


def install_error_hook() -> None:
    """Uncaught exceptions that carry an :class:`InputError` print ``InputError: <message>`` only (exit code 1).

    Also keeps the log records that repeat such an exception (MONAI's ``StatsHandler``, Ignite's engines, DataLoader
    worker tracebacks) out of the logs, so the message appears once. Set ``MSA2NET_TRACEBACK=1`` for the full
    traceback (in the logs and at exit).
    """
    for name in _ENGINE_LOGGERS:
        # set up as StatsHandler sets its logger up (its own stdout handler), which a plain getLogger would prevent
        log = get_logger(name) if name == _ENGINE_LOGGERS[0] and name not in logging.root.manager.loggerDict else None
        log = log or logging.getLogger(name)
        # a logger's filter sees only records logged on it; its handlers' filters also see those of child loggers
        for target in (log, *log.handlers):
            if not any(isinstance(f, _InputErrorLogFilter) for f in target.filters):
                target.addFilter(_InputErrorLogFilter())
    if getattr(sys.excepthook, "_msa2net", False):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        message = root_input_error(exc) if _quiet() else None
        if message is None:
            previous(exc_type, exc, tb)
            return
        sys.stderr.write(f"InputError: {message}\n(MSA2NET_TRACEBACK=1 shows the full traceback)\n")
        sys.stderr.flush()

    hook._msa2net = True  # type: ignore[attr-defined]
    sys.excepthook = hook


_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off")  # what a user may mean as a boolean
_CLI_ARGS = {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file"}


def _ids(config: Any, prefix: str = "") -> set:
    out = set()
    if isinstance(config, Mapping):
        items = config.items()
    elif isinstance(config, list):
        items = ((str(i), v) for i, v in enumerate(config))
    else:
        return out
    for k, v in items:
        key = f"{prefix}#{k}" if prefix else str(k)
        out.add(key)
        out |= _ids(v, key)
    return out


def check_cli_overrides(argv: Optional[Sequence[str]] = None) -> None:
    """Refuses ``--id value`` overrides whose id exists in none of the ``--config_file`` files (typos), or that the
    configs name in their ``unused_options`` list (ids of a base config that an overlay leaves unused, e.g. the CT
    inference's ``--tta`` under the ISIC overlay).

    ``monai.bundle run`` silently adds an unknown id as a new, unused config entry (``--epohcs 5`` trains the
    default number of epochs). Runs only for a ``monai.bundle`` command line; ids may use ``#`` or ``::``.

    Raises:
        InputError: naming the unknown id and the closest existing ones, or the unused option.
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv or "monai" not in argv[0] or "bundle" not in argv[0]:
        return
    pairs = _cli_pairs(argv)
    files = dict(pairs).get("config_file")
    if files is None:
        return
    from monai.bundle import ConfigParser

    try:  # a list of files arrives as its Python spelling, which fire turns into a list for monai.bundle
        config = ConfigParser.load_config_files(ast.literal_eval(files) if files.lstrip().startswith("[") else files)
    except Exception:  # monai.bundle reports unreadable config files itself
        return
    known = _ids(config)
    unused = set(config.get("unused_options") or ()) if isinstance(config, Mapping) else set()
    _check_bool_overrides(pairs, config, files)
    for raw, _ in pairs:
        key = raw.replace("::", "#")
        if key in unused:
            raise InputError(
                f"--{raw} does nothing in this run: {files} list it in `unused_options` (an option of the base "
                "config that the overlay replaces); drop it."
            )
        parent, _, last = key.rpartition("#")
        if key in _CLI_ARGS or key in known or key.startswith("+") or (last.startswith("_") and parent in known):
            continue  # `--x#_disabled_ True` etc. are fine on an existing component
        close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
        hint = "did you mean " + ", ".join("--" + c for c in close) + "?" if close else "check the config's ids."
        raise InputError(
            f"unknown config id --{raw} (not in {files}): monai.bundle would add it as an unused entry and run "
            f"with the default; {hint}"
        )


def _cli_pairs(argv: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
    """``(id, value)`` of every ``--id value`` / ``--id=value`` after the program name (value None at the end)."""
    pairs = []
    for i, a in enumerate(argv[1:], start=1):
        if a.startswith("--"):
            raw, eq, value = a[2:].partition("=")
            pairs.append((raw, value if eq else (argv[i + 1] if i + 1 < len(argv) else None)))
    return pairs


def _check_bool_overrides(pairs: Sequence[Tuple[str, Optional[str]]], config: Any, files: str) -> None:
    """Refuses ``--flag false`` for a boolean id: monai.bundle reads only ``True``/``False`` as booleans, so
    ``false`` arrives as a non-empty string and the feature is switched on."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(config)
    for raw, value in pairs:
        if value is None or value in ("True", "False") or value.lower() not in _BOOL_WORDS:
            continue
        try:
            default = parser.get(raw.replace("::", "#"))
        except Exception:  # ids that do not resolve are left to the typo check
            continue
        if isinstance(default, bool):
            fix = "True" if value.lower() in ("true", "yes", "on") else "False"
            raise InputError(
                f"--{raw} {value} (in {files}'s boolean {raw!r}): monai.bundle reads only True/False as booleans and "
                f"would take {value!r} as a non-empty string, i.e. true; write --{raw} {fix}."
            )


def run_script(main: Any) -> Any:
    """The entry point of every script under ``scripts/``: ``fire.Fire(main)`` with the one-line error hook, so a
    script's :class:`InputError` ends as the CLI's do (one line, exit code 1), not as a traceback."""
    import fire

    install_error_hook()
    return fire.Fire(main)


def prepare_run() -> None:
    """First item of each config's ``run`` (custom code importable there): one-line errors, typo overrides refused."""
    install_error_hook()
    check_cli_overrides()


class CasesFailed(InputError):
    """Raised at the end of a run in which some cases could not be processed."""
