"""`hiersearch predict`: label documents with an exported model, as JSON Lines.

Input: the corpus formats training reads, without labels.

- JSONL (`.jsonl`, `.json`, `.ndjson`; `-` reads JSONL from standard input): one object per line
  with a string `text` and an optional `id` (or `celex_id`, the Hugging Face eurlex layout).
- CSV (`.csv`): a header with a `text` column and an optional `id` column.

A document without an id gets `"<file stem>:<line>"` (`"stdin:<line>"` from standard input), as
the corpus loaders name them. Bad input (a missing file, an unknown extension, invalid UTF-8, a
line that is not a JSON object, a record without a string text) is an `InputError` naming the
file and line; so is a bad option, checked before the model is loaded.

Output: one JSON object per input document, in input order (schema version 1):

    {"id": "doc-7",
     "levels": [{"level": 1,
                 "labels": [{"id": "100149", "score": 0.93145, "description": "..."}, ...]},
                {"level": 2, "labels": [...]}, ...]}

- `levels`: the requested levels (`--levels A-B`, 1-based, default all), ascending.
- `labels`: sorted by score, highest first (ties: the model's column order); `score` is the
  sigmoid probability at full float32 precision, so that metrics can be recomputed from it.
- By default a label set: each level's labels scoring >= the level's threshold tuned on dev
  (the export's `thresholds`; an export without them needs `--top-k` or `--threshold`), made
  consistent with the hierarchy (`--consistency drop|add|none`, default drop: no label without
  one of its parents; `consistency.py`). A label the `add` rule brought in has
  `"added": true` (its score is below its level's threshold); no other label has the field.
- `--threshold T`: the same label set with one threshold T for every level.
- `--top-k K`: a ranking, as before label sets: the K best of each level, whatever their
  parents (with `--threshold T` too, at most K of those scoring >= T).

Documents are read `SORT_WINDOW` batches at a time, scored in batches of similar length (a
batch pads to its longest document) and written in input order as each window is done, so
memory does not grow with the input. `--out FILE` is written atomically: a failure mid-way
(bad line 10 000) leaves no partial file. Standard output is written as it goes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TextIO

import numpy as np

from hiersearch.data.hierarchy import Hierarchy
from hiersearch.errors import InputError
from hiersearch.serve.consistency import (
    CONSISTENCY_MODES,
    DEFAULT_CONSISTENCY,
    NONE,
    LabelRule,
    ParentIndex,
)

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
CSV_SUFFIXES = (".csv",)
STDIN = "-"
TEXT_FIELD = "text"
BOM = b"\xef\xbb\xbf"
ID_FIELDS = ("id", "celex_id")  # the generic loaders' id, then the HF eurlex layout's


class ScoringModel(Protocol):
    """What predict needs of `hiersearch.serve.model.ExportedModel` (and of an exported
    ensemble, `hiersearch.serve.ensemble.EnsembleModel`)."""

    label_index: list[list[str]]
    descriptions: list[list[str]]
    thresholds: list[float] | None  # per level, tuned on dev; None in older exports
    directory: Path

    @property
    def num_levels(self) -> int: ...

    def hierarchy(self) -> Hierarchy: ...

    def scores(
        self, texts: Sequence[str], levels: Sequence[int] | None = None, batch_size: int = 32
    ) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class Selection:
    """What to keep of a level: with `top_k` a ranking (the top `top_k`, among those scoring
    >= `threshold` if given); without it a label set (scores >= `threshold`, or the model's
    tuned thresholds when that is None too) made consistent by `consistency`."""

    top_k: int | None
    threshold: float | None
    # the hierarchy rule of a label set (`consistency.py`); a ranking ignores it
    consistency: str = DEFAULT_CONSISTENCY

    @property
    def label_set(self) -> bool:
        return self.top_k is None


# -- options ----------------------------------------------------------------------------------
def check_options(
    top_k: int | None,
    threshold: float | None,
    batch_size: int,
    device: str,
    consistency: str | None = None,
) -> Selection:
    """The options that need no model, checked before anything heavy is loaded.
    `consistency` None: the default rule (label sets only)."""
    if top_k is not None and top_k < 1:
        raise InputError(f"must be >= 1, got {top_k}", where="--top-k")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise InputError(
            f"must be between 0 and 1 (exclusive), got {threshold}", where="--threshold"
        )
    if consistency is not None and consistency not in CONSISTENCY_MODES:
        raise InputError(
            f"expected one of {', '.join(CONSISTENCY_MODES)}, got {consistency!r}",
            where="--consistency",
        )
    if consistency is not None and top_k is not None:
        raise InputError(
            "applies to label sets; --top-k asks for a ranking (drop --top-k for label sets)",
            where="--consistency",
        )
    if batch_size < 1:
        raise InputError(f"must be >= 1, got {batch_size}", where="--batch-size")
    check_device(device)
    return Selection(top_k, threshold, consistency or DEFAULT_CONSISTENCY)


_NO_THRESHOLDS = (
    "has no F1 thresholds tuned on dev (its trial was trained before hiersearch tuned them): "
    "give --top-k K or --threshold T"
)


def check_tuned(model_dir: str, selection: Selection) -> None:
    """A label set at the model's own thresholds needs an export that has them: checked in
    its model.json before the weights load (a missing or broken file is left to the load)."""
    if not selection.label_set or selection.threshold is not None:
        return
    from hiersearch.serve.export import MODEL_FILE

    path = Path(model_dir) / MODEL_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(info, dict) and info.get("thresholds") is None:
        raise InputError(_NO_THRESHOLDS, where=str(path))


def label_rule(model: ScoringModel, levels: Sequence[int], selection: Selection) -> LabelRule:
    """A label set's thresholds and hierarchy rule for the requested levels, from the model:
    InputError naming its model.json when it has no tuned thresholds, or its hierarchy.json
    when that does not hold its labels."""
    if selection.threshold is not None:
        thresholds = tuple(selection.threshold for _ in levels)
    elif model.thresholds is None:
        raise InputError(_NO_THRESHOLDS, where=str(Path(model.directory) / "model.json"))
    else:
        thresholds = tuple(model.thresholds[n - 1] for n in levels)
    parents = None
    if selection.consistency != NONE:
        try:
            parents = ParentIndex.build(model.hierarchy(), model.label_index, levels)
        except KeyError as err:
            raise InputError(
                f"does not hold the model's label {err.args[0]!r}",
                where=str(Path(model.directory) / "hierarchy.json"),
            ) from None
    return LabelRule(thresholds, selection.consistency, parents)


def check_device(device: str) -> None:
    if device == "cpu":
        return
    if device.split(":", 1)[0] != "cuda":
        raise InputError(f"expected cpu or cuda, got {device!r}", where="--device")
    import torch

    if not torch.cuda.is_available():
        raise InputError("CUDA is not available on this machine", where="--device")


def check_levels(levels: tuple[int, int] | None, num_levels: int) -> list[int]:
    """The requested 1-based levels, ascending; `None` means all of the model's."""
    if levels is None:
        return list(range(1, num_levels + 1))
    first, last = levels
    if not 1 <= first <= last <= num_levels:
        raise InputError(
            f"expected A-B with 1 <= A <= B <= {num_levels} (the model's levels), "
            f"got {first}-{last}",
            where="--levels",
        )
    return list(range(first, last + 1))


