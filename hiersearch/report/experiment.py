"""An experiment directory (a local path or a URI: s3://, gs://, file://) read and written
through `pyarrow.fs`, and its `hiersearch.json`: what the search was started with (the space,
the base config, the corpus, the metric). The search driver writes it; the driver (on resume),
the command line and the results table read it, each deciding what a missing or broken file
means to it.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from hiersearch.errors import InputError
from hiersearch.files import atomic_write_text

if TYPE_CHECKING:  # imported when used: `import hiersearch.report` stays light
    import pyarrow.fs

META_FILE = "hiersearch.json"


def open_location(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """(filesystem, path in it) of a local path or URI; a URI pyarrow cannot open is an
    InputError naming it."""
    import pyarrow.fs

    try:
        if "://" in location:
            return pyarrow.fs.FileSystem.from_uri(location.rstrip("/"))
        return pyarrow.fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends for bad URIs
        raise InputError(f"cannot open: {exc}", where=location) from None


def read_text(filesystem: pyarrow.fs.FileSystem, path: str) -> str | None:
    """A small text file; None when it is absent or cannot be read."""
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read().decode("utf-8", errors="replace")
    except OSError:  # FileNotFoundError included; pyarrow raises OSError for a bucket too
        return None


def write_text(filesystem: pyarrow.fs.FileSystem, path: str, text: str) -> None:
    """Write a small file: atomically on a local disk, in one upload to a bucket."""
    import pyarrow.fs

    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        atomic_write_text(path, text)
        return
    filesystem.create_dir(os.path.dirname(path), recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(text.encode())


def meta_location(experiment: str) -> str:
    """Where an experiment's `hiersearch.json` is, as error messages name it."""
    return f"{experiment.rstrip('/')}/{META_FILE}"


def read_meta(experiment: str) -> dict[str, Any] | None:
    """The experiment's `hiersearch.json`; None when there is none (or it cannot be read).
    A file that is not a JSON object is an InputError naming it: a caller that can do
    without it (the results table) warns and goes on."""
    return read_json_object(experiment, META_FILE)


def read_json_object(experiment: str, name: str) -> dict[str, Any] | None:
    """The experiment's file `name` as a JSON object; None when there is none (or it cannot
    be read); an InputError naming the file when it is no JSON object."""
    filesystem, path = open_location(experiment)
    text = read_text(filesystem, f"{path}/{name}")
    if text is None:
        return None
    where = f"{experiment.rstrip('/')}/{name}"
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise InputError(f"not JSON ({exc})", where=where) from None
    if not isinstance(obj, dict):
        raise InputError("expected a JSON object", where=where)
    return obj


def write_meta(experiment: str, meta: dict[str, Any]) -> None:
    filesystem, path = open_location(experiment)
    text = json.dumps(meta, indent=2, default=str) + "\n"
    write_text(filesystem, f"{path}/{META_FILE}", text)
