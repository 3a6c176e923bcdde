"""Atomic file writes: a reader never sees a half-written file, and a crash mid-write leaves
the previous version in place. What is written gets the permissions a plain `open` or `mkdir`
would give it (0666 / 0777 less the umask), not the owner-only mode of `tempfile`: on a
shared filesystem the other nodes and users of a cluster read corpora, results and exports.

Errors are `OSError`s: this module sits below `errors` (callers name the option or file).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO


def umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux);
    elsewhere set and restored at once."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open(path, "w")` would create a file with."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """The mode `os.mkdir(path)` would create a directory with."""
    return 0o777 & ~umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[TextIO]:
    """Open a temporary file beside `path`; on success rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp's 0600 would travel with the rename
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle  # type: ignore[misc]
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def make_dirs(path: str | os.PathLike[str]) -> Path:
    """`mkdir -p` with the umask's mode (`tempfile.mkdtemp` would give 0700)."""
    path = Path(path)
    path.mkdir(mode=0o777, parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def exclusive_lock(lock_file: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive `flock` on `lock_file` (created if absent) while the block runs: the
    processes of a node that would build the same thing queue here, and the first builds it.
    The lock goes with the process: a builder killed mid-way leaves no stale lock."""
    import fcntl

    lock_file = Path(lock_file)
    make_dirs(lock_file.parent)
    with open(lock_file, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory under a temporary name beside `path`; rename it into place on success.

    If `path` already exists it is replaced only after the new one is complete: callers use
    it only for directories that hiersearch wrote whole (an encoding, an export).
    """
    path = Path(path)
    make_dirs(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, dir_mode())
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_writable_dir(path: str | os.PathLike[str]) -> None:
    """Raise the `OSError` that writing under the directory `path` would meet, without
    leaving anything behind: `path` (or, if absent, its nearest existing ancestor, where it
    would be created) must be a directory in which a file can be created."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise NotADirectoryError(20, "not a directory", str(probe))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".hiersearch-probe-", dir=probe)
    except OSError as exc:  # named by the directory, not by the probe's random name
        raise type(exc)(exc.errno, exc.strerror, str(probe)) from None
    os.close(fd)
    os.unlink(tmp)


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether `a` and `b` name one existing file or directory: one path written two ways
    (relative, with `..`), a symlink and its target, or two hard links of one file."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # one of them does not exist (yet): two different files
        return False


def is_inside(path: str | os.PathLike[str], directory: str | os.PathLike[str]) -> bool:
    """Whether `path` lies below `directory` once both are resolved (symlinks, `..`)."""
    real, top = Path(os.path.realpath(path)), Path(os.path.realpath(directory))
    return top in real.parents


class StagedFiles:
    """Several files of one directory replaced together: each is written in full under a
    temporary name beside its target, and only when all are written are they renamed into
    place, in the order they were staged (put the file that marks the set complete last).
    A failure while writing leaves every previous file as it was; nothing else in the
    directory is touched.

        with StagedFiles(directory) as staged:
            with staged.open("a.txt") as handle: ...
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = make_dirs(directory)
        self._staged: list[tuple[str, str]] = []  # (name, temporary path)

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[TextIO]:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.directory)
        self._staged.append((name, tmp))
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())

    def write_text(self, name: str, text: str) -> None:
        with self.open(name) as handle:
            handle.write(text)

    def sha256(self, name: str) -> str:
        """The digest of a staged file's content."""
        import hashlib

        digest = hashlib.sha256()
        with open(dict(self._staged)[name], "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            for name, tmp in self._staged:
                os.replace(tmp, self.directory / name)
            self._staged = []
            return
        for _, tmp in self._staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