# -- input ------------------------------------------------------------------------------------
def open_documents(source: str) -> Iterator[tuple[str, str]]:
    """(id, text) of every document of `source`, lazily. The file's existence and format are
    checked at once (before the model loads), its lines as they are read."""
    if source == STDIN:
        return _jsonl_documents(_stdin(), "stdin", "<stdin>")
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix not in JSONL_SUFFIXES + CSV_SUFFIXES:
        raise InputError(
            f"unknown input format {suffix or '(no extension)'!r}; expected one of "
            f"{', '.join(JSONL_SUFFIXES + CSV_SUFFIXES)} or - for standard input",
            where=str(path),
        )
    try:
        # binary: each line is decoded alone, so that a bad byte names its own line
        handle = path.open("rb")
    except OSError as err:
        raise InputError(f"cannot read the file: {err.strerror or err}", where=str(path)) from None
    if suffix in CSV_SUFFIXES:
        return _closing(handle, _csv_documents(handle, path.stem, str(path)))
    return _closing(handle, _jsonl_documents(handle, path.stem, str(path)))


def _stdin() -> IO[Any]:
    # the bytes under sys.stdin: strict UTF-8 whatever the locale says (a test's StringIO has none)
    return getattr(sys.stdin, "buffer", sys.stdin)


