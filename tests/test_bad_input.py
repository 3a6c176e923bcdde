"""Bad input through the command line: exit code 2, one line naming the file, line, option or
key, no traceback, nothing partially written, and never a Ray start.

`reproduce` and `search` are run in-process with `hiersearch.search.run.connect` replaced by a
tripwire: a test passes only if the bad input is refused before Ray would start. Loaders that
the command line does not reach (CSV, EURLEX57K, MIMIC-III) are tested in test_corpus.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hiersearch.cli import main
from hiersearch.report import results

HIERARCHY = {
    "name": "toy",
    "nodes": [
        {"id": "a", "description": "alpha", "parents": [], "level": 1},
        {"id": "b", "description": "beta", "parents": [], "level": 1},
        {"id": "a1", "description": "alpha one", "parents": ["a"], "level": 2},
        {"id": "b1", "description": "beta one", "parents": ["b"], "level": 2},
    ],
}
DOCS = {
    "train": [("t1", "alpha one", ["a1"]), ("t2", "beta one", ["b1"]), ("t3", "alpha", ["a"])],
    "dev": [("d1", "alpha one", ["a1"]), ("d2", "beta", ["b1"])],
    "test": [("s1", "beta one", ["b1"])],
}
SPACE: dict[str, Any] = {
    "name": "tiny",
    "trial": {
        "model": "tiny:4x16",
        "max_length": 16,
        "epochs": 1,
        "num_workers": 1,
        "cpus_per_worker": 1,
        "util_docs": 0,
    },
    "assignment": {"space": "variants", "variants": ["FLAT", "LAST-TWO"]},
    "tune": {"algorithm": "grid"},
}


def _corpus(directory: Path) -> Path:
    """A valid two-level corpus directory (hand-written: small enough to read in the test)."""
    directory.mkdir(parents=True)
    (directory / "hierarchy.json").write_text(json.dumps(HIERARCHY))
    for split, docs in DOCS.items():
        lines = [json.dumps({"id": i, "text": t, "labels": ls}) for i, t, ls in docs]
        (directory / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return directory


def _space(tmp_path: Path, **sections: Any) -> Path:
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in SPACE.items()}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    path = tmp_path / "space.yaml"
    path.write_text("# Launch: hiersearch search --space space.yaml\n" + yaml.safe_dump(raw))
    return path


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """Replace the Ray start of `run_search` by a tripwire: it records the attempt and stops
    the command there (an AssertionError is not an InputError: the test fails)."""
    import hiersearch.search.run

    attempts: list[str | None] = []

    def tripwire(address: str | None) -> None:
        attempts.append(address)
        raise AssertionError("Ray would start")

    monkeypatch.setattr(hiersearch.search.run, "connect", tripwire)
    return attempts


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect exit 2 with one error line and no traceback; return that line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hiersearch: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --- corpus files, through `data stats` and `search --data` ---------------------------------


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


# --- search-space files and options, refused before Ray starts ------------------------------


def test_level_range_beyond_the_hierarchy_names_range_and_depth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    space = _space(tmp_path, trial={"levels": [1, 3]})
    line = _refused(
        ["search", "--space", str(space), "--data", str(_corpus(tmp_path / "c")),
         "--storage", str(tmp_path / "runs")],
        capsys,
    )
    assert "1..3" in line and "2 levels" in line
    assert no_ray == []


def test_assignment_in_the_trial_section_is_refused_not_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    # a trial's assignment comes from the assignment section; this one (layer 13 of a
    # 4-layer model) would have been silently replaced by the searched variant
    space = _space(tmp_path, trial={"assignment": "L1:13|L2:4"})
    line = _refused(
        ["search", "--space", str(space), "--data", str(_corpus(tmp_path / "c")),
         "--storage", str(tmp_path / "runs")],
        capsys,
    )
    assert f"{space}: trial: assignment" in line
    assert no_ray == []


def test_model_too_shallow_for_the_levels_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    # LAST-TWO needs a layer per level; a 1-layer model cannot host it
    line = _refused(
        ["search", "--space", str(_space(tmp_path)), "--data", str(_corpus(tmp_path / "c")),
         "--model", "tiny:1x16", "--storage", str(tmp_path / "runs")],
        capsys,
    )
    assert "LAST-TWO" in line and "1 layers < 2 levels" in line
    assert no_ray == []


def test_searched_model_of_another_depth_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    space = _space(
        tmp_path, search={"model": {"type": "categorical", "choices": ["tiny:4x16", "tiny:6x16"]}}
    )
    line = _refused(
        ["search", "--space", str(space), "--data", str(_corpus(tmp_path / "c")),
         "--storage", str(tmp_path / "runs")],
        capsys,
    )
    assert f"{space}: search: model" in line and "'tiny:6x16' has 6 layers" in line
    assert no_ray == []


def test_variants_for_more_levels_than_layers_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = _refused(["variants", "--layers", "2", "--levels", "3"], capsys)
    assert "2 layers < 3 levels" in line


@pytest.mark.parametrize(
    ("section", "values", "named"),
    [
        ("trial", {"epoch": 3}, "trial: unknown key 'epoch'"),
        ("trial", {"lr": "fast"}, "trial: lr: expected float, got 'fast'"),
        ("tune", {"worker_failures": -1}, "tune: worker_failures: must be >= 0"),
        ("search", {"dropout": {"type": "uniform", "low": 0.5}}, "search: dropout"),
        (
            "search",
            {"max_length": {"type": "categorical", "choices": [16, 32]}},
            "search: max_length: cannot be searched",
        ),
        ("search", {"batch_size": {"type": "int", "low": 2, "high": 8, "step": 0}},
         "search: batch_size: Optuna refuses this distribution: `step > 0` must hold"),
        ("search", {"batch_size": {"type": "int", "low": 2, "high": 8, "step": -2}},
         "search: batch_size: Optuna refuses"),
        ("search", {"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3, "step": 1e-5}},
         "search: lr: Optuna refuses this distribution: The parameter `step`"),
        ("search", {"batch_size": {"type": "int", "low": 2, "high": 9, "step": 4}},
         "search: batch_size: Optuna refuses this distribution: The distribution"),
        ("search", {"batch_size": {"type": "int", "low": 2.5, "high": 8}},
         "search: batch_size: low: expected an integer, got 2.5"),
        ("tune", {"sampler_seed": -1}, "tune: sampler_seed: must be in 0 .. 2**32 - 1"),
        ("tune", {"sampler_seed": 2**32}, "tune: sampler_seed: must be in 0 .. 2**32 - 1"),
        ("tune", {"max_concurrent": 0}, "tune: max_concurrent: must be >= 1"),
        ("data", {"docs": 2}, "data: docs: must be at least 3"),
        ("data", {"seed": -1}, "data: seed: must be >= 0"),
        ("data", {"hierarchy": "no-such.tsv"}, "data: hierarchy: 'no-such.tsv' is neither"),
    ],
)
def test_space_file_key_errors_name_file_and_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_ray: list[str | None],
    section: str,
    values: dict[str, Any],
    named: str,
) -> None:
    space = _space(tmp_path, **{section: values})
    line = _refused(["search", "--space", str(space), "--storage", str(tmp_path / "r")], capsys)
    assert f"{space}: {named}" in line
    assert no_ray == [] and not (tmp_path / "r").exists()


def test_missing_model_directory_is_named_and_nothing_is_fetched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    line = _refused(
        ["search", "--space", str(_space(tmp_path)), "--data", str(_corpus(tmp_path / "c")),
         "--model", str(tmp_path / "no-model"), "--storage", str(tmp_path / "runs")],
        capsys,
    )
    assert f"model '{tmp_path / 'no-model'}'" in line and "not found" in line
    assert no_ray == []


def test_unknown_hub_model_offline_is_an_input_error_without_network(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_ray: list[str | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: the tests' offline contract
    dialed: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        dialed.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    line = _refused(
        ["search", "--space", str(_space(tmp_path)), "--data", str(_corpus(tmp_path / "c")),
         "--model", "no-such-org-model", "--storage", str(tmp_path / "runs")],
        capsys,
    )
    assert "model 'no-such-org-model'" in line
    assert dialed == [] and no_ray == []


def test_resume_without_an_experiment_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    line = _refused(
        ["reproduce", "--preset", "smoke", "--storage", str(tmp_path), "--name", "none",
         "--resume"],
        capsys,
    )
    assert "--resume" in line and str(tmp_path / "none") in line
    assert no_ray == []


def test_resume_with_another_model_than_the_experiments_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    # a resumed experiment runs its remaining trials with its own settings (hiersearch.json);
    # a contradicting option would silently mix two models in one leaderboard
    experiment = tmp_path / "runs" / "tiny"
    experiment.mkdir(parents=True)
    (experiment / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for
    meta = {
        "space": SPACE,
        "space_file": "space.yaml",
        "base_config": {**SPACE["trial"]},
        "corpus": str(_corpus(tmp_path / "c")),
    }
    (experiment / "hiersearch.json").write_text(json.dumps(meta))
    line = _refused(
        ["search", "--space", str(_space(tmp_path)), "--storage", str(tmp_path / "runs"),
         "--name", "tiny", "--model", "tiny:6x16", "--resume"],
        capsys,
    )
    assert line.startswith("hiersearch: error: --model:") and "'tiny:4x16'" in line
    assert no_ray == []


def test_resume_of_a_state_file_cut_short_by_the_kill_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray-tmp"))
    experiment = tmp_path / "runs" / "tiny"
    experiment.mkdir(parents=True)
    (experiment / "tuner.pkl").write_bytes(b"")
    state = experiment / "experiment_state-2026-12-06_11-00-00.json"
    state.write_bytes(b"")  # Tune copies it in place: a kill in the copy leaves it empty
    line = _refused(
        ["search", "--space", str(_space(tmp_path)), "--storage", str(tmp_path / "runs"),
         "--name", "tiny", "--resume"],
        capsys,
    )
    assert line.startswith(f"hiersearch: error: {state}: Ray Tune's saved state is cut short")
    assert state.read_bytes() == b""  # left as it was
    assert no_ray == []


# --- outputs ----------------------------------------------------------------------------------


def test_leaderboard_of_a_directory_without_an_experiment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("not an experiment\n")
    line = _refused(["leaderboard", str(tmp_path)], capsys)
    assert str(tmp_path) in line and "no Ray Tune experiment" in line


def test_leaderboard_with_a_damaged_hiersearch_json_still_reads_the_trials(
    tmp_path: Path,
) -> None:
    import shutil

    experiment = tmp_path / "finished"
    shutil.copytree(Path(__file__).parent / "fixtures" / "leaderboard" / "finished", experiment)
    (experiment / "hiersearch.json").write_text('{"metric": "dev/rp_')  # a torn write
    with pytest.warns(results.LeaderboardWarning, match=r"hiersearch\.json"):
        table = results.load_experiments([str(experiment)])
    assert len(table) == 9


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


def test_the_installed_command_prints_one_line_without_traceback(tmp_path: Path) -> None:
    """The real process: exit status 2 and stderr that is exactly one line."""
    corpus = _corpus(tmp_path / "c")
    with (corpus / "train.jsonl").open("a") as handle:
        handle.write("not json\n")
    done = subprocess.run(
        [sys.executable, "-m", "hiersearch.cli", "data", "stats", str(corpus)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"hiersearch: error: {corpus / 'train.jsonl'}:4: invalid JSON: Expecting value "
        "(column 1)"
    ]
    assert done.stdout == ""


# --- issue 16: data safety and input refused before anything is written -----------------------


def _unwritable(tmp_path: Path) -> Path:
    """A directory nobody may create files in: read-only for a user; for root (which ignores
    modes) sysfs, where even root cannot create a file."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        return locked
    if not Path("/sys/fs").is_dir():
        pytest.skip("running as root without sysfs: no directory root cannot write")
    return Path("/sys/fs")


