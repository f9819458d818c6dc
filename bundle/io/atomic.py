"""Writing outputs safely: a writable-folder check up front, and the one atomic writer every output goes through.

Every file this bundle writes (masks, tables, pictures, downloads, zips) is written to a temporary name in its final
folder and renamed into place with ``os.replace``, so a reader (or a crash) never sees half a file under the final
name. Checkpoints go through Ignite's own atomic ``DiskSaver`` (``bundle.training.engine``).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from bundle.errors import InputError

# mkstemp creates 0600 files; a renamed output gets the mode an ordinary open() would give it (read once: os.umask
# can only be read by setting it)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def check_writable_dir(path: str, what: str = "output_dir") -> str:
    """Creates ``path`` if needed and proves that a file can be written and renamed in it.

    Raises:
        InputError: the folder cannot be created or written (read-only mount, permissions, a file in the way).
    """
    path = str(path)
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test_", dir=path)
        os.close(fd)
        os.replace(probe, probe + ".done")  # outputs are renamed into place: check that works too
        os.remove(probe + ".done")
    except OSError as err:
        raise InputError(
            f"{what} {path} is not writable ({err.strerror or err}): choose another folder with --{what} "
            "or fix its permissions."
        ) from None
    return path


@contextmanager
def atomic_path(path: Union[str, os.PathLike]) -> Iterator[str]:
    """Yields a temporary path beside ``path`` (same extension, so writers that read it still work); renames it to
    ``path`` when the block succeeds and removes it when it fails.

    Example::

        with atomic_path("out/case_seg.nii.gz") as tmp:
            nib.save(img, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{ext}")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)  # same folder: one atomic rename
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def atomic_write_bytes(path: Union[str, os.PathLike], data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