def _closing(handle: IO[Any], docs: Iterator[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    with handle:
        yield from docs


def _lines(handle: IO[Any], where: str) -> Iterator[tuple[int, str]]:
    """Numbered lines as text; invalid UTF-8 is an InputError naming the line it is on."""
    for lineno, raw in enumerate(handle, 1):
        if isinstance(raw, str):
            yield lineno, raw
            continue
        if lineno == 1 and raw.startswith(BOM):  # spreadsheet CSV exports write one
            raw = raw[len(BOM) :]
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(
                f"invalid UTF-8 ({err.reason} at byte {err.start})", where=f"{where}:{lineno}"
            ) from None


def _jsonl_documents(handle: IO[Any], stem: str, where: str) -> Iterator[tuple[str, str]]:
    for lineno, line in _lines(handle, where):
        if not line.strip():
            continue  # as the corpus reader: blank lines (a trailing newline) are not documents
        here = f"{where}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"invalid JSON: {err.msg} (column {err.colno})", where=here) from None
        if not isinstance(obj, dict):
            raise InputError("expected a JSON object", where=here)
        if not isinstance(obj.get(TEXT_FIELD), str):
            raise InputError(f"missing text field {TEXT_FIELD!r} (or not a string)", where=here)
        doc_id = next((obj[f] for f in ID_FIELDS if obj.get(f) is not None), None)
        yield (f"{stem}:{lineno}" if doc_id is None else str(doc_id)), obj[TEXT_FIELD]


def _csv_documents(handle: IO[Any], stem: str, where: str) -> Iterator[tuple[str, str]]:
    # csv reads physical lines itself; wrap the handle so a bad byte still names its line
    lines = (line for _, line in _lines(handle, where))
    reader = csv.reader(lines)
    csv.field_size_limit(2**31 - 1)  # whole documents in one cell exceed the 128 KiB default
    try:
        header = next(reader, None)
        if header is None or TEXT_FIELD not in header:
            raise InputError(
                f"missing column {TEXT_FIELD!r}; the header is {header or []}", where=f"{where}:1"
            )
        text_col = header.index(TEXT_FIELD)
        id_col = header.index("id") if "id" in header else None
        row_number = 1  # as `load_csv` numbers them: the header is 1, blank lines do not count
        for row in reader:
            if not row:
                continue
            row_number += 1
            here = f"{where}:{reader.line_num}"
            if len(row) != len(header):
                raise InputError(f"expected {len(header)} cells, got {len(row)}", where=here)
            doc_id = row[id_col] if id_col is not None and row[id_col] else f"{stem}:{row_number}"
            yield doc_id, row[text_col]
    except csv.Error as err:
        raise InputError(f"invalid CSV: {err}", where=f"{where}:{reader.line_num}") from None


# Batches read at once and sorted by length before scoring (`ScoringModel.scores` sorts them).
SORT_WINDOW = 16


def batches(docs: Iterable[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    batch: list[tuple[str, str]] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- output -----------------------------------------------------------------------------------
def select(scores: np.ndarray, selection: Selection) -> np.ndarray:
    """Column indices of one document's kept labels, highest score first (stable on ties)."""
    order = np.argsort(-scores, kind="stable")
    if selection.threshold is not None:
        order = order[scores[order] >= selection.threshold]
    if selection.top_k is not None:
        order = order[: selection.top_k]
    return order


def _by_score(scores: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """`columns`, highest score first (stable on ties: the model's column order)."""
    return columns[np.argsort(-scores[columns], kind="stable")]


def records(
    model: ScoringModel,
    ids: Sequence[str],
    level_scores: Sequence[np.ndarray],
    levels: Sequence[int],
    selection: Selection,
    rule: LabelRule | None = None,
) -> Iterator[dict[str, Any]]:
    """The output objects of one batch (the schema in the module docstring): a ranking by
    `selection`, or with `rule` the label sets it gives."""
    sets, added = rule.apply(level_scores) if rule is not None else (None, None)
    for row, doc_id in enumerate(ids):
        out_levels = []
        for i, (level, scores) in enumerate(zip(levels, level_scores, strict=True)):
            index, descriptions = model.label_index[level - 1], model.descriptions[level - 1]
            if sets is None:
                kept = select(scores[row], selection)
            else:
                kept = _by_score(scores[row], np.flatnonzero(sets[i][row]))
            labels = []
            for c in kept:
                label = {"id": index[c], "score": float(scores[row, c]),
                         "description": descriptions[c]}
                if added is not None and added[i][row, c]:
                    label["added"] = True
                labels.append(label)
            out_levels.append({"level": level, "labels": labels})
        yield {"id": doc_id, "levels": out_levels}


def predict_stream(
    model: ScoringModel,
    docs: Iterable[tuple[str, str]],
    out: TextIO,
    levels: Sequence[int],
    selection: Selection,
    batch_size: int,
    progress: Any = None,
    rule: LabelRule | None = None,
) -> int:
    """Score `docs` batch by batch and write their JSON lines to `out`; the document count.
    `rule`: label sets (`label_rule`), else the ranking `selection` asks for."""
    count = 0
    for batch in batches(docs, batch_size * SORT_WINDOW):
        ids, texts = [d[0] for d in batch], [d[1] for d in batch]
        level_scores = model.scores(texts, levels=levels, batch_size=batch_size)
        for record in records(model, ids, level_scores, levels, selection, rule):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += len(batch)
        if progress is not None:
            progress.update(len(batch))
    return count


def load_model(model_dir: str, device: str) -> ScoringModel:
    """A trial's export or an ensemble's (`serve/ensemble.py`), by its model.json."""
    # imported here: torch and transformers load only once the options and input are checked
    from hiersearch.serve.ensemble import EnsembleModel, is_ensemble
    from hiersearch.serve.model import ExportedModel

    if is_ensemble(model_dir):
        return EnsembleModel.load(model_dir, device=device)
    return ExportedModel.load(model_dir, device=device)


@contextlib.contextmanager
def _output(out: str | None) -> Iterator[TextIO]:
    if out is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    from hiersearch.files import atomic_open

    with atomic_open(out) as handle:
        yield handle


def run_predict(
    model_dir: str,
    input: str,  # noqa: A002 - the CLI's option name
    out: str | None,
    top_k: int | None,
    threshold: float | None,
    levels: tuple[int, int] | None,
    batch_size: int,
    device: str,
    consistency: str | None = None,
) -> int:
    """`hiersearch predict`; the exit code. Bad input raises InputError (exit 2 in the CLI)."""
    selection = check_options(top_k, threshold, batch_size, device, consistency)
    if out is not None and Path(out).is_dir():
        raise InputError("is a directory; expected a file to write", where="--out")
    if out is not None:  # before the model loads: a place that cannot be written fails at once
        from hiersearch.files import check_writable_dir

        try:
            check_writable_dir(Path(out).expanduser().parent)
        except OSError as exc:
            raise InputError.from_os_error(exc, "--out") from None
    docs = open_documents(input)
    check_tuned(model_dir, selection)
    from tqdm import tqdm

    model = load_model(model_dir, device)
    wanted = check_levels(levels, model.num_levels)
    rule = label_rule(model, wanted, selection) if selection.label_set else None
    # a bar only on a terminal: redirected stderr (CI logs, pipes) stays one line per error
    with (
        tqdm(
            desc="predict", unit=" docs", file=sys.stderr, disable=not sys.stderr.isatty()
        ) as progress,
        _output(out) as handle,
    ):
        count = predict_stream(
            model, docs, handle, wanted, selection, batch_size, progress, rule
        )
    if out is not None:
        print(f"{count} documents -> {out}", file=sys.stderr)
    return 0


__all__ = [
    "Selection",
    "check_levels",
    "check_options",
    "check_tuned",
    "label_rule",
    "open_documents",
    "predict_stream",
    "records",
    "run_predict",
    "select",
]
