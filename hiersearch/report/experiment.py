"""An experiment directory (a local path or a URI: s3://, gs://, file://) read and written
through `pyarrow.fs`, and its `hiersearch.json`: what the search was started with (the space,
the base config, the corpus, the metric). It is written here (`write_experiment_meta`, called
by search/run.py when an experiment starts) and read here (`read_meta`: by a resume, the
command line and the results table, each deciding what a missing or broken file means to it).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from hiersearch.errors import InputError
from hiersearch.files import atomic_open
from hiersearch.typed import parse_json_object

if TYPE_CHECKING:  # imported when used: `import hiersearch.report` stays light
    import pyarrow.fs

META_FILE = "hiersearch.json"
# hiersearch.json's key for a PBT search's initial population (its members' parameters).
PBT_POPULATION = "pbt_population"


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


def read_bytes(filesystem: pyarrow.fs.FileSystem, path: str) -> bytes | None:
    """A file's bytes; None when it is absent or cannot be read."""
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except OSError:  # FileNotFoundError included; pyarrow raises OSError for a bucket too
        return None


def write_text(filesystem: pyarrow.fs.FileSystem, path: str, text: str) -> None:
    """Write a small file: atomically on a local disk, in one upload to a bucket."""
    write_bytes(filesystem, path, text.encode())


def write_bytes(filesystem: pyarrow.fs.FileSystem, path: str, data: bytes) -> None:
    """Write a file: atomically on a local disk, in one upload to a bucket."""
    import pyarrow.fs

    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        with atomic_open(path, "wb") as handle:
            handle.write(data)  # type: ignore[arg-type]
        return
    filesystem.create_dir(os.path.dirname(path), recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def meta_location(experiment: str) -> str:
    """Where an experiment's `hiersearch.json` is, as error messages name it."""
    return f"{experiment.rstrip('/')}/{META_FILE}"


def read_meta(experiment: str) -> dict[str, Any] | None:
    """The experiment's `hiersearch.json`; None when there is none (or it cannot be read).
    A file that is not a JSON object is an InputError naming it: a caller that can do
    without it (the results table) warns and goes on."""
    return read_experiment_json(experiment, META_FILE)


def read_experiment_json(experiment: str, name: str) -> dict[str, Any] | None:
    """The experiment's file `name` as a JSON object (`read_stored_json`)."""
    filesystem, path = open_location(experiment)
    return read_stored_json(filesystem, f"{path}/{name}", f"{experiment.rstrip('/')}/{name}")


def read_stored_json(
    filesystem: pyarrow.fs.FileSystem, path: str, where: str | None = None
) -> dict[str, Any] | None:
    """A small JSON object file on `filesystem`; None when there is none (or it cannot be
    read); an InputError naming it (`where`, else `path`) when it is no JSON object."""
    text = read_text(filesystem, path)
    return None if text is None else parse_json_object(text, where or path)


def write_experiment_meta(
    experiment: str,
    *,
    metrics: Sequence[str],
    modes: Sequence[str],
    study: Mapping[str, Any],
    space_file: str | None,
    space: Mapping[str, Any],
    base_config: Mapping[str, Any],
    corpus: str,
    synthetic: bool,
    label_counts: Sequence[int],
    num_layers: int,
    stage: str | None = None,
    kept: Mapping[str, Any] | None = None,
) -> None:
    """hiersearch.json: what the experiment was started with (read on resume and by the
    results table); the first metric and mode order its tables. `stage`: which stage of a
    two-stage search it is; `kept`: what its search keeps for a resume (a PBT search's
    population, `PBT_POPULATION`, which its trials' parameters point into)."""
    meta = {
        "name": PurePosixPath(experiment.rstrip("/")).name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "metric": metrics[0],
        "mode": modes[0],
        "metrics": list(metrics),
        "modes": list(modes),
        "study": dict(study),
        "space_file": space_file,
        "space": dict(space),
        "base_config": dict(base_config),
        "corpus": corpus,
        "synthetic": synthetic,
        "label_counts": list(label_counts),
        "num_layers": num_layers,
        **({"stage": stage} if stage else {}),
        **(kept or {}),
    }
    filesystem, path = open_location(experiment)
    text = json.dumps(meta, indent=2, default=str) + "\n"
    write_text(filesystem, f"{path}/{META_FILE}", text)
