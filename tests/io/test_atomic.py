"""The atomic writer: all or nothing under the final name, and the mode an ordinary write would give."""

import os
import stat

import pytest

from bundle.io import atomic
from bundle.io.atomic import atomic_path, atomic_write_text


def test_output_gets_the_umask_mode_not_mkstemps_0600(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "x")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == stat.S_IMODE(os.stat(plain).st_mode)
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o666 & ~atomic._UMASK


def test_a_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "m.nii.gz") as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("crash")
    assert os.listdir(tmp_path) == []