def _search(tmp_path: Path, *extra: str, space: Path | None = None) -> list[str]:
    return ["search", "--space", str(space or _space(tmp_path)), "--data",
            str(_corpus(tmp_path / "c")), *extra]


def _tree(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_text() for p in files}


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


@pytest.mark.parametrize(
    ("name", "shown"),
    [("../escape", "'../escape'"), ("a/b", "'a/b'"), ("..", "'..'"), (".", "'.'")],
)
def test_experiment_names_outside_the_storage_are_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_ray: list[str | None],
    name: str,
    shown: str,
) -> None:
    storage = tmp_path / "runs"
    line = _refused([*_search(tmp_path), "--storage", str(storage), "--name", name], capsys)
    assert line.startswith("hiersearch: error: --name:") and shown in line
    assert no_ray == [] and not storage.exists() and not (tmp_path / "escape").exists()


def test_a_space_name_with_a_slash_names_the_space_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    space = _space(tmp_path)
    space.write_text(space.read_text().replace("name: tiny", "name: ../../tiny"))
    line = _refused([*_search(tmp_path, space=space), "--storage", str(tmp_path / "r")], capsys)
    assert f"{space}: name" in line and no_ray == []


def test_storage_that_is_a_file_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    storage = tmp_path / "runs.txt"
    storage.write_text("a file\n")
    line = _refused([*_search(tmp_path), "--storage", str(storage)], capsys)
    assert line.startswith("hiersearch: error: --storage:") and "not a directory" in line
    assert storage.read_text() == "a file\n" and no_ray == []


