"""Bad corpus and hierarchy files through `data stats`, `search --data` and `reproduce --data`:
one error line naming the file and line, exit 2, no traceback, refused before Ray starts (the
`no_ray` tripwire); and the load report of the labels and documents dropped. Loaders the
command line does not reach (CSV, EURLEX57K, MIMIC-III) are tested in test_corpus.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from refusals import DOCS, HIERARCHY, _corpus, _refused, _space, _unwritable

from hiersearch.cli import main


def test_malformed_jsonl_line_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _corpus(tmp_path / "c")
    with (corpus / "train.jsonl").open("a") as handle:
        handle.write('{"id": "t4", "text": "beta", "labels": ["b1"]\n')  # no closing brace
    line = _refused(["data", "stats", str(corpus)], capsys)
    assert f"{corpus / 'train.jsonl'}:4" in line and "invalid JSON" in line


def test_missing_text_field_names_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _corpus(tmp_path / "c")
    (corpus / "dev.jsonl").write_text(
        '{"id": "d1", "text": "alpha", "labels": ["a"]}\n{"id": "d2", "labels": ["b"]}\n'
    )
    line = _refused(["data", "stats", str(corpus)], capsys)
    assert f"{corpus / 'dev.jsonl'}:2" in line and "'text'" in line


def test_empty_corpus_names_the_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _corpus(tmp_path / "c")
    for split in DOCS:
        (corpus / f"{split}.jsonl").write_text("")
    line = _refused(["data", "stats", str(corpus)], capsys)
    assert str(corpus) in line and "no documents" in line


def test_labels_all_unknown_names_the_directory_and_examples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _corpus(tmp_path / "c")
    for split, docs in DOCS.items():
        lines = [json.dumps({"id": i, "text": t, "labels": ["zz9"]}) for i, t, _ in docs]
        (corpus / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    line = _refused(["data", "stats", str(corpus)], capsys)
    assert str(corpus) in line and "none of the 1 distinct labels" in line and "zz9" in line


def test_hierarchy_cycle_names_the_file_and_its_nodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _corpus(tmp_path / "c")
    nodes = [
        {"id": "r", "description": "root", "parents": [], "level": 1},
        {"id": "x", "description": "x", "parents": ["y"], "level": 2},
        {"id": "y", "description": "y", "parents": ["x"], "level": 2},
    ]
    (corpus / "hierarchy.json").write_text(json.dumps({"name": "loop", "nodes": nodes}))
    line = _refused(["data", "stats", str(corpus)], capsys)
    assert str(corpus / "hierarchy.json") in line and "cycle" in line
    assert line.endswith("x -> y -> x")


def test_invalid_utf8_in_a_corpus_names_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _corpus(tmp_path / "c")
    with (corpus / "dev.jsonl").open("ab") as handle:
        handle.write(b'{"id": "d3", "text": "caf\xe9", "labels": ["a"]}\n')
    line = _refused(["data", "stats", str(corpus)], capsys)
    assert f"{corpus / 'dev.jsonl'}:3: invalid UTF-8 (byte 26 of the line)" in line


def test_invalid_utf8_in_a_hierarchy_file_names_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _corpus(tmp_path / "c")
    text = json.dumps(HIERARCHY, indent=1).encode().replace(b"alpha one", b"alpha \xff")
    (corpus / "hierarchy.json").write_bytes(text)
    line = _refused(["data", "stats", str(corpus)], capsys)
    line_no = text[: text.index(b"\xff")].count(b"\n") + 1
    assert f"{corpus / 'hierarchy.json'}:{line_no}: invalid UTF-8" in line


def test_malformed_corpus_given_to_search_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    corpus = _corpus(tmp_path / "c")
    (corpus / "test.jsonl").write_text('{"id": "s1", "text": 7, "labels": ["a"]}\n')
    storage = tmp_path / "runs"
    line = _refused(
        ["search", "--space", str(_space(tmp_path)), "--data", str(corpus),
         "--storage", str(storage)],
        capsys,
    )
    assert f"{corpus / 'test.jsonl'}:1" in line
    assert no_ray == [] and not storage.exists()


def test_malformed_corpus_given_to_reproduce_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    corpus = _corpus(tmp_path / "c")
    (corpus / "hierarchy.json").write_text('{"name": "toy", "nodes": [\n  {"id": }\n]}')
    storage = tmp_path / "runs"
    line = _refused(
        ["reproduce", "--preset", "smoke", "--data", str(corpus), "--storage", str(storage)],
        capsys,
    )
    assert f"{corpus / 'hierarchy.json'}:2" in line
    assert no_ray == [] and not storage.exists()


def test_data_stats_reports_dropped_labels_and_documents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _corpus(tmp_path / "c")
    with (corpus / "train.jsonl").open("a") as handle:
        handle.write(json.dumps({"id": "t9", "text": "x", "labels": ["zz1", "zz2"]}) + "\n")
        handle.write(json.dumps({"id": "t10", "text": "y", "labels": ["a", "zz1"]}) + "\n")
    assert main(["data", "stats", str(corpus)]) == 0
    out = capsys.readouterr().out
    assert "3 occurrences of 2 labels not in the hierarchy" in out and "zz1 (2)" in out
    assert "dropped 1 documents" in out and "e.g. t9" in out
    assert main(["data", "stats", str(corpus), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["load_report"]
    assert report["unknown_labels"] == {"zz1": 2, "zz2": 1}
    assert report["dropped_examples"] == {"train": ["t9"]}


def test_data_stats_says_when_nothing_was_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "stats", str(_corpus(tmp_path / "c"))]) == 0
    assert "load report: all labels known; no document dropped" in capsys.readouterr().out


def test_search_prints_the_load_report_of_its_corpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    corpus = _corpus(tmp_path / "c")
    with (corpus / "dev.jsonl").open("a") as handle:
        handle.write(json.dumps({"id": "d9", "text": "x", "labels": ["zz1"]}) + "\n")
    with pytest.raises(AssertionError, match="Ray would start"):
        main(["search", "--space", str(_space(tmp_path)), "--data", str(corpus),
              "--storage", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert "load report: dropped 1 occurrences of 1 labels" in out and "zz1 (1)" in out
    assert "load report: dropped 1 documents left without a known label (dev 1); e.g. d9" in out


def test_unwritable_data_root_for_a_synthetic_corpus_is_refused_before_ray(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_ray: list[str | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HIERSEARCH_DATA", str(_unwritable(tmp_path) / "data"))
    space = _space(tmp_path, data={"docs": 12, "max_leaves": 5})
    line = _refused(["search", "--space", str(space), "--storage", str(tmp_path / "r")], capsys)
    assert line.startswith("hiersearch: error: HIERSEARCH_DATA: cannot write") and no_ray == []
