"""Atomic writes: whole files or none, and the permissions a plain write would give."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from hiersearch.files import (
    StagedFiles,
    atomic_directory,
    atomic_write_text,
    check_writable_dir,
    umask,
)


@pytest.fixture
def mask() -> Iterator[int]:
    """A umask that differs from tempfile's 0600/0700 and from the usual 022."""
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_umask_is_read_without_changing_it(mask: int) -> None:
    assert umask() == mask
    assert umask() == mask


def test_an_atomic_file_gets_the_umask_mode_not_mkstemps(tmp_path: Path, mask: int) -> None:
    atomic_write_text(tmp_path / "table.csv", "a,b\n")
    assert _mode(tmp_path / "table.csv") == 0o640


def test_an_atomic_directory_gets_the_umask_mode_not_mkdtemps(tmp_path: Path, mask: int) -> None:
    with atomic_directory(tmp_path / "export") as tmp:
        (tmp / "weights.bin").write_bytes(b"x")
    assert _mode(tmp_path / "export") == 0o750


def test_an_open_umask_lets_everyone_read(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        atomic_write_text(tmp_path / "shared.json", "{}")
        with atomic_directory(tmp_path / "shared") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "shared.json") == 0o664 and _mode(tmp_path / "shared") == 0o775


def test_staged_files_replace_their_own_files_together_and_nothing_else(
    tmp_path: Path, mask: int
) -> None:
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "notes.md").write_text("mine")
    with StagedFiles(tmp_path) as staged:
        staged.write_text("a.txt", "new a")
        staged.write_text("b.txt", "new b")
        assert (tmp_path / "a.txt").read_text() == "old a"  # nothing renamed before the end
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").exists()
    assert (tmp_path / "notes.md").read_text() == "mine" and _mode(tmp_path / "b.txt") == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "notes.md"]


def test_staged_files_that_fail_leave_the_previous_files_and_no_temporaries(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.txt").write_text("old a")
    with pytest.raises(RuntimeError), StagedFiles(tmp_path) as staged:
        staged.write_text("a.txt", "new a")
        raise RuntimeError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "old a"


def test_check_writable_dir_names_a_file_in_the_way_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError) as caught:
        check_writable_dir(tmp_path / "afile" / "sub" / "deeper")
    assert caught.value.filename == str(tmp_path / "afile")
    check_writable_dir(tmp_path / "new" / "dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