def test_storage_not_writable_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    line = _refused([*_search(tmp_path), "--storage", str(_unwritable(tmp_path) / "r")], capsys)
    assert line.startswith("hiersearch: error: --storage: cannot write") and no_ray == []


def test_experiment_path_that_is_a_file_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    storage = tmp_path / "runs"
    storage.mkdir()
    (storage / "tiny").write_text("not an experiment\n")
    line = _refused([*_search(tmp_path), "--storage", str(storage), "--name", "tiny"], capsys)
    assert "--storage" in line and "not a directory" in line and no_ray == []


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


def _model_dir(tmp_path: Path, config: str) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(config)
    return model


@pytest.mark.parametrize(
    ("config", "said"),
    [
        ("{}", "model_type"),
        ('{"model_type": "bert", "num_hidden_layers": "six"}', "num_hidden_layers"),
        ('{"model_type": "bert", "num_hidden_layers": 0}', "num_hidden_layers must be"),
        ('{"model_type": "no-such-architecture"}', "no-such-architecture"),
        ('{"model_type": ', "not a valid JSON"),
    ],
)
def test_a_broken_model_config_is_an_input_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_ray: list[str | None],
    config: str,
    said: str,
) -> None:
    model = _model_dir(tmp_path, config)
    line = _refused([*_search(tmp_path), "--model", str(model), "--storage",
                     str(tmp_path / "r")], capsys)
    assert f"model '{model}'" in line and said in line
    assert no_ray == [] and not (tmp_path / "r").exists()


