"""The command line contract of DESIGN.md: outputs, JSON shapes and exit codes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hiersearch.search_spaces import preset_lines, presets

import hiersearch.cli.runs as runs
from hiersearch.cli import main
from hiersearch.search.space import load_space

FIXTURES = Path(__file__).parent / "fixtures" / "leaderboard"

PAPER_TABLE = {
    "FLAT": "flat",
    "LAST-SIX": [[7], [8], [9], [10], [11], [12]],
    "ONE-BY-ONE": [[2], [4], [6], [8], [10], [12]],
    "IN-PAIRS": [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12]],
    "HYBRID": [[4], [5], [6, 7], [8, 9], [10, 11], [12]],
}


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> object:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_variants_json_is_the_papers_table(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, ["variants", "--layers", "12", "--levels", "6",
                         "--label-counts", "21,127,567,3861,2284,481", "--json"])
    assert list(out) == list(PAPER_TABLE)
    for name, groups in PAPER_TABLE.items():
        if groups == "flat":
            assert out[name]["flat"] is True
        else:
            assert out[name]["groups"] == groups, name


def test_variants_table_prints_assignment_strings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["variants", "--layers", "12", "--levels", "6"]) == 0
    assert "L1:7|L2:8|L3:9|L4:10|L5:11|L6:12" in capsys.readouterr().out


def test_variants_table_prints_blocks_as_ranges(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["variants", "--layers", "24", "--levels", "6"]) == 0
    assert "L1:1-4|L2:5-8|L3:9-12|L4:13-16|L5:17-20|L6:21-24" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["variants", "space"])
def test_more_layers_than_any_encoder_has_exit_2_naming_the_option_and_the_limit(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--layers", "100000000", "--levels", "6"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("hiersearch: error: --layers: ") and "1,000" in err


def test_space_json_reports_the_exact_size(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, ["space", "--layers", "12", "--levels", "6", "--json"])
    assert out["size"] == 18565  # C(18, 12) ordered non-overlapping blocks, plus FLAT
    assert all(out["named_variants_in_space"].values())


def test_bad_label_counts_exit_2_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["variants", "--layers", "12", "--levels", "6", "--label-counts", "1,2"]) == 2
    assert "--label-counts" in capsys.readouterr().err


def test_data_synth_then_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "corpus"
    assert main(["data", "synth", "--hierarchy", "eurovoc", "--docs", "300", "--seed", "1",
                 "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"train.jsonl", "dev.jsonl", "test.jsonl",
                                               "hierarchy.json"}
    capsys.readouterr()
    assert main(["data", "stats", str(out)]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    stats = _json(capsys, ["data", "stats", str(out), "--json"])
    assert stats["synthetic"] is True
    assert sum(stats["documents"].values()) == 300


def test_data_mimic_iv_writes_a_corpus_on_icd10(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hiersearch.data.corpus import load_corpus_dir

    root = Path(__file__).parent / "fixtures" / "mimic_iv"
    out = tmp_path / "mimic"
    # seed 2 splits the fixtures' three ICD-10 patients 80/10/10 into three splits
    assert main(["data", "mimic-iv", "--discharge", str(root), "--diagnoses", str(root),
                 "--seed", "2", "--out", str(out)]) == 0
    assert "XX9.99 (1)" in capsys.readouterr().out  # the load report names unknown codes
    corpus = load_corpus_dir(out)
    assert corpus.hierarchy.name == "icd10" and not corpus.synthetic
    assert sum(len(docs) for docs in corpus.splits.values()) == 4


def test_leaderboard_of_a_storage_root_filters_and_groups_across_its_experiments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("finished", "asha"):
        shutil.copytree(FIXTURES / name, tmp_path / "runs" / name)
    board = _json(capsys, ["leaderboard", str(tmp_path / "runs"), "--where",
                           "status == 'terminated'", "--group-by", "experiment",
                           "--format", "json"])
    trials = {row["experiment"]: row["trials"] for row in board["rows"]}  # type: ignore[index]
    assert trials == {"asha": 1, "finished": 8}


def test_importance_of_a_storage_root_without_a_study_creates_no_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("finished", "asha"):  # experiments from before studies were kept
        shutil.copytree(FIXTURES / name, tmp_path / "runs" / name)
    before = sorted(tmp_path.rglob("*"))
    assert main(["leaderboard", str(tmp_path / "runs"), "--importance"]) == 2
    assert "has no Optuna study" in capsys.readouterr().err
    assert sorted(tmp_path.rglob("*")) == before


def test_importance_with_a_missing_sqlite_study_storage_creates_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = shutil.copytree(FIXTURES / "finished", tmp_path / "finished")
    missing = tmp_path / "elsewhere" / "optuna.db"
    for url in (f"sqlite:///{missing}", f"sqlite:///{missing.parent.parent / 'optuna.db'}"):
        assert main(["leaderboard", str(experiment), "--importance", "--study-storage", url]) == 2
        err = capsys.readouterr().err
        assert "--study-storage: has no Optuna study" in err and "does not exist" in err
    assert not missing.parent.exists() and not (tmp_path / "optuna.db").exists()
    assert not list(Path(experiment).glob("*.db"))


def _block_assignment_study(experiment: Path, trials: int = 24, constant: bool = False) -> None:
    """The experiment's Optuna study as the `layerwise` preset's search writes it: a monotone
    assignment space drawn define-by-run, so the block-assignment trials share parameters the
    FLAT trials lack (a group); the objective rewards a low top layer (`constant`: every
    trial gets the same value, as tiny runs that all score zero do)."""
    import optuna

    from hiersearch.report.study import default_url
    from hiersearch.search.space import define_by_run

    define = define_by_run(load_space("layerwise"), 6, [21, 127, 567])

    def objective(trial: optuna.Trial) -> float:
        define(trial)
        if constant:
            return 0.0
        return 1.0 - trial.params.get("assign/L3_end", 6) / 10 + trial.number * 1e-3

    study = optuna.create_study(
        study_name=experiment.name, storage=default_url(str(experiment)),
        direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.optimize(objective, n_trials=trials)


def test_importance_of_a_search_whose_block_trials_form_a_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = Path(shutil.copytree(FIXTURES / "finished", tmp_path / "finished"))
    _block_assignment_study(experiment)
    capsys.readouterr()
    assert main(["leaderboard", str(experiment), "--importance"]) == 0
    out = capsys.readouterr().out
    assert f"parameter importances for dev/rp_macro ({experiment}):" in out
    group = re.search(r"^  within the (\d+) trials that also have assign/L1_end, ", out, re.M)
    assert group and int(group[1]) >= 3
    assert re.search(r"^    assign/L3_end +\d\.\d{3}$", out, re.M)
    for picture in ("importance.png", "history.png"):
        assert f"wrote {experiment / picture}" in out and (experiment / picture).is_file()


def test_importance_of_a_search_whose_trials_all_have_one_value_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = Path(shutil.copytree(FIXTURES / "finished", tmp_path / "finished"))
    _block_assignment_study(experiment, trials=8, constant=True)
    capsys.readouterr()
    assert main(["leaderboard", str(experiment), "--importance"]) == 2
    err = capsys.readouterr().err
    assert err == ("hiersearch: error: --importance: not computable: every completed trial "
                   "has the same value\n")


def test_leaderboard_out_takes_its_format_from_the_suffix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "board.csv"
    assert main(["leaderboard", str(FIXTURES / "finished"), "--out", str(out)]) == 0
    header = out.read_text().splitlines()[0].split(",")
    assert header[:3] == ["experiment", "trial_id", "status"] and "dev/loss" in header
    assert main(["leaderboard", str(FIXTURES / "finished")]) == 0
    table = capsys.readouterr().out
    assert "dev/rp_macro" in table and "dev/loss" not in table  # the summary columns


def test_leaderboard_of_a_directory_without_experiment_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["leaderboard", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "Traceback" not in err


def test_input_errors_print_one_line_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hiersearch.cli", "data", "stats", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "missing" in proc.stderr


def test_reproduce_prints_the_head_under_each_table_title(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hiersearch.trial.config import TrialConfig

    experiment = Path(shutil.copytree(FIXTURES / "finished", tmp_path / "finished"))
    config = TrialConfig(pooling="mean", head_norm="batchnorm").dumps()
    for trial_dir in experiment.glob("trainable_*"):
        (trial_dir / "config.json").write_text(config)
    monkeypatch.setattr(runs, "_prepare_env", lambda: None)
    monkeypatch.setattr(runs, "_run", lambda *_, **__: str(experiment))  # no Ray: a finished run
    assert main(["reproduce", "--preset", "quick"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = "head: pooling=mean, head_norm=batchnorm, head_hidden=none, freeze_layers=0"
    titles = [i for i, line in enumerate(lines) if line.startswith("R-Precision (%)")]
    assert len(titles) == 2 and all(lines[i + 1] == head for i in titles)


def test_search_prints_its_top_ten_in_the_leaderboards_summary_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = Path(shutil.copytree(FIXTURES / "finished", tmp_path / "finished"))
    monkeypatch.setattr(runs, "_prepare_env", lambda: None)
    monkeypatch.setattr(runs, "_run", lambda *_, **__: str(experiment))  # no Ray: a finished run
    assert main(["search", "--space", "smoke"]) == 0
    searched = capsys.readouterr().out.split("\n\nexperiment: ")[0]
    assert "node_id" not in searched and "checkpoint" not in searched
    assert main(["leaderboard", str(experiment), "--sort", "dev/rp_macro", "--top", "10"]) == 0
    assert searched.rstrip("\n") == capsys.readouterr().out.rstrip("\n")


def _with_a_checkpoint(tmp_path: Path) -> tuple[Path, str]:
    """The finished fixture experiment, one of whose trials has a final checkpoint."""
    from hiersearch.trial.config import TrialConfig

    experiment = Path(shutil.copytree(FIXTURES / "finished", tmp_path / "finished"))
    checkpoint = next(experiment.glob("*_f18e3_00004_*")) / "checkpoint_000001"
    checkpoint.mkdir()
    (checkpoint / "model.pt").write_bytes(b"")
    (checkpoint / "final_metrics.json").write_text("{}")
    (checkpoint / "config.json").write_text(TrialConfig(lr=3e-5, assignment="LAST-SIX").dumps())
    return experiment, "f18e3_00004"


@pytest.mark.parametrize(
    "argv", [["search", "--space", "smoke"], ["reproduce", "--preset", "smoke"]]
)
def test_json_run_prints_one_summary_object_on_stdout_and_the_progress_on_stderr(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    import os

    import jsonschema

    from hiersearch.report.summary import SUMMARY_JSON_SCHEMA

    experiment, best = _with_a_checkpoint(tmp_path)

    def finished_run(*_: object, **__: object) -> str:  # no Ray: what a run prints, then done
        print("== Status == (Tune's trial table)")
        os.write(1, b"(pid=123) a Ray worker's log line on file descriptor 1\n")
        return str(experiment)

    monkeypatch.setattr(runs, "_prepare_env", lambda: None)
    monkeypatch.setattr(runs, "_run", finished_run)
    assert main([*argv, "--json"]) == 0
    out, err = capfd.readouterr()
    summary = json.loads(out)  # stdout holds this one object and nothing else
    jsonschema.validate(summary, SUMMARY_JSON_SCHEMA)
    for progress in ("== Status ==", "a Ray worker's log line", f"experiment: {experiment}"):
        assert progress in err
    assert summary["command"] == argv[0] and summary["experiment"] == str(experiment)
    assert summary["trials"] == {"total": 9, "by_status": {"errored": 1, "terminated": 8}}
    assert summary["best"]["trial_id"] == best
    assert summary["best"]["config"]["lr"] == 3e-5
    assert summary["best"]["metrics"]["dev/rp_macro"] > 0
    assert summary["export_command"] == (
        f"hiersearch export {experiment} --trial {best} --out models/{best}"
    )


# A search whose Ray logs a raylet warning twice as its last trial ends: Ray prints the first
# at once and holds the repeat back (its log deduplication) until it shuts down.
_RAYLET_WARNING = "WARNING: 10 PYTHON worker processes have been started (hiersearch test)"
_WARNING_RUN = f"""
import sys, time
import ray
from ray._private.utils import publish_error_to_driver
import hiersearch.search.run as run
from hiersearch.cli import main

