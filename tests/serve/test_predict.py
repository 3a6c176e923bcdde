"""`hiersearch predict` with a fake exported model: input formats, ids, label selection, levels,
the output schema, atomic output and bad input. The real model is tested in test_model.py."""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from hiersearch.data.hierarchy import Hierarchy, Node
from hiersearch.errors import InputError
from hiersearch.serve import predict as P

LEVEL_SIZES = (3, 4, 6)
THRESHOLDS = [0.5, 0.4, 0.3]  # the fake export's tuned thresholds, per level


def _parents(level: int, column: int) -> tuple[str, ...]:
    """L2-c's parent is L1-(c mod 3); L3-c's is L2-(c mod 4), and L3-5 also has L2-0."""
    if level == 1:
        return ()
    above = f"L{level - 1}-{column % LEVEL_SIZES[level - 2]}"
    return (above, "L2-0") if (level, column) == (3, 5) else (above,)


class FakeModel:
    """Deterministic scores from the text; records what it was asked to score."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.label_index = [[f"L{n + 1}-{c}" for c in range(k)] for n, k in enumerate(LEVEL_SIZES)]
        self.descriptions = [[f"label {i}" for i in index] for index in self.label_index]
        self.max_length = 16
        self.calls: list[tuple[int, list[int]]] = []
        self.fail_after = fail_after
        self.thresholds: list[float] | None = list(THRESHOLDS)
        self.directory = Path("fake-model")

    @property
    def num_levels(self) -> int:
        return len(LEVEL_SIZES)

    def hierarchy(self) -> Hierarchy:
        return Hierarchy(
            Node(label, "", _parents(n, c), n)
            for n, index in enumerate(self.label_index, start=1)
            for c, label in enumerate(index)
        )

    def scores(
        self, texts: Sequence[str], levels: Sequence[int] | None = None, batch_size: int = 32
    ) -> list[np.ndarray]:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("boom")
        levels = list(levels or range(1, self.num_levels + 1))
        self.calls.append((len(texts), levels))
        return [
            np.stack([fake_scores(t, level) for t in texts]).astype(np.float32) for level in levels
        ]


def fake_scores(text: str, level: int) -> np.ndarray:
    digest = hashlib.sha256(f"{level}\x00{text}".encode()).digest()
    return np.frombuffer(digest[: LEVEL_SIZES[level - 1]], dtype=np.uint8) / 256.0 + 1e-3


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> FakeModel:
    fake = FakeModel()
    monkeypatch.setattr(P, "load_model", lambda _dir, _device: fake)
    return fake


def run(source: str | Path, out: Path | None = None, **options: object) -> int:
    args = {"top_k": None, "threshold": None, "levels": None, "batch_size": 2, "device": "cpu",
            "consistency": None}
    args.update(options)
    return P.run_predict(
        "model",
        str(source),
        None if out is None else str(out),
        **args,  # type: ignore[arg-type]
    )


def read_out(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


DOCS = [{"id": "a", "text": "first"}, {"text": "second"}, {"id": 7, "text": "third"}]


# -- input formats and ids --------------------------------------------------------------------
def test_jsonl_ids_fall_back_to_stem_and_line(model: FakeModel, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    assert run(src, tmp_path / "p.jsonl") == 0
    assert [r["id"] for r in read_out(tmp_path / "p.jsonl")] == ["a", "docs:2", "7"]


def test_jsonl_accepts_the_eurlex_id_field_and_skips_blank_lines(
    model: FakeModel, tmp_path: Path
) -> None:
    src = tmp_path / "eur.jsonl"
    src.write_text('{"celex_id": "32010R0001", "text": "x"}\n\n{"text": "y"}\n', encoding="utf-8")
    run(src, tmp_path / "p.jsonl")
    assert [r["id"] for r in read_out(tmp_path / "p.jsonl")] == ["32010R0001", "eur:3"]


def test_csv_reads_text_and_optional_id_like_the_loader(model: FakeModel, tmp_path: Path) -> None:
    src = tmp_path / "docs.csv"
    src.write_text('id,text\nx1,"a, quoted\nmulti-line text"\n,plain\n', encoding="utf-8")
    run(src, tmp_path / "p.jsonl")
    rows = read_out(tmp_path / "p.jsonl")
    assert [r["id"] for r in rows] == ["x1", "docs:3"]
    # the same text gives the same scores as through JSONL
    top = rows[0]["levels"][0]["labels"][0]["score"]
    assert top == pytest.approx(float(fake_scores("a, quoted\nmulti-line text", 1).max()))


def test_csv_without_id_column_numbers_rows_from_two(model: FakeModel, tmp_path: Path) -> None:
    src = tmp_path / "plain.csv"
    src.write_text("text,other\nhello,1\nworld,2\n", encoding="utf-8")
    run(src, tmp_path / "p.jsonl")
    assert [r["id"] for r in read_out(tmp_path / "p.jsonl")] == ["plain:2", "plain:3"]


def test_stdin_is_jsonl_with_stdin_ids(
    model: FakeModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('{"text": "one"}\n{"id": "b", "text": "two"}\n'))
    run("-", tmp_path / "p.jsonl")
    assert [r["id"] for r in read_out(tmp_path / "p.jsonl")] == ["stdin:1", "b"]


def test_stdout_gets_one_line_per_document(
    model: FakeModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(write_jsonl(tmp_path / "d.jsonl", DOCS))
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "d:2", "7"]


# -- the output schema and label selection ----------------------------------------------------
def test_schema_fields_and_order(model: FakeModel, tmp_path: Path) -> None:
    run(write_jsonl(tmp_path / "d.jsonl", DOCS[:1]), tmp_path / "p.jsonl")
    (row,) = read_out(tmp_path / "p.jsonl")
    assert list(row) == ["id", "levels"]
    assert [lv["level"] for lv in row["levels"]] == [1, 2, 3]
    label = row["levels"][1]["labels"][0]
    assert list(label) == ["id", "score", "description"]
    assert label["description"] == f"label {label['id']}"


def test_labels_sorted_by_score_with_full_precision(model: FakeModel, tmp_path: Path) -> None:
    run(write_jsonl(tmp_path / "d.jsonl", DOCS[:1]), tmp_path / "p.jsonl", top_k=10)
    (row,) = read_out(tmp_path / "p.jsonl")
    for level in row["levels"]:
        expected = fake_scores("first", level["level"]).astype(np.float32)
        scores = [lab["score"] for lab in level["labels"]]
        assert scores == sorted(scores, reverse=True)
        # float32 -> float -> JSON round-trips exactly: metrics can be recomputed from it
        by_id = {lab["id"]: lab["score"] for lab in level["labels"]}
        index = model.label_index[level["level"] - 1]
        assert [by_id[i] for i in index] == [float(s) for s in expected]


def _raw_sets(text: str) -> dict[int, set[str]]:
    """The thresholded label sets of a document, before the hierarchy rule."""
    return {
        n: {f"L{n}-{c}" for c in np.flatnonzero(fake_scores(text, n) >= THRESHOLDS[n - 1])}
        for n in (1, 2, 3)
    }


def _sets(row: dict) -> dict[int, set[str]]:
    return {lv["level"]: {lab["id"] for lab in lv["labels"]} for lv in row["levels"]}


def _has_a_parent(label: str, sets: dict[int, set[str]]) -> bool:
    level, column = (int(x) for x in label[1:].split("-"))
    return level == 1 or any(p in sets[level - 1] for p in _parents(level, column))


MANY = [{"id": str(i), "text": f"document {i}"} for i in range(40)]


def test_default_is_the_tuned_label_sets_with_children_of_missing_parents_dropped(
    model: FakeModel, tmp_path: Path
) -> None:
    run(write_jsonl(tmp_path / "d.jsonl", MANY), tmp_path / "p.jsonl")
    orphans = deepest = 0
    for row, doc in zip(read_out(tmp_path / "p.jsonl"), MANY, strict=True):
        got, raw = _sets(row), _raw_sets(doc["text"])
        assert all(got[n] <= raw[n] for n in got)  # only labels at or above their threshold
        assert all(_has_a_parent(label, got) for labels in got.values() for label in labels)
        orphans += sum(len(raw[n] - got[n]) for n in raw)
        deepest += len(got[3])
        assert not any("added" in lab for lv in row["levels"] for lab in lv["labels"])
    assert orphans and deepest  # the rule dropped some labels, and kept some at level 3


def test_consistency_add_brings_missing_parents_marked_added(
    model: FakeModel, tmp_path: Path
) -> None:
    run(write_jsonl(tmp_path / "d.jsonl", MANY), tmp_path / "p.jsonl", consistency="add")
    added = 0
    for row, doc in zip(read_out(tmp_path / "p.jsonl"), MANY, strict=True):
        got, raw = _sets(row), _raw_sets(doc["text"])
        assert all(raw[n] <= got[n] for n in got)  # nothing thresholded is lost
        assert all(_has_a_parent(label, got) for labels in got.values() for label in labels)
        for level in row["levels"]:
            for lab in level["labels"]:
                below = lab["score"] < THRESHOLDS[level["level"] - 1]
                assert lab.get("added", False) == below
                added += below
    assert added


def test_consistency_none_keeps_the_thresholded_sets(model: FakeModel, tmp_path: Path) -> None:
    run(write_jsonl(tmp_path / "d.jsonl", MANY), tmp_path / "p.jsonl", consistency="none")
    for row, doc in zip(read_out(tmp_path / "p.jsonl"), MANY, strict=True):
        assert _sets(row) == _raw_sets(doc["text"])


def test_a_model_without_tuned_thresholds_needs_top_k_or_threshold(
    model: FakeModel, tmp_path: Path
) -> None:
    model.thresholds = None
    src = write_jsonl(tmp_path / "d.jsonl", DOCS)
    with pytest.raises(InputError, match=r"model\.json: has no F1 thresholds.*--top-k"):
        run(src, tmp_path / "p.jsonl")
    assert not (tmp_path / "p.jsonl").exists()
    assert run(src, tmp_path / "p.jsonl", top_k=2) == 0


def test_top_k_keeps_the_k_best(model: FakeModel, tmp_path: Path) -> None:
    run(write_jsonl(tmp_path / "d.jsonl", DOCS[:1]), tmp_path / "p.jsonl", top_k=2)
    (row,) = read_out(tmp_path / "p.jsonl")
    level3 = fake_scores("first", 3)
    assert [lab["score"] for lab in row["levels"][2]["labels"]] == pytest.approx(
        sorted(level3, reverse=True)[:2]
    )


def test_top_k_ranks_labels_whatever_their_parents(model: FakeModel, tmp_path: Path) -> None:
    run(write_jsonl(tmp_path / "d.jsonl", MANY), tmp_path / "p.jsonl", top_k=3)
    rows = read_out(tmp_path / "p.jsonl")
    assert all([len(lv["labels"]) for lv in row["levels"]] == [3, 3, 3] for row in rows)
    assert not all(_has_a_parent(lab["id"], _sets(row)) for row in rows
                   for lv in row["levels"] for lab in lv["labels"])


def test_threshold_keeps_every_label_at_or_above_it(model: FakeModel, tmp_path: Path) -> None:
    run(write_jsonl(tmp_path / "d.jsonl", DOCS), tmp_path / "p.jsonl", threshold=0.5,
        consistency="none")
    for row, doc in zip(read_out(tmp_path / "p.jsonl"), DOCS, strict=True):
        for level in row["levels"]:
            expected = int((fake_scores(doc["text"], level["level"]) >= 0.5).sum())
            assert len(level["labels"]) == expected
            assert all(lab["score"] >= 0.5 for lab in level["labels"])


def test_select_with_both_options_keeps_at_most_k_above_threshold() -> None:
    scores = np.array([0.2, 0.9, 0.6, 0.7, 0.9], dtype=np.float32)
    assert P.select(scores, P.Selection(2, 0.65)).tolist() == [1, 4]
    assert P.select(scores, P.Selection(None, 0.95)).tolist() == []


# -- levels and streaming ---------------------------------------------------------------------
def test_one_threshold_for_every_level_is_made_consistent_too(
    model: FakeModel, tmp_path: Path
) -> None:
    run(write_jsonl(tmp_path / "d.jsonl", MANY), tmp_path / "p.jsonl", threshold=0.2)
    for row in read_out(tmp_path / "p.jsonl"):
        got = _sets(row)
        assert all(lab["score"] >= 0.2 for lv in row["levels"] for lab in lv["labels"])
        assert all(_has_a_parent(label, got) for labels in got.values() for label in labels)


def test_the_rule_starts_at_the_first_level_asked_for(model: FakeModel, tmp_path: Path) -> None:
    run(write_jsonl(tmp_path / "d.jsonl", MANY), tmp_path / "p.jsonl", levels=(2, 3))
    for row, doc in zip(read_out(tmp_path / "p.jsonl"), MANY, strict=True):
        got, raw = _sets(row), _raw_sets(doc["text"])
        assert got[2] == raw[2]  # level 1 is not asked for: level 2 has no parents here
        assert got[3] == {label for label in raw[3]
                          if set(_parents(3, int(label.split("-")[1]))) & got[2]}


def test_level_range_scores_only_those_levels(model: FakeModel, tmp_path: Path) -> None:
    run(write_jsonl(tmp_path / "d.jsonl", DOCS), tmp_path / "p.jsonl", levels=(1, 2))
    assert all(levels == [1, 2] for _, levels in model.calls)
    for row in read_out(tmp_path / "p.jsonl"):
        assert [lv["level"] for lv in row["levels"]] == [1, 2]


def test_single_level(model: FakeModel, tmp_path: Path) -> None:
    run(write_jsonl(tmp_path / "d.jsonl", DOCS), tmp_path / "p.jsonl", levels=(3, 3))
    assert [lv["level"] for lv in read_out(tmp_path / "p.jsonl")[0]["levels"]] == [3]


def test_documents_are_scored_a_window_of_batches_at_a_time(
    model: FakeModel, tmp_path: Path
) -> None:
    # the model sorts each window by length into batches: memory grows with the window only
    rows = [{"text": f"doc {i}"} for i in range(3 * P.SORT_WINDOW + 2)]
    run(write_jsonl(tmp_path / "d.jsonl", rows), tmp_path / "p.jsonl", batch_size=3)
    assert [n for n, _ in model.calls] == [3 * P.SORT_WINDOW, 2]
    ids = [r["id"] for r in read_out(tmp_path / "p.jsonl")]
    assert ids == [f"d:{i + 1}" for i in range(len(rows))]


# -- atomic output ----------------------------------------------------------------------------
def test_out_failure_midway_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(P, "load_model", lambda _dir, _device: FakeModel(fail_after=1))
    rows = [{"text": f"doc {i}"} for i in range(P.SORT_WINDOW + 1)]  # the second window fails
    with pytest.raises(RuntimeError):
        run(write_jsonl(tmp_path / "d.jsonl", rows), tmp_path / "p.jsonl", batch_size=1)
    assert list(tmp_path.iterdir()) == [tmp_path / "d.jsonl"]


def test_bad_line_late_in_input_leaves_the_old_output_intact(
    model: FakeModel, tmp_path: Path
) -> None:
    src = tmp_path / "d.jsonl"
    src.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"}\nnot json\n', encoding="utf-8")
    (tmp_path / "p.jsonl").write_text("old\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"d\.jsonl:4"):
        run(src, tmp_path / "p.jsonl")
    assert (tmp_path / "p.jsonl").read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "p.jsonl"]


# -- bad input: file and line -----------------------------------------------------------------
def test_missing_file_names_it(model: FakeModel, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.jsonl: cannot read"):
        run(tmp_path / "nope.jsonl")


def test_unknown_extension_names_the_file(model: FakeModel, tmp_path: Path) -> None:
    (tmp_path / "docs.txt").write_text("hello\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"docs\.txt: unknown input format '\.txt'"):
        run(tmp_path / "docs.txt")


def test_malformed_json_names_the_line(model: FakeModel, tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    src.write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(InputError, match=r"d\.jsonl:2: invalid JSON"):
        run(src)


def test_non_object_line_names_the_line(model: FakeModel, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"d\.jsonl:2: expected a JSON object"):
        run(write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, ["text"]]))


def test_line_without_text_names_the_line(model: FakeModel, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"d\.jsonl:3: missing text field 'text'"):
        run(write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "b"}, {"body": "c"}]))


def test_non_string_text_names_the_line(model: FakeModel, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"d\.jsonl:1: missing text field"):
        run(write_jsonl(tmp_path / "d.jsonl", [{"text": 5}]))


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("d.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": "\xff\xfe"}\n'),
        ("d.csv", b"text\nok\n\xff bad\n"),
    ],
)
def test_invalid_utf8_names_the_line(
    model: FakeModel, tmp_path: Path, name: str, data: bytes
) -> None:
    (tmp_path / name).write_bytes(data)
    with pytest.raises(InputError, match=rf"{re.escape(name)}:3: invalid UTF-8"):
        run(tmp_path / name)


def test_csv_without_text_column_names_the_header(model: FakeModel, tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("id,body\n1,x\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"d\.csv:1: missing column 'text'"):
        run(tmp_path / "d.csv")


def test_csv_short_row_names_the_line(model: FakeModel, tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("id,text\n1,x\n2\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"d\.csv:3: expected 2 cells, got 1"):
        run(tmp_path / "d.csv")


def test_bad_stdin_line_names_stdin(model: FakeModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('{"text": "a"}\n{oops}\n'))
    with pytest.raises(InputError, match=r"<stdin>:2: invalid JSON"):
        run("-")


# -- bad options, before the model loads ------------------------------------------------------
@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(_dir: str, _device: str) -> FakeModel:
        raise AssertionError("the model must not load before the options are checked")

    monkeypatch.setattr(P, "load_model", fail)


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({"top_k": 0}, "--top-k"),
        ({"threshold": 0.0}, "--threshold"),
        ({"threshold": 1.0}, "--threshold"),
        ({"batch_size": 0}, "--batch-size"),
        ({"device": "tpu"}, "--device"),
        ({"consistency": "keep"}, "--consistency"),
        ({"consistency": "drop", "top_k": 3}, "--consistency"),
    ],
)
def test_bad_option_is_named_before_loading(
    no_model: None, tmp_path: Path, options: dict, where: str
) -> None:
    src = write_jsonl(tmp_path / "d.jsonl", DOCS)
    with pytest.raises(InputError) as err:
        run(src, **options)
    assert err.value.where == where


def test_cuda_without_a_gpu_is_a_device_error(
    no_model: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="--device: CUDA is not available"):
        run(write_jsonl(tmp_path / "d.jsonl", DOCS), device="cuda")


def test_missing_input_is_reported_before_loading(no_model: None, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        run(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("levels", [(0, 1), (2, 1), (1, 4)])
def test_levels_outside_the_model_are_named(
    model: FakeModel, tmp_path: Path, levels: tuple[int, int]
) -> None:
    with pytest.raises(InputError, match=r"--levels: expected A-B with 1 <= A <= B <= 3"):
        run(write_jsonl(tmp_path / "d.jsonl", DOCS), tmp_path / "p.jsonl", levels=levels)
    assert not (tmp_path / "p.jsonl").exists()


def test_out_that_is_a_directory_is_named(no_model: None, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--out: is a directory"):
        run(write_jsonl(tmp_path / "d.jsonl", DOCS), tmp_path)