@pytest.mark.parametrize("model", ["missing", "tiny:1x16", "no-tokenizer"])
def test_a_refused_model_leaves_no_synthetic_corpus_or_cache_behind(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_ray: list[str | None],
    monkeypatch: pytest.MonkeyPatch,
    model: str,
) -> None:
    monkeypatch.delenv("HIERSEARCH_DATA")  # synthetic corpora go under the storage
    spec = {"missing": str(tmp_path / "absent"), "tiny:1x16": "tiny:1x16"}.get(model)
    if spec is None:  # a model directory with a config but no tokenizer files
        spec = str(_model_dir(tmp_path, '{"model_type": "bert", "num_hidden_layers": 4}'))
    space = _space(tmp_path, data={"docs": 12, "max_leaves": 5})
    storage = tmp_path / "runs"
    _refused(["search", "--space", str(space), "--model", spec, "--storage", str(storage)],
             capsys)
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


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ("dev_rp >", "--where: cannot parse 'dev_rp >'"),
        ("nosuch > 1", "--where: no column 'nosuch'"),
        ("dev/rp_macro > 0.5", "quote a column holding '/' in backticks"),
    ],
)
def test_leaderboard_where_errors_are_worded_for_the_user(
    capsys: pytest.CaptureFixture[str], where: str, said: str
) -> None:
    experiment = Path(__file__).parent / "fixtures" / "leaderboard" / "finished"
    line = _refused(["leaderboard", str(experiment), "--where", where], capsys)
    assert said in line and "Error:" not in line


