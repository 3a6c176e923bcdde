"""`hiersearch data import`: a user's JSONL or CSV and a parent file become a corpus directory a
search accepts, without Python. The hierarchy is a real ontology slice: HPO terms below
"Phenotypic abnormality" as hp.obo (2025-01-16) links them, with multi-parent terms whose
parents sit at different depths (lymphatic system: under vasculature, level 3, and immune
system, level 2; thymus morphology: under endocrine system, level 2, and lymphatic system)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hiersearch.cli import main
from hiersearch.data.corpus import SPLITS, load_corpus_dir

SLICE = """# child<TAB>parent<TAB>name: a slice of HPO (hp.obo 2025-01-16)
HP:0000118\t\tPhenotypic abnormality
HP:0001626\tHP:0000118\tAbnormality of the cardiovascular system
HP:0002715\tHP:0000118\tAbnormality of the immune system
HP:0000818\tHP:0000118\tAbnormality of the endocrine system
HP:0002597\tHP:0001626\tAbnormality of the vasculature
HP:0100763\tHP:0002597\tAbnormality of the lymphatic system
HP:0100763\tHP:0002715
HP:0000777\tHP:0000818\tAbnormal thymus morphology
HP:0000777\tHP:0100763
HP:0000820\tHP:0000818\tAbnormality of the thyroid gland
HP:0010515\tHP:0000777\tAplasia/Hypoplasia of the thymus
HP:0010516\tHP:0000777\tThymus hyperplasia
HP:0001743\tHP:0100763\tAbnormality of the spleen
"""
THYMUS_ANCESTORS = {
    "HP:0000777", "HP:0000818", "HP:0100763", "HP:0002597", "HP:0002715", "HP:0001626",
    "HP:0000118",
}
FINDINGS = [
    ("HP:0010515", "small thymus on chest imaging"),
    ("HP:0010516", "enlarged thymus in an infant"),
    ("HP:0001743", "spleen of unusual size and shape"),
    ("HP:0000820", "goitre and thyroid nodules"),
]


def _slice(tmp_path: Path) -> Path:
    path = tmp_path / "hpo-slice.tsv"
    path.write_text(SLICE)
    return path


def _records(count: int, prefix: str = "doc") -> list[dict[str, object]]:
    return [
        {"id": f"{prefix}-{i}", "text": f"case {i}: {FINDINGS[i % 4][1]}",
         "labels": [FINDINGS[i % 4][0]]}
        for i in range(count)
    ]


def _jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _import(tmp_path: Path, *source: str, out: str = "corpus") -> int:
    return main(["data", "import", *source, "--hierarchy", str(_slice(tmp_path)),
                 "--out", str(tmp_path / out)])


def test_a_jsonl_directory_keeps_its_splits_and_adds_every_dag_ancestor(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for split in SPLITS:
        _jsonl(source / f"{split}.jsonl", _records(4, split))
    assert _import(tmp_path, "--jsonl", str(source)) == 0
    corpus = load_corpus_dir(tmp_path / "corpus")
    assert [d.id for d in corpus.splits["dev"]] == [f"dev-{i}" for i in range(4)]
    thymus = corpus.splits["train"][0]
    assert set(thymus.labels) == THYMUS_ANCESTORS | {"HP:0010515"}
    assert corpus.hierarchy.label_counts() == [1, 3, 4, 3] and not corpus.synthetic


def test_one_jsonl_file_is_split_by_a_hash_of_the_id_and_the_seed(tmp_path: Path) -> None:
    source = _jsonl(tmp_path / "all.jsonl", _records(60))
    assert _import(tmp_path, "--jsonl", str(source)) == 0
    assert _import(tmp_path, "--jsonl", str(source), out="again") == 0
    assert main(["data", "import", "--jsonl", str(source), "--hierarchy",
                 str(tmp_path / "hpo-slice.tsv"), "--seed", "7", "--out",
                 str(tmp_path / "seven")]) == 0
    ids = {name: {s: [d.id for d in docs] for s, docs in
                  load_corpus_dir(tmp_path / name).splits.items()}
           for name in ("corpus", "again", "seven")}
    assert ids["corpus"] == ids["again"] and ids["corpus"] != ids["seven"]
    assert sum(len(v) for v in ids["corpus"].values()) == 60


def test_csv_with_other_field_names_and_a_label_separator(tmp_path: Path) -> None:
    source = tmp_path / "all.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "note", "codes"])
        for i in range(60):
            writer.writerow([f"c{i}", FINDINGS[i % 4][1], f"{FINDINGS[i % 4][0]}|HP:0000820"])
    assert main(["data", "import", "--csv", str(source), "--hierarchy",
                 str(_slice(tmp_path)), "--text-field", "note", "--labels-field", "codes",
                 "--id-field", "case", "--label-separator", "|",
                 "--out", str(tmp_path / "corpus")]) == 0
    docs = {d.id: d for split in load_corpus_dir(tmp_path / "corpus").splits.values()
            for d in split}
    assert set(docs) == {f"c{i}" for i in range(60)}
    assert {"HP:0010515", "HP:0000820", "HP:0000118"} <= set(docs["c0"].labels)


def test_jsonl_with_other_field_names(tmp_path: Path) -> None:
    records = [{"pmid": r["id"], "abstract": r["text"], "mesh": r["labels"]}
               for r in _records(60)]
    source = _jsonl(tmp_path / "all.jsonl", records)
    assert main(["data", "import", "--jsonl", str(source), "--hierarchy",
                 str(_slice(tmp_path)), "--text-field", "abstract", "--labels-field", "mesh",
                 "--id-field", "pmid", "--out", str(tmp_path / "corpus")]) == 0
    corpus = load_corpus_dir(tmp_path / "corpus")
    assert {d.id for s in corpus.splits.values() for d in s} == {f"doc-{i}" for i in range(60)}


def test_the_load_report_is_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = _records(60)
    records[3]["labels"] = ["HP:9999999"]  # not in the slice: the document has no label left
    assert _import(tmp_path, "--jsonl", str(_jsonl(tmp_path / "all.jsonl", records))) == 0
    out = capsys.readouterr().out
    assert "Corpus (real data)" in out
    assert "dropped 1 occurrences of 1 labels not in the hierarchy" in out


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_missing_field_names_the_file_and_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = _records(60)
    del records[2]["text"]
    source = _jsonl(tmp_path / "all.jsonl", records)
    err = _refused(["data", "import", "--jsonl", str(source), "--hierarchy",
                    str(_slice(tmp_path)), "--out", str(tmp_path / "corpus")], capsys)
    assert f"{source}:3: missing text field 'text'" in err
    assert not (tmp_path / "corpus").exists()


def test_an_unknown_hierarchy_is_refused_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _jsonl(tmp_path / "all.jsonl", _records(60))
    err = _refused(["data", "import", "--jsonl", str(source), "--hierarchy", "mesh",
                    "--out", str(tmp_path / "corpus")], capsys)
    assert err.startswith("hiersearch: error: --hierarchy: 'mesh' is neither")
    assert not (tmp_path / "corpus").exists()


def test_a_directory_hiersearch_did_not_write_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "notes"
    out.mkdir()
    (out / "train.jsonl").write_text("mine\n")
    source = _jsonl(tmp_path / "all.jsonl", _records(60))
    err = _refused(["data", "import", "--jsonl", str(source), "--hierarchy",
                    str(_slice(tmp_path)), "--out", str(out)], capsys)
    assert "is not a corpus directory written by hiersearch" in err
    assert [p.name for p in out.iterdir()] == ["train.jsonl"]
    assert (out / "train.jsonl").read_text() == "mine\n"


def test_an_imported_corpus_is_accepted_by_a_search(tmp_path: Path) -> None:
    from hiersearch.search.preflight import plan_data, prepare_data
    from hiersearch.search.space import fixed_points, load_space

    assert _import(tmp_path, "--jsonl", str(_jsonl(tmp_path / "all.jsonl", _records(60)))) == 0
    space_file = tmp_path / "space.yaml"
    space_file.write_text(
        "# Launch: hiersearch search --space space.yaml\nname: imported\n"
        f"data: {{corpus: {tmp_path / 'corpus'}}}\n"
        "trial: {model: 'tiny:4x16', max_length: 16, epochs: 1, util_docs: 0}\n"
        "assignment: {space: variants}\ntune: {algorithm: grid}\n"
    )
    space = load_space(str(space_file))
    base = space.base_config()
    plan = plan_data(space, base, None, str(tmp_path / "unused"))
    assert len(fixed_points(space, plan.num_layers, plan.label_counts)) == 5
    data = prepare_data(space, base, None, str(tmp_path / "unused"), plan)
    assert data.label_counts == [1, 3, 4, 3] and not data.synthetic
    assert Path(data.encoded_path).is_dir()


def test_empty_and_whitespace_texts_are_dropped_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for split in SPLITS:
        records = _records(4, split)
        records[1]["text"], records[2]["text"] = "", "  \n "
        _jsonl(source / f"{split}.jsonl", records)
    assert _import(tmp_path, "--jsonl", str(source)) == 0
    out = capsys.readouterr().out
    assert ("dropped 6 documents whose text is empty or only whitespace (train 2, dev 2, "
            "test 2); e.g. train-1, train-2, dev-1, dev-2, test-1") in out
    corpus = load_corpus_dir(tmp_path / "corpus")
    assert {s: [d.id for d in docs] for s, docs in corpus.splits.items()} == {
        s: [f"{s}-0", f"{s}-3"] for s in SPLITS
    }


def _cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hiersearch.cli", *argv],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def _contents(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_split_left_without_text_is_refused_and_nothing_written(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for split in SPLITS:
        records = _records(3, split)
        if split == "dev":
            records = [{**r, "text": " "} for r in records]
        _jsonl(source / f"{split}.jsonl", records)
    done = _cli("data", "import", "--jsonl", str(source), "--hierarchy",
                str(_slice(tmp_path)), "--out", str(tmp_path / "corpus"))
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "the dev split has no labelled documents (dropped: 3 with an empty text)" in done.stderr
    assert not (tmp_path / "corpus").exists()


@pytest.mark.parametrize("name", ["same path", "symlink"])
def test_importing_a_corpus_onto_itself_is_refused_and_it_is_kept(
    tmp_path: Path, name: str
) -> None:
    assert _import(tmp_path, "--jsonl", str(_jsonl(tmp_path / "all.jsonl", _records(60)))) == 0
    corpus = tmp_path / "corpus"
    before = _contents(corpus)
    source = corpus if name == "same path" else tmp_path / "link"
    if name == "symlink":
        source.symlink_to(corpus)
    done = _cli("data", "import", "--jsonl", str(source), "--hierarchy",
                str(_slice(tmp_path)), "--out", str(corpus))
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"hiersearch: error: --out: {corpus / 'train.jsonl'} is the same file as --jsonl "
        f"{source / 'train.jsonl'}; writing it would replace the input (choose another --out)\n"
    )
    assert _contents(corpus) == before


def test_a_hierarchy_file_the_corpus_would_replace_is_refused(tmp_path: Path) -> None:
    assert _import(tmp_path, "--jsonl", str(_jsonl(tmp_path / "all.jsonl", _records(60)))) == 0
    corpus = tmp_path / "corpus"
    before = _contents(corpus)
    done = _cli("data", "import", "--jsonl", str(tmp_path / "all.jsonl"), "--hierarchy",
                "hierarchy.json", "--out", "../corpus", cwd=corpus)
    assert done.returncode == 2, done.stderr
    assert ("--out: ../corpus/hierarchy.json is the same file as --hierarchy hierarchy.json"
            in done.stderr)
    assert _contents(corpus) == before
