"""Documents and their labels: `Corpus`, the corpus-directory layout (read, write, stats) and
`finalize`, the one place that augments labels with their ancestors and drops (and counts)
unknown labels, documents left without a label and documents without text.

The loaders of external formats (EURLEX57K, MIMIC-III, JSONL, CSV) live in
`hiersearch.data.loaders`, which builds on this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hiersearch.data.hierarchy import Hierarchy, read_json_file
from hiersearch.errors import InputError
from hiersearch.files import StagedFiles, check_writable_dir

SPLITS = ("train", "dev", "test")
# The files of the corpus directory layout, all that `write_corpus` ever writes or replaces.
# corpus.json is its manifest and is written last: it names the others with their sha256.
MANIFEST = "corpus.json"
CORPUS_FILES = (*(f"{s}.jsonl" for s in SPLITS), "hierarchy.json", MANIFEST)
# Dropped documents named as examples in a load report (per split).
REPORT_EXAMPLES = 3
RawDoc = tuple[str, str, Iterable[str]]  # (id, text, labels) before finalize


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    labels: tuple[str, ...]  # sorted; already augmented with all ancestors


@dataclass(frozen=True)
class LoadReport:
    unknown_labels: dict[str, int]  # label id -> occurrences dropped (not in the hierarchy)
    unlabelled_docs: dict[str, int]  # split -> documents dropped (no known label left)
    # label id -> occurrences of labels that exist only outside a truncated hierarchy's range;
    # they were replaced by their kept ancestors (empty unless the hierarchy was truncated)
    out_of_range_labels: dict[str, int] = field(default_factory=dict)
    # split -> the ids of the first few documents dropped there (for the user to look up)
    dropped_examples: dict[str, list[str]] = field(default_factory=dict)
    # split -> documents dropped because their text is empty or only whitespace: they would
    # train and be scored as documents while saying nothing
    empty_docs: dict[str, int] = field(default_factory=dict)
    empty_examples: dict[str, list[str]] = field(default_factory=dict)  # the first ids, per split

    def to_json(self) -> dict[str, Any]:
        return {
            "unknown_labels": self.unknown_labels,
            "unlabelled_docs": self.unlabelled_docs,
            "out_of_range_labels": self.out_of_range_labels,
            "dropped_examples": self.dropped_examples,
            "empty_docs": self.empty_docs,
            "empty_examples": self.empty_examples,
        }

    def summary(self) -> str:
        def top(counts: dict[str, int]) -> str:
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
            return ", ".join(f"{k} ({v})" for k, v in ranked)

        lines = []
        if self.unknown_labels:
            lines.append(
                f"dropped {sum(self.unknown_labels.values())} occurrences of "
                f"{len(self.unknown_labels)} labels not in the hierarchy; most "
                f"frequent: {top(self.unknown_labels)}"
            )
        if self.out_of_range_labels:
            lines.append(
                f"replaced {sum(self.out_of_range_labels.values())} occurrences of "
                f"{len(self.out_of_range_labels)} labels outside the kept levels by "
                f"their kept ancestors; most frequent: {top(self.out_of_range_labels)}"
            )
        if any(self.unlabelled_docs.values()):
            lines.append(
                f"dropped {sum(self.unlabelled_docs.values())} documents left without "
                f"a known label {_per_split(self.unlabelled_docs, self.dropped_examples)}"
            )
        if any(self.empty_docs.values()):
            lines.append(
                f"dropped {sum(self.empty_docs.values())} documents whose text is empty or "
                f"only whitespace {_per_split(self.empty_docs, self.empty_examples)}"
            )
        return "\n".join(lines) or "all labels known; no document dropped"


def _per_split(counts: dict[str, int], examples: dict[str, list[str]]) -> str:
    """"(train 2, dev 1); e.g. a, b": the counts of the splits that dropped any, the first ids."""
    per = ", ".join(f"{s} {n}" for s, n in counts.items() if n)
    ids = [i for split in SPLITS for i in examples.get(split, [])]
    return f"({per})" + (f"; e.g. {', '.join(ids[:5])}" if ids else "")


@dataclass(frozen=True)
class Corpus:
    splits: dict[str, tuple[Document, ...]]  # keys: SPLITS, all present and non-empty
    hierarchy: Hierarchy
    synthetic: bool  # True for the synthetic corpus: it is labelled synthetic everywhere
    report: LoadReport
    generator: dict[str, Any] | None = None  # provenance (loader or generator and settings)

    def fingerprint(self) -> str:
        """sha256 over the hierarchy fingerprint and every document in split order."""
        cached = self.__dict__.get("_fingerprint")  # frozen: memoized beside the fields
        if cached is None:
            digest = hashlib.sha256(self.hierarchy.fingerprint().encode())
            for split in SPLITS:
                digest.update(f"\x1d{split}".encode())
                for doc in self.splits[split]:
                    digest.update(
                        f"{doc.id}\x00{doc.text}\x00{chr(31).join(doc.labels)}\x1e".encode()
                    )
            cached = self.__dict__["_fingerprint"] = digest.hexdigest()
        return cached

    def truncate(self, first: int, last: int) -> Corpus:
        """The same documents on `hierarchy.truncate(first, last)`: labels of dropped levels go
        (their kept ancestors are already there), documents left without a label are dropped;
        the report adds both to the counts of the original load."""
        raw = {s: [(d.id, d.text, d.labels) for d in docs] for s, docs in self.splits.items()}
        again = finalize(
            raw,
            self.hierarchy.truncate(first, last),
            self.synthetic,
            where=f"levels {first}..{last}",
            generator=self.generator,
        )
        old, new = self.report, again.report
        report = LoadReport(
            dict(Counter(old.unknown_labels) + Counter(new.unknown_labels)),
            {s: old.unlabelled_docs.get(s, 0) + new.unlabelled_docs.get(s, 0) for s in SPLITS},
            dict(Counter(old.out_of_range_labels) + Counter(new.out_of_range_labels)),
            {
                s: (old.dropped_examples.get(s, []) + new.dropped_examples.get(s, []))[
                    :REPORT_EXAMPLES
                ]
                for s in SPLITS
            },
            old.empty_docs,  # the kept documents all have text: truncation drops no more
            old.empty_examples,
        )
        return Corpus(again.splits, again.hierarchy, self.synthetic, report, self.generator)

    def stats(self) -> dict[str, Any]:
        level_of = {
            label: lv for lv, labels in enumerate(self.hierarchy.label_index()) for label in labels
        }
        depth = self.hierarchy.depth
        occurrences, used, mean, reaching = {}, {}, {}, {}
        for split in SPLITS:
            docs = self.splits[split]
            levels = np.fromiter((level_of[lab] for d in docs for lab in d.labels), dtype=np.int64)
            occurrences[split] = np.bincount(levels, minlength=depth).tolist()
            # the documents a level's R-Precision averages over (the others have R = 0 there)
            reaching[split] = np.bincount(
                [lv for d in docs for lv in {level_of[lab] for lab in d.labels}], minlength=depth
            ).tolist()
            distinct = {lab for d in docs for lab in d.labels}
            used[split] = np.bincount(
                [level_of[lab] for lab in distinct], minlength=depth
            ).tolist()
            mean[split] = round(len(levels) / len(docs), 3) if docs else 0.0
        return {
            "synthetic": self.synthetic,
            "hierarchy": self.hierarchy.name,
            "documents": {s: len(self.splits[s]) for s in SPLITS},
            "labels_per_level": self.hierarchy.label_counts(),
            "label_occurrences_per_level": occurrences,
            "labels_used_per_level": used,
            "documents_per_level": reaching,
            "mean_labels_per_doc": mean,
        }


def finalize(
    raw_splits: Mapping[str, Sequence[RawDoc]],
    hierarchy: Hierarchy,
    synthetic: bool = False,
    *,
    where: str | None = None,
    generator: dict[str, Any] | None = None,
) -> Corpus:
    """Augment labels with their ancestors, drop and count unknown labels, unlabelled
    documents and documents whose text is empty or only whitespace. An empty corpus, a corpus
    whose labels are all unknown or whose texts are all empty, an empty split or a duplicate
    document id is an InputError naming `where` (the source)."""
    unknown: Counter[str] = Counter()
    outside: Counter[str] = Counter()
    closures: dict[str, frozenset[str] | None] = {}
    splits: dict[str, tuple[Document, ...]] = {}
    unlabelled: dict[str, int] = {}
    dropped: dict[str, list[str]] = {}
    empty: dict[str, int] = {}
    empty_examples: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for split in SPLITS:
        docs = []
        empty[split] = 0
        for doc_id, text, raw_labels in raw_splits.get(split, ()):
            if doc_id in seen:
                raise InputError(
                    f"document id {doc_id!r} occurs twice ({seen[doc_id]} and {split})",
                    where=where,
                )
            seen[doc_id] = split
            if not text.strip():
                empty[split] += 1
                if len(empty_examples.setdefault(split, [])) < REPORT_EXAMPLES:
                    empty_examples[split].append(str(doc_id))
                continue
            labels: set[str] = set()
            for label in set(map(str, raw_labels)):
                if label not in closures:
                    if label in hierarchy:
                        closures[label] = hierarchy.ancestors(label) | {label}
                    else:
                        closures[label] = hierarchy.outside_ancestors(label)
                closure = closures[label]
                if closure is None:
                    unknown[label] += 1
                    continue
                if label not in hierarchy:
                    outside[label] += 1
                labels |= closure
            if labels:
                docs.append(Document(doc_id, text, tuple(sorted(labels))))
            elif len(dropped.setdefault(split, [])) < REPORT_EXAMPLES:
                dropped[split].append(str(doc_id))
        unlabelled[split] = len(raw_splits.get(split, ())) - len(docs) - empty[split]
        splits[split] = tuple(docs)
    report = LoadReport(dict(unknown), unlabelled, dict(outside), dropped, empty, empty_examples)
    _refuse_unusable(splits, report, len(seen), hierarchy.name, where)
    return Corpus(splits, hierarchy, synthetic, report, generator)


def _refuse_unusable(
    splits: Mapping[str, Sequence[Document]],
    report: LoadReport,
    documents: int,
    hierarchy_name: str,
    where: str | None,
) -> None:
    """An InputError naming `where` for a corpus left with nothing to train or score on: no
    documents, only empty texts, no known label, or a split without a labelled document."""
    if not documents:
        raise InputError("the corpus has no documents", where=where)
    if sum(report.empty_docs.values()) == documents:
        examples = ", ".join(i for s in SPLITS for i in report.empty_examples.get(s, []))
        raise InputError(
            f"every document's text is empty or only whitespace (e.g. {examples})", where=where
        )
    unknown = report.unknown_labels
    if not any(splits.values()) and unknown:
        examples = ", ".join(sorted(unknown)[:5])
        raise InputError(
            f"none of the {len(unknown)} distinct labels is in the hierarchy "
            f"{hierarchy_name!r} (e.g. {examples})",
            where=where,
        )
    for split, docs in splits.items():
        if not docs:
            why = [f"{n} {what}" for n, what in
                   ((report.unlabelled_docs[split], "without a known label"),
                    (report.empty_docs[split], "with an empty text")) if n]
            raise InputError(
                f"the {split} split has no labelled documents"
                + (f" (dropped: {', '.join(why)})" if why else ""),
                where=where,
            )


# -- readers ------------------------------------------------------------------------------------
def label_list(value: Any, field_name: str, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
        raise InputError(f"field {field_name!r} must be a list of label ids", where=where)
    return [str(v) for v in value]


def read_jsonl(path: Path, text_field: str, labels_field: str, id_field: str) -> list[RawDoc]:
    docs: list[RawDoc] = []
    for lineno, obj in _jsonl_objects(path):
        where = f"{path}:{lineno}"
        if not isinstance(obj.get(text_field), str):
            raise InputError(f"missing text field {text_field!r} (or not a string)", where=where)
        if labels_field not in obj:
            raise InputError(f"missing labels field {labels_field!r}", where=where)
        doc_id = obj.get(id_field)
        docs.append(
            (
                f"{path.stem}:{lineno}" if doc_id is None else str(doc_id),
                obj[text_field],
                label_list(obj[labels_field], labels_field, where),
            )
        )
    return docs


def _jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line; bad UTF-8 or JSON names the line."""
    try:
        with path.open("rb") as handle:  # bytes: a decoding error then names its line
            for lineno, raw in enumerate(
                tqdm(handle, desc=path.name, unit=" docs", disable=None), 1
            ):
                where = f"{path}:{lineno}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise InputError(
                        f"invalid UTF-8 (byte {err.start + 1} of the line)", where=where
                    ) from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(
                        f"invalid JSON: {err.msg} (column {err.colno})", where=where
                    ) from None
                if not isinstance(obj, dict):
                    raise InputError("expected a JSON object", where=where)
                yield lineno, obj
    except OSError as err:
        raise InputError.from_os_error(err, str(path), "cannot read the file") from None


