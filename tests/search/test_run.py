"""Running an experiment (`hiersearch.search.run`). Ray-backed end-to-end tests: the smoke
preset, a layerwise search with ASHA, resume, multi-objective searches.

They share one local Ray (the `ray_session` fixture), the session's smoke experiment
(`smoke_experiment`, tests/conftest.py) and the smallest settings that still exercise the real
path: Ray Tune trials running Ray Train runs of DDP workers. The run's options (`RunOptions`)
and the refusals before Ray starts need no Ray.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
import yaml

from hiersearch import metrics as M
from hiersearch.cli import main
from hiersearch.data.encode import load_encoded
from hiersearch.errors import InputError
from hiersearch.model.classifier import LayerwiseClassifier
from hiersearch.model.encoder import load_encoder
from hiersearch.report import leaderboard as lb
from hiersearch.report import results
from hiersearch.report.results import NOT_TRIALS  # the baseline and ensemble rows
from hiersearch.search import run
from hiersearch.search.run import RunOptions, run_search
from hiersearch.search.searcher import TUNE_TRIAL_ATTR
from hiersearch.search.space import SpaceFile, load_space, parse_space, preset_path
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.evaluation import evaluate_split, split_metrics
from hiersearch.trial.recipe import resolve_assignment
from hiersearch.trial.session import LocalSession

# the end-to-end tests: slow, on the shared local Ray
e2e = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

VARIANTS = ["FLAT", "LAST-THREE", "ONE-BY-ONE", "IN-PAIRS", "HYBRID"]


def _leaderboard_json(path: str, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["leaderboard", path, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


@e2e[0]
@e2e[1]
def test_smoke_preset_runs_the_five_variants_with_ddp_workers(
    smoke_experiment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    board = _leaderboard_json(smoke_experiment, capsys)
    assert board["schema"] == "hiersearch.leaderboard/1"
    rows = [r for r in board["rows"] if r["status"] not in NOT_TRIALS]
    assert sorted(r["variant"] for r in rows) == sorted(VARIANTS)
    # the experiment's baseline, computed once before the trials, is one more row
    (baseline,) = [r for r in board["rows"] if r["status"] == "baseline"]
    assert baseline["variant"] == "TF-IDF 20-NN" and baseline["checkpoint"] is None
    assert isinstance(baseline[M.rp_macro_key("test")], float)
    for row in rows:
        assert row["status"] == "terminated"
        for split in ("dev", "test"):
            keys = [M.rp_level_key(split, n) for n in (1, 2, 3)]
            keys += [M.rp_micro_key(split), M.rp_macro_key(split)]
            assert all(isinstance(row[k], float) for k in keys), (split, row)
    trial_dir = next(Path(smoke_experiment).glob("trial_*"))
    config = json.loads((trial_dir / "config.json").read_text())
    assert config["num_workers"] == 2 and config["model"] == "tiny:12x32"
    assert (trial_dir / "artifacts" / "cls_angle.png").is_file()
    assert list((trial_dir / "artifacts" / "tensorboard").glob("events.out.tfevents.*"))


@e2e[0]
@e2e[1]
def test_ddp_dev_metrics_equal_a_single_process_evaluation(smoke_experiment: str) -> None:
    """The metrics reported under 2-worker DDP are those of the whole dev set, not a shard."""
    meta = json.loads((Path(smoke_experiment) / "hiersearch.json").read_text())
    trial_dir = next(Path(smoke_experiment).glob("trial_*"))
    final = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()][
        -1
    ]
    checkpoint = sorted(p for p in trial_dir.glob("train_*/checkpoint_*") if p.is_dir())[-1]
    config = TrialConfig.from_dict(json.loads((checkpoint / "config.json").read_text()))
    encoded_dirs = list(Path(meta["corpus"]).glob(".hiersearch-cache/encoded-*"))
    encoded = load_encoded(encoded_dirs[0])
    encoder = load_encoder(config.model, seed=config.seed)
    assignment = resolve_assignment(config.assignment, 12, encoded.label_counts)
    model = LayerwiseClassifier(encoder, assignment, encoded.label_counts, config.dropout)
    model.load_state_dict(torch.load(checkpoint / "model.pt"))
    from hiersearch.data.encode import Split

    dev = Split.from_table(encoded.splits["dev"])
    session = LocalSession(checkpoint_root=Path("."))
    result = evaluate_split(model, dev, encoded.num_labels, session, 64, lambda: _null())
    single = split_metrics(result, model.level_slices, "dev")
    for key in (M.rp_level_key("dev", 1), M.rp_micro_key("dev"), M.rp_macro_key("dev"),
                M.loss_key("dev")):
        assert single[key] == pytest.approx(final[key], abs=1e-5), key
    # the scores the final checkpoint keeps for ensembles: the whole split, gathered from
    # both DDP ranks in document order, the same as one process's
    from hiersearch.trial.checkpoint import read_scores

    kept = read_scores(checkpoint)
    assert kept is not None and kept["dev"].shape == result[0].shape
    np.testing.assert_allclose(kept["dev"], result[0], atol=1e-5)
    assert kept["test"].shape == (len(encoded.splits["test"]), encoded.num_labels)


def _null() -> object:
    import contextlib

    return contextlib.nullcontext()


def _layerwise_smoke(
    tmp_path: Path, trial: dict[str, Any] | None = None, enqueue: bool = True, **tune: object
) -> Path:
    """layerwise.yaml's search at smoke size (tiny encoder, a few dozen docs)."""
    raw = yaml.safe_load(preset_path("layerwise").read_text())
    smoke = yaml.safe_load(preset_path("smoke").read_text())
    raw["data"] = smoke["data"]
    raw["trial"] = {**smoke["trial"], "num_workers": 1, "cpus_per_worker": 1, "epochs": 3,
                    "patience": 3, "util_docs": 0, **(trial or {})}
    raw["search"]["batch_size"]["choices"] = [4, 8]
    raw["assignment"]["enqueue_variants"] = enqueue
    raw["tune"].update(tune)
    path = tmp_path / "layerwise-smoke.yaml"
    path.write_text("# Launch: hiersearch search --space layerwise-smoke.yaml\n"
                    + yaml.safe_dump(raw))
    parse_space(raw)  # still a valid space
    return path


