"""Bad `data synth` options and output directories: one error line naming the option or
directory, exit 2, no traceback, and nothing of the user's overwritten or left half-written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from refusals import _corpus, _refused, _unwritable

from hiersearch.cli import main


def _tree(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_text() for p in files}


def test_synth_onto_an_existing_other_directory_leaves_it_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "thesis"
    target.mkdir()
    (target / "chapter1.tex").write_text("precious\n")
    line = _refused(
        ["data", "synth", "--docs", "10", "--max-leaves", "5", "--out", str(target)], capsys
    )
    assert str(target) in line and "not a corpus directory" in line
    assert [p.name for p in target.iterdir()] == ["chapter1.tex"]
    assert (target / "chapter1.tex").read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]  # no temp dir left


def test_synth_over_its_own_corpus_keeps_every_other_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "corpus"
    synth = ["data", "synth", "--docs", "12", "--max-leaves", "5", "--out", str(out)]
    assert main(synth) == 0
    (out / "notes.md").write_text("my notes\n")
    cache = out / ".hiersearch-cache" / "encoded-x"
    cache.mkdir(parents=True)
    (cache / "meta.json").write_text("{}")
    assert main([*synth[:-2], "--seed", "3", "--out", str(out)]) == 0
    assert (out / "notes.md").read_text() == "my notes\n"
    assert (cache / "meta.json").read_text() == "{}"
    assert json.loads((out / "corpus.json").read_text())["generator"]["config"]["seed"] == 3
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_synth_refuses_a_directory_holding_a_corpus_hiersearch_did_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a user's own corpus with a corpus.json of its own: its train.jsonl is not hiersearch's
    corpus = _corpus(tmp_path / "mine")
    (corpus / "corpus.json").write_text('{"synthetic": false}\n')
    before = _tree(corpus)
    line = _refused(["data", "synth", "--docs", "12", "--out", str(corpus)], capsys)
    assert str(corpus) in line and "not a corpus directory written by hiersearch" in line
    assert _tree(corpus) == before


def test_synth_out_under_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("x")
    line = _refused(["data", "synth", "--docs", "12", "--out", str(tmp_path / "afile" / "c")],
                    capsys)
    assert "not a directory" in line and str(tmp_path / "afile") in line


def test_synth_out_not_writable_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = _unwritable(tmp_path)
    line = _refused(["data", "synth", "--docs", "12", "--out", str(locked / "c")], capsys)
    assert str(locked / "c") in line and "cannot write" in line


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--seed", "-1"], "--seed: must be >= 0"),
        (["--max-leaves", "0"], "--max-leaves: must be >= 1"),
    ],
)
def test_synth_options_are_named_as_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], named: str
) -> None:
    line = _refused(["data", "synth", "--docs", "12", *options, "--out", str(tmp_path / "c")],
                    capsys)
    assert named in line and not (tmp_path / "c").exists()


def test_synth_interrupted_does_not_suggest_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import hiersearch.data.synth

    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(hiersearch.data.synth, "synthesize", interrupted)
    assert main(["data", "synth", "--docs", "12", "--out", str(tmp_path / "c")]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" not in err