run_search = run.run_search

def warned(*args, **kwargs):
    path = run_search(*args, **kwargs)
    gcs = ray._private.worker.global_worker.gcs_client
    for _ in range(2):
        publish_error_to_driver("hiersearch_test", {_RAYLET_WARNING!r}, gcs)
    time.sleep(2)  # both reach the driver before the command goes on
    return path

run.run_search = warned
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_json_search_stdout_holds_only_the_summary_whatever_ray_logs(tmp_path: Path) -> None:
    import yaml

    from hiersearch.search.space import parse_space, preset_path

    raw = yaml.safe_load(preset_path("smoke").read_text())
    raw["trial"].update(num_workers=1, cpus_per_worker=1, epochs=1, util_docs=0)
    raw["assignment"] = {"space": "variants", "variants": ["FLAT"]}
    parse_space(raw)
    space = tmp_path / "one.yaml"
    space.write_text("# Launch: hiersearch search --space one.yaml\n" + yaml.safe_dump(raw))
    proc = subprocess.run(
        [sys.executable, "-c", _WARNING_RUN, "search", "--space", str(space),
         "--storage", str(tmp_path / "runs"), "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _RAYLET_WARNING in proc.stderr  # Ray did log it, and on stderr
    summary = json.loads(proc.stdout)
    assert summary["trials"]["by_status"] == {"terminated": 1}
    # the table, the experiment and the export hint end the output: Ray's lines (the raylet's
    # repeat held back to shutdown, a worker's "Checkpoint successfully created") come before
    lines = proc.stderr.rstrip("\n").splitlines()
    header = max(i for i, line in enumerate(lines) if "trial_id" in line.split())
    assert not [line for line in lines[header:] if line.startswith("(")], lines[header:]
    assert lines[-2] == f"experiment: {summary['experiment']}"
    assert lines[-1].startswith("export the best trial: hiersearch export ")


def test_json_summary_of_an_experiment_without_a_checkpoint_has_no_best() -> None:
    import jsonschema

    from hiersearch.report.results import load_experiments
    from hiersearch.report.summary import SUMMARY_JSON_SCHEMA, run_summary

    path = str(FIXTURES / "killed")
    summary = run_summary("search", path, load_experiments([path]), None, None)
    jsonschema.validate(summary, SUMMARY_JSON_SCHEMA)
    assert summary["best"] is None and summary["trials"]["by_status"] == {"running": 2}


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--top-k", "0"], "--top-k"),
        (["--top-k", "many"], "--top-k"),
        (["--threshold", "1.5"], "--threshold"),
        (["--threshold", "nan"], "--threshold"),
        (["--levels", "3-1"], "--levels"),
        (["--levels", "0-2"], "--levels"),
        (["--levels", "a-b"], "--levels"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_predict_rejects_bad_options_before_loading_anything(
    options: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model directory that does not exist is never reached: the option is checked first."""
    assert main(["predict", "no-such-model", "--input", "-", *options]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and "no-such-model" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "m", "--input", "-", "--top-k", "3", "--threshold", "0.5"],
        ["predict", "m", "--input", "-", "--device", "tpu"],
        ["export", "exp", "--trial", "t", "--best", "dev/rp_L1", "--out", "o"],
        ["export", "exp", "--trial", "t"],
    ],
)
def test_exclusive_or_missing_serve_options_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2


def test_predict_passes_checked_options_to_run_predict(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    seen: dict[str, object] = {}
    fake = types.ModuleType("hiersearch.serve.predict")
    fake.run_predict = lambda **kwargs: seen.update(kwargs) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hiersearch.serve.predict", fake)
    argv = ["predict", "m", "--input", "docs.csv", "--out", "p.jsonl", "--threshold", "0.25",
            "--levels", "1-2", "--batch-size", "8", "--device", "cuda", "--consistency", "add"]
    assert main(argv) == 0
    assert seen == {"model_dir": "m", "input": "docs.csv", "out": "p.jsonl", "top_k": None,
                    "threshold": 0.25, "levels": (1, 2), "batch_size": 8, "device": "cuda",
                    "consistency": "add"}
    assert main(["predict", "m", "--input", "-", "--levels", "2"]) == 0
    assert seen["levels"] == (2, 2) and seen["top_k"] is None and seen["batch_size"] == 32
    assert seen["consistency"] is None  # the default rule is predict's to choose


def test_the_presets_are_the_packaged_space_files_each_with_its_help_line() -> None:
    from importlib import resources

    shipped = resources.files("hiersearch.search_spaces").iterdir()
    assert list(presets()) == sorted(p.name[:-5] for p in shipped if p.name.endswith(".yaml"))
    for preset in preset_lines():  # as `load_space` reads and checks them
        space = load_space(preset.name)
        assert (preset.help, preset.reproduce) == (space.help, space.reproduce)
        assert len(preset.help.split("; ")) == 4, preset  # what; corpus; hardware; how long
        assert re.search(r"(CPU|GPU)", preset.help)
        assert re.search(r"\d+(\.\d+)? ?(min|h)|hours", preset.help)


def test_reproduce_takes_the_presets_whose_trials_are_all_fixed() -> None:
    reproducible = {p.name for p in preset_lines() if p.reproduce}
    assert reproducible == {"smoke", "quick", "hpo", "hpo_heads", "hpo6_mpnet_heads", "paper"}
    for name in presets():  # what `reproduce` runs: the fixed trials only
        assert (name in reproducible) == (load_space(name).tune.algorithm == "grid"), name


@pytest.mark.parametrize("command", ["reproduce", "search"])
def test_help_lists_each_preset_on_one_line(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    for name, line, reproducible in preset_lines():
        shown = re.search(rf"^  {name} +{re.escape(line)}$", out, re.M)
        assert bool(shown) == (reproducible or command == "search"), name


def test_every_command_reads_the_presets_help_lines_without_torch_or_optuna() -> None:
    code = ("import sys; from hiersearch.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'optuna', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_a_space_file_of_ones_own_may_carry_a_help_line(tmp_path: Path) -> None:
    import yaml

    from hiersearch.errors import InputError
    from hiersearch.search.space import preset_path

    raw = yaml.safe_load(preset_path("smoke").read_text())
    raw["help"] = "my variants; my corpus; CPU; ~1 min"
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump(raw))
    assert load_space(mine).help == raw["help"]
    mine.write_text(yaml.safe_dump({**raw, "help": ["not", "a line"]}))
    with pytest.raises(InputError, match=r"mine.yaml: help: expected str"):
        load_space(mine)