@e2e[0]
@e2e[1]
def test_layerwise_search_runs_optuna_trials_and_asha_stops_some(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space_file = _layerwise_smoke(tmp_path, num_samples=7, reduction_factor=3)
    storage = f"file://{tmp_path}/storage"  # storage given as a URI
    code = main(["search", "--space", str(space_file), "--storage", storage, "--name", "lw"])
    assert code == 0
    board = _leaderboard_json(f"{storage}/lw", capsys)
    rows = [r for r in board["rows"] if r["status"] not in NOT_TRIALS]
    assert len(rows) == 7
    statuses = [r["status"] for r in rows]
    assert "stopped early" in statuses, statuses
    assert statuses.count("terminated") >= 2
    # the five named variants were enqueued first (at the space's defaults); the sampler drew
    # the other two from the space (FLAT is one of its two kinds, so assignments may repeat)
    variants = {r["variant"] for r in rows}
    assert {"FLAT", "LAST-THREE", "ONE-BY-ONE", "IN-PAIRS", "HYBRID"} <= variants
    assert len({r["lr"] for r in rows}) >= 2
    params = [c for c in board["columns"] if c in ("lr", "dropout", "batch_size",
                                                   "warmup_ratio", "loss_weighting")]
    assert len(params) == 5
    # one worker per trial: each trained in its Tune trial's own process (no Ray Train run),
    # and Tune kept its checkpoints (keep_checkpoints: 1, plus the final one it keeps as latest)
    experiment = tmp_path / "storage" / "lw"
    pids = set()
    for trial_dir in experiment.glob("trial_*"):
        tune_pid = json.loads((trial_dir / "result.json").read_text().splitlines()[0])["pid"]
        starts = json.loads((trial_dir / "artifacts" / "workers.json").read_text())["starts"]
        assert [s["workers"][0]["pid"] for s in starts] == [tune_pid]
        assert not list(trial_dir.glob("train_*"))
        assert 1 <= len(list(trial_dir.glob("checkpoint_*"))) <= 2
        pids.add(tune_pid)
    assert len(pids) < len(rows)  # Tune reused trial processes (reuse_actors)


@e2e[0]
@e2e[1]
def test_resume_after_an_interrupted_search_keeps_finished_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = load_space(_layerwise_smoke(tmp_path, num_samples=4, scheduler="none"))
    space = parse_space({**space.raw, "trial": {**space.raw["trial"], "epochs": 2}})
    storage = tmp_path / "storage"
    experiment = storage / "resume"

    def interrupt_after_first_finished_trial() -> None:
        deadline = time.time() + 240
        while time.time() < deadline:
            for result in experiment.glob("trial_*/result.json"):
                lines = result.read_text().splitlines()
                try:
                    final = bool(lines) and json.loads(lines[-1]).get(M.TRIAL_FINAL) == 1
                except ValueError:  # a line being written
                    continue
                if final:
                    os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does
                    return
            time.sleep(0.5)

    watcher = threading.Thread(target=interrupt_after_first_finished_trial, daemon=True)
    watcher.start()
    run_search(space, storage=str(storage), name="resume", verbose=0)
    watcher.join(timeout=1)
    before = {  # the finished trials (a trial that had just started has an empty file)
        name: text
        for name, text in ((p.parent.name, p.read_text())
                           for p in experiment.glob("trial_*/result.json"))
        if text.strip() and json.loads(text.splitlines()[-1]).get(M.TRIAL_FINAL) == 1
    }
    assert 1 <= len(before) < 4, sorted(before)
    numbers_before = _study_numbers(experiment, "resume")

    run_search(space, storage=str(storage), name="resume", resume=True, verbose=0)
    # the same study goes on: its earlier trials kept, later ones numbered after them
    numbers_after = _study_numbers(experiment, "resume")
    assert set(numbers_before) <= set(numbers_after)
    assert all(n > max(numbers_before) for n in set(numbers_after) - set(numbers_before))
    assert list(numbers_after.values()).count("COMPLETE") == 4, numbers_after
    board = _leaderboard_json(str(experiment), capsys)
    rows = [r for r in board["rows"] if r["status"] not in NOT_TRIALS]
    ids = [r["trial_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 4, ids
    assert all(r["status"] == "terminated" for r in rows), rows
    for name, text in before.items():  # finished trials were not trained again
        after = (experiment / name / "result.json").read_text()
        assert after.startswith(text)
        # A trial Tune had not yet marked finished when Ctrl-C came is restarted from its last
        # checkpoint, which holds the final metrics: it hands the same final report over
        # again and trains no epoch.
        last = _metrics_only(json.loads(text.splitlines()[-1]))
        for line in after[len(text):].splitlines():
            again = json.loads(line)
            assert again.get(M.TRIAL_FINAL) == 1, (name, line)
            assert _metrics_only(again) == last, (name, last, line)


def _study_numbers(experiment: Path, name: str) -> dict[int, str]:
    """Trial number -> state of the experiment's persisted Optuna study."""
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{experiment}/optuna.db")
    return {t.number: t.state.name for t in study.trials}


OBJECTIVES = [M.rp_macro_key("dev"), M.COST_ENCODER_LAYERS]


@pytest.fixture(scope="module")
def mo_asha_storage(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One multi-objective search with MO-ASHA, read by the multi-objective tests below: six
    trials drawn by the sampler (no variant enqueued, so that the parameters and both
    objectives vary), three epochs for ASHA to stop some."""
    tmp_path = tmp_path_factory.mktemp("mo")
    space_file = _layerwise_smoke(
        tmp_path, enqueue=False, num_samples=6, scheduler="asha", reduction_factor=2,
        metric=OBJECTIVES, mode=["max", "min"],
    )
    storage = tmp_path / "storage"
    code = main(["search", "--space", str(space_file), "--storage", str(storage), "--name", "mo"])
    assert code == 0
    return storage


@e2e[0]
@e2e[1]
def test_a_multi_objective_search_persists_its_study_and_marks_the_pareto_front(
    mo_asha_storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objectives, storage = OBJECTIVES, mo_asha_storage
    experiment = storage / "mo"
    board = _leaderboard_json(str(experiment), capsys)
    assert "pareto" in board["columns"]
    rows = [r for r in board["rows"] if r["status"] not in NOT_TRIALS]
    front = [r for r in rows if r["pareto"]]
    finished = [r for r in rows if r["status"] == "terminated"]  # ASHA stopped the others
    assert front and finished and all(r[M.COST_FORWARD_MS] > 0 for r in finished)
    for row in front:  # nothing in the table beats a front row on both metrics
        assert not any(
            o[objectives[0]] >= row[objectives[0]] and o[objectives[1]] <= row[objectives[1]]
            and (o[objectives[0]], o[objectives[1]]) != (row[objectives[0]], row[objectives[1]])
            for o in rows
        )
    capsys.readouterr()
    assert main(["leaderboard", str(experiment), "--pareto", "--format", "json"]) == 0
    kept = json.loads(capsys.readouterr().out)["rows"]
    assert sorted(r["trial_id"] for r in kept) == sorted(r["trial_id"] for r in front)
    # the study: persisted in the experiment directory, named after it, one trial per Tune
    # trial with both objectives' values
    study = optuna.load_study(study_name="mo", storage=f"sqlite:///{experiment}/optuna.db")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6 and all(len(t.values) == 2 for t in complete)
    assert {t.params["seed"] for t in complete} == {0}  # never searched
    meta = json.loads((experiment / "hiersearch.json").read_text())
    assert (meta["metrics"], meta["modes"]) == (objectives, ["max", "min"])
    assert meta["study"] == {"name": "mo", "url": f"sqlite:///{experiment}/optuna.db"}
    # a storage root stands for its experiments here too
    assert main(["leaderboard", str(storage), "--importance"]) == 0
    out = capsys.readouterr().out
    assert f"parameter importances for {objectives[1]} ({experiment}):\n" in out
    for picture in ("importance.png", "history.png", "pareto_front.png"):
        assert (experiment / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture


@e2e[0]
@e2e[1]
def test_mo_asha_stops_trials_on_two_metrics_and_the_study_gets_their_values(
    mo_asha_storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _leaderboard_json(str(mo_asha_storage / "mo"), capsys)["rows"]
    stopped = [r for r in rows if r["status"] == "stopped early"]
    assert stopped, [r["status"] for r in rows]
    # a stopped trial's epoch report carries both metrics: the Pareto mark and the study
    # (OptunaSearch tells it the trial's last result, as with one-metric ASHA) have them
    assert all(r[M.COST_ENCODER_LAYERS] >= 1 for r in stopped)
    study = optuna.load_study(
        study_name="mo", storage=f"sqlite:///{mo_asha_storage}/mo/optuna.db"
    )
    by_tune_id = {t.user_attrs.get(TUNE_TRIAL_ATTR): t for t in study.trials}
    for row in stopped:
        trial = by_tune_id[row["trial_id"]]
        assert trial.state == optuna.trial.TrialState.COMPLETE and len(trial.values) == 2


def _metrics_only(result: dict[str, Any]) -> str:
    """A result line without Tune's bookkeeping (times, iteration counters, host) and without
    wall-time measurements (a trial restarted before its final checkpoint was registered
    evaluates test again: same metrics, another test/eval_s), as JSON text so that NaN compares
    equal to NaN."""
    kept = {k: v for k, v in result.items() if "/" in k and not M.is_timing_key(k)}
    return json.dumps(kept, sort_keys=True)


@e2e[0]
@e2e[1]
def test_leaderboard_table_groups_by_variant(smoke_experiment: str) -> None:
    table = lb.group_rows(results.load_experiments([smoke_experiment]), "variant")
    assert sorted(table["variant"]) == sorted([*VARIANTS, "TF-IDF 20-NN"])
    assert np.all(table["trials"] == 1)


def test_gpus_per_worker_cannot_be_searched() -> None:
    quick = load_space(preset_path("quick"))
    gpus = {"gpus_per_worker": {"type": "categorical", "choices": [0.5, 1]}}
    with pytest.raises(InputError, match="search: gpus_per_worker: cannot be searched"):
        run_search(parse_space({**quick.raw, "search": gpus}), storage="unused")


def test_the_launcher_cannot_be_searched() -> None:
    quick = load_space(preset_path("quick"))
    launchers = {"launcher": {"type": "categorical", "choices": ["auto", "train"]}}
    with pytest.raises(InputError, match="search: launcher"):
        run_search(parse_space({**quick.raw, "search": launchers}), storage="unused")


def _recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[SpaceFile, RunOptions]]:
    calls: list[tuple[SpaceFile, RunOptions]] = []
    monkeypatch.setattr(run, "run_experiment", lambda space, options: calls.append(
        (space, options)) or "path")
    return calls


def test_the_runs_options_are_one_frozen_value_keywords_over_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _recorded(monkeypatch)
    base = RunOptions(storage="s3://bucket/runs", verbose=0)
    assert run_search(load_space("quick"), base, name="lw", trials=3) == "path"
    assert run_search(load_space("quick"), storage="runs2") == "path"
    (_, given), (_, keywords) = calls
    assert given == RunOptions(storage="s3://bucket/runs", name="lw", trials=3, verbose=0)
    assert keywords == RunOptions(storage="runs2")
    with pytest.raises(AttributeError):
        given.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError, match="unknown"):
        run_search(load_space("quick"), unknown=1)


def test_seeds_widen_the_space_before_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recorded(monkeypatch)
    run_search(load_space("quick"), seeds=3)
    (space, options), = calls
    assert options.seeds == 3
    assert space.tune.seeds == 3