# -- the corpus directory layout ----------------------------------------------------------------
def load_corpus_header(directory: str | Path) -> tuple[Hierarchy, dict[str, Any]]:
    """A corpus directory's hierarchy and its corpus.json ({} if absent), without reading a
    document: what a model export needs of a corpus."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError("not a corpus directory", where=str(directory))
    hier_path = directory / "hierarchy.json"
    hierarchy = Hierarchy.from_json(read_json_file(hier_path), str(hier_path))
    meta: Any = {}
    if (directory / "corpus.json").exists():
        meta = read_json_file(directory / "corpus.json")
        if not isinstance(meta, dict) or not isinstance(meta.get("synthetic", False), bool):
            raise InputError(
                "expected an object with a boolean 'synthetic'",
                where=str(directory / "corpus.json"),
            )
    return hierarchy, meta


def load_corpus_dir(directory: str | Path) -> Corpus:
    """DIR/{train,dev,test}.jsonl (id, text, labels) + DIR/hierarchy.json (+ DIR/corpus.json with
    "synthetic": true/false; absent means a real corpus)."""
    hierarchy, meta = load_corpus_header(directory)
    directory = Path(directory)
    raw = {s: read_jsonl(directory / f"{s}.jsonl", "text", "labels", "id") for s in SPLITS}
    return finalize(
        raw,
        hierarchy,
        synthetic=meta.get("synthetic", False),
        where=str(directory),
        generator=meta.get("generator"),
    )


def write_corpus(corpus: Corpus, directory: str | Path) -> None:
    """Write the corpus directory layout. Only the layout's own files are replaced, together
    (`StagedFiles`: a failure leaves the previous corpus whole), and only in a new or empty
    directory or one whose manifest hiersearch wrote: anything else in it (notes, the encoding
    cache) stays, and a directory that is not hiersearch's is refused."""
    directory = Path(directory)
    check_replaceable(directory)
    try:
        with StagedFiles(directory) as staged:
            for split in SPLITS:
                with staged.open(f"{split}.jsonl") as handle:
                    for doc in corpus.splits[split]:
                        record = {"id": doc.id, "text": doc.text, "labels": list(doc.labels)}
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            staged.write_text("hierarchy.json", _json_text(corpus.hierarchy.to_json()))
            manifest = {
                "synthetic": corpus.synthetic,
                "generator": corpus.generator,
                "stats": corpus.stats(),
                "load_report": corpus.report.to_json(),
                # what hiersearch wrote here: the files it may replace, and their content
                "files": {name: staged.sha256(name) for name in CORPUS_FILES[:-1]},
            }
            staged.write_text(MANIFEST, _json_text(manifest))  # last: the set is complete
    except OSError as err:
        raise InputError.from_os_error(err, str(directory)) from None