def test_leaderboard_warnings_are_one_line_without_source(tmp_path: Path) -> None:
    import shutil

    experiment = tmp_path / "finished"
    shutil.copytree(Path(__file__).parent / "fixtures" / "leaderboard" / "finished", experiment)
    (experiment / "hiersearch.json").write_text('{"metric": "dev/rp_')
    done = subprocess.run(
        [sys.executable, "-m", "hiersearch.cli", "leaderboard", str(experiment), "--top", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hiersearch: warning: {experiment}")


@pytest.mark.parametrize("model", ["tiny:0x16", "tiny:4x0"])
def test_a_tiny_model_bert_would_refuse_in_a_trial_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None], model: str
) -> None:
    line = _refused([*_search(tmp_path), "--model", model, "--storage", str(tmp_path / "r")],
                    capsys)
    assert f"model '{model}': expected tiny:<layers>x<hidden>" in line and no_ray == []


def _finished() -> str:
    return str(Path(__file__).parent / "fixtures" / "leaderboard" / "finished")


@pytest.mark.parametrize("command", ["leaderboard", "export", "predict"])
def test_out_below_a_file_is_refused_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    (tmp_path / "afile").write_text("x")
    out = str(tmp_path / "afile" / "result")
    argv = {
        "leaderboard": ["leaderboard", _finished(), "--format", "csv", "--out", out],
        "export": ["export", _finished(), "--out", out],
        "predict": ["predict", str(tmp_path / "model"), "--input", "-", "--out", out],
    }[command]
    line = _refused(argv, capsys)
    assert "--out" in line and f"not a directory ({tmp_path / 'afile'})" in line


def test_leaderboard_out_not_writable_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = _unwritable(tmp_path)
    line = _refused(["leaderboard", _finished(), "--format", "csv", "--out",
                     str(locked / "t.csv")], capsys)
    assert line == f"hiersearch: error: --out: cannot write: Permission denied ({locked})"


# --- issue 22: GPU settings a GPU would refuse, refused before Ray starts ----------------------


def test_ddp_workers_sharing_a_gpu_are_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    space = _space(tmp_path, trial={"use_gpu": True, "num_workers": 2, "gpus_per_worker": 0.5})
    line = _refused([*_search(tmp_path, space=space), "--storage", str(tmp_path / "r")], capsys)
    assert "trial: gpus_per_worker: must be 1 with num_workers: 2 and use_gpu" in line
    assert no_ray == [] and not (tmp_path / "r").exists()


def test_gpu_trials_on_a_cpu_build_of_torch_are_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", None)  # CI's torch is one; say so regardless
    space = _space(tmp_path, trial={"use_gpu": True})
    line = _refused([*_search(tmp_path, space=space), "--storage", str(tmp_path / "r")], capsys)
    assert f"{space}: trial: use_gpu: torch {torch.__version__} is a CPU build" in line
    assert no_ray == [] and not (tmp_path / "r").exists()


def test_gpu_trials_on_a_machine_without_a_gpu_are_refused_when_they_would_run_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", "13.0")  # a CUDA build...
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # ...on a machine with no GPU
    space = _space(tmp_path, trial={"use_gpu": True})
    argv = [*_search(tmp_path, space=space), "--storage", str(tmp_path / "r")]
    line = _refused(argv, capsys)
    assert "trial: use_gpu: this machine has no GPU" in line and no_ray == []
    # joining a cluster: its GPU nodes may have what this head node lacks, so Ray starts
    with pytest.raises(AssertionError, match="Ray would start"):
        main([*argv, "--address", "10.0.0.1:6379"])
    assert no_ray == ["10.0.0.1:6379"]


def _refused_in_a_subprocess(argv: list[str], cwd: Path | None = None) -> str:
    """The CLI in its own process: exit 2 and one line on stderr, which is returned."""
    done = subprocess.run([sys.executable, "-m", "hiersearch.cli", *argv],
                          capture_output=True, text=True, timeout=120, cwd=cwd)
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(done.stderr.splitlines()) == 1 and done.stdout == "", done.stderr
    return done.stderr


def test_a_space_file_with_a_key_given_twice_is_refused_before_ray(tmp_path: Path) -> None:
    space = tmp_path / "twice.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False).replace(
        "  epochs: 1\n", "  epochs: 1\n  lr: 0.001\n  util_docs: 0\n  lr: 0.002\n", 1))
    err = _refused_in_a_subprocess(["search", "--space", str(space), "--storage", "runs"],
                                   cwd=tmp_path)
    lines = [n for n, line in enumerate(space.read_text().splitlines(), 1) if "lr:" in line]
    assert err == (
        f"hiersearch: error: {space}: trial: key 'lr' is given twice (lines {lines[0]} and "
        f"{lines[1]}); a YAML reader would keep the last one silently: keep one\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["twice.yaml"]  # no storage, no Ray


@pytest.mark.parametrize("command", [["search", "--storage", "runs"],
                                     ["space", "--layers", "6", "--levels", "3"]])
def test_a_space_file_that_is_not_utf8_is_refused_naming_its_line(
    tmp_path: Path, command: list[str]
) -> None:
    space = tmp_path / "latin1.yaml"
    text = yaml.safe_dump({**SPACE, "description": "caf\u00e9 au lait"}, sort_keys=False,
                          allow_unicode=True)
    space.write_bytes(text.encode("latin-1"))  # e-acute as the single byte 0xE9
    line = text[: text.index("\u00e9")].count("\n") + 1
    column = len(text[: text.index("\u00e9")].rsplit("\n", 1)[-1]) + 1
    err = _refused_in_a_subprocess([command[0], "--space", str(space), *command[1:]],
                                   cwd=tmp_path)
    assert err == f"hiersearch: error: {space}:{line}: invalid UTF-8 (byte {column} of the line)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.yaml"]  # no storage, no Ray


def _experiment_copy(tmp_path: Path) -> Path:
    import shutil

    experiment = tmp_path / "finished"
    shutil.copytree(_finished(), experiment)
    return experiment


def _contents(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("named", ["hiersearch.json", "a trial's result.json by a symlink"])
def test_leaderboard_out_onto_a_file_of_its_experiment_is_refused(
    tmp_path: Path, named: str
) -> None:
    experiment = _experiment_copy(tmp_path)
    out = experiment / "hiersearch.json"
    if named != "hiersearch.json":
        out = tmp_path / "table.json"
        out.symlink_to(next(experiment.glob("trainable_*")) / "result.json")
    before = _contents(experiment)
    err = _refused_in_a_subprocess(["leaderboard", str(experiment), "--out", str(out)])
    assert err == (
        f"hiersearch: error: --out: {out} is a file of the experiment {experiment}, which "
        "the leaderboard reads; writing it would replace that file (write the table outside "
        "the experiment)\n"
    )
    assert _contents(experiment) == before


def test_leaderboard_out_may_be_a_new_file_inside_its_experiment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = _experiment_copy(tmp_path)
    assert main(["leaderboard", str(experiment), "--out", str(experiment / "board.csv")]) == 0
    assert (experiment / "board.csv").read_text().startswith("experiment,")


def test_export_out_onto_its_experiment_by_another_name_is_refused(tmp_path: Path) -> None:
    experiment = _experiment_copy(tmp_path)
    (tmp_path / "link").symlink_to(experiment)
    before = _contents(experiment)
    err = _refused_in_a_subprocess(["export", str(experiment), "--out", "link"], cwd=tmp_path)
    assert err == (
        f"hiersearch: error: --out: link is the same directory as EXPERIMENT {experiment}; "
        "writing it would replace the input (choose another --out)\n"
    )
    assert _contents(experiment) == before and (tmp_path / "link").is_symlink()