def check_replaceable(directory: Path) -> None:
    """Whether `write_corpus` may write into `directory`: absent, empty, or a corpus that
    hiersearch wrote (its corpus.json has a manifest); anything else is an InputError, as
    is a path that cannot hold a directory. Nothing is written."""
    try:
        check_writable_dir(directory)
    except OSError as err:
        raise InputError.from_os_error(err, str(directory)) from None
    if not directory.exists() or not any(directory.iterdir()):
        return
    meta: Any = None
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    # "load_report": the manifest of a corpus written before manifests named their files
    if not isinstance(meta, dict) or not ({"files", "load_report"} & meta.keys()):
        raise InputError(
            "exists and is not a corpus directory written by hiersearch; refusing to write "
            "into it (choose a new or empty directory)",
            where=str(directory),
        )


def manifest_matches(directory: str | Path) -> bool:
    """Whether a corpus directory's files are the ones its manifest names (a write that was
    interrupted between its renames leaves a mix)."""
    directory = Path(directory)
    try:
        files = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))["files"]
        for name, expected in files.items():
            digest = hashlib.sha256()
            with (directory / name).open("rb") as handle:
                for block in iter(lambda h=handle: h.read(1 << 20), b""):
                    digest.update(block)
            if digest.hexdigest() != expected:
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def format_stats(stats: dict[str, Any]) -> str:
    """A readable table of `Corpus.stats()`; a synthetic corpus says so in its first line."""
    lines = []
    if stats["synthetic"]:
        lines += [
            "*** SYNTHETIC corpus: documents generated from label descriptions, not real data ***",
            "",
        ]
    else:
        lines += ["Corpus (real data)", ""]
    lines.append(f"hierarchy: {stats['hierarchy']}")
    docs, mean = stats["documents"], stats["mean_labels_per_doc"]
    lines.append(f"{'':<22}" + "".join(f"{s:>10}" for s in SPLITS))
    lines.append(f"{'documents':<22}" + "".join(f"{docs[s]:>10}" for s in SPLITS))
    lines.append(f"{'labels per document':<22}" + "".join(f"{mean[s]:>10.2f}" for s in SPLITS))
    lines += [
        "",
        "level  labels  "
        + "".join(f"{'occ ' + s:>12}" for s in SPLITS)
        + "".join(f"{'used ' + s:>12}" for s in SPLITS)
        + "".join(f"{'docs ' + s:>12}" for s in SPLITS),
    ]
    occ, used = stats["label_occurrences_per_level"], stats["labels_used_per_level"]
    reaching = stats["documents_per_level"]
    for i, count in enumerate(stats["labels_per_level"]):
        lines.append(
            f"L{i + 1:<5}{count:>7}  "
            + "".join(f"{occ[s][i]:>12}" for s in SPLITS)
            + "".join(f"{used[s][i]:>12}" for s in SPLITS)
            + "".join(f"{reaching[s][i]:>12}" for s in SPLITS)
        )
    return "\n".join(lines)
