"""The experiment's Optuna study: where it is kept, opened before Ray, importances and pictures,
and optuna-dashboard serving it (no Ray here: the studies are written with Optuna directly)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from hiersearch.errors import InputError
from hiersearch.report.study import (
    STUDY_FILE,
    ConstantObjective,
    default_url,
    group_importances,
    importances,
    load_study,
    open_storage,
    redact,
    write_pictures,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _fill(study: optuna.Study, trials: int = 12) -> None:
    """A study where lr decides the objective and dropout does not; seed is pinned."""

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-5, 1e-3, log=True)
        trial.suggest_categorical("dropout", [0.0, 0.1])
        trial.suggest_categorical("seed", [0])
        return -abs(lr - 1e-4) * 1e4

    study.optimize(objective, n_trials=trials)


def test_a_local_experiment_keeps_its_study_in_a_sqlite_file_inside_it(tmp_path: Path) -> None:
    experiment = tmp_path / "runs" / "exp"
    opened = open_storage(str(experiment), "exp", None, ["max"])
    assert opened.url == f"sqlite:///{experiment / STUDY_FILE}"
    study = optuna.create_study(study_name="exp", storage=opened.storage, direction="maximize")
    _fill(study, 3)
    again = optuna.load_study(study_name="exp", storage=opened.url)
    assert len(again.trials) == 3
    assert opened.to_json() == {"name": "exp", "url": opened.url}


def test_a_bucket_experiment_without_study_storage_keeps_the_study_in_memory() -> None:
    assert default_url("s3://bucket/runs/exp") is None
    assert open_storage("s3://bucket/runs/exp", "exp", None, ["max"]).url is None
    assert default_url("file:///tmp/runs/exp") == f"sqlite:////tmp/runs/exp/{STUDY_FILE}"


def test_a_bad_study_storage_url_is_an_input_error_naming_the_option(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="^--study-storage: cannot open the Optuna study"):
        open_storage(str(tmp_path / "exp"), "exp", "nosuchdialect://x/y", ["max"])
    with pytest.raises(InputError, match="^--study-storage: cannot open"):
        open_storage(str(tmp_path / "exp"), "exp", "sqlite:////no/such/dir/x.db", ["max"])


def test_a_study_of_the_same_name_with_other_directions_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(study_name="exp", storage=url, direction="maximize")
    open_storage(str(tmp_path / "exp"), "exp", url, ["max"])  # same directions: continued
    with pytest.raises(InputError, match=r"already exists there with directions \['maximize'\]"):
        open_storage(str(tmp_path / "exp"), "exp", url, ["max", "min"])


def test_the_recorded_url_hides_a_password_and_loading_then_asks_for_it(tmp_path: Path) -> None:
    url = "postgresql://user:secret@db.example:5432/optuna"
    assert redact(url) == "postgresql://user:***@db.example:5432/optuna"
    assert redact(f"sqlite:///{tmp_path}/x.db") == f"sqlite:///{tmp_path}/x.db"
    meta = {"name": "exp", "study": {"name": "exp", "url": redact(url)}}
    with pytest.raises(InputError, match="needs its password: pass the URL with --study-storage"):
        load_study(str(tmp_path / "exp"), meta)


def test_load_study_of_an_experiment_names_a_missing_study(tmp_path: Path) -> None:
    (tmp_path / "exp").mkdir()
    optuna.create_study(study_name="other", storage=default_url(str(tmp_path / "exp")))
    with pytest.raises(InputError, match="cannot load Optuna study 'exp'"):
        load_study(str(tmp_path / "exp"), {"name": "exp"})


def test_a_pbt_search_has_no_study_to_load_and_says_why(tmp_path: Path) -> None:
    meta = {"name": "exp", "space": {"tune": {"scheduler": "pbt"}}}
    with pytest.raises(InputError, match="population-based training search has no Optuna"):
        load_study(str(tmp_path / "exp"), meta)


def test_load_study_of_an_experiment_without_a_database_creates_none(tmp_path: Path) -> None:
    (tmp_path / "exp").mkdir()
    with pytest.raises(InputError, match=r"has no Optuna study: .*optuna.db does not exist"):
        load_study(str(tmp_path / "exp"), {"name": "exp"})
    assert list((tmp_path / "exp").iterdir()) == []


def test_importances_leave_out_the_seed_and_rank_the_parameter_that_matters(
    tmp_path: Path,
) -> None:
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    _fill(study, 20)
    found = importances(study)
    assert set(found) == {"lr", "dropout"}
    assert found["lr"] > found["dropout"]


def test_within_the_block_trials_the_block_bounds_decide_the_layers_run() -> None:
    """A monotone assignment space drawn as the search draws it: a block's range depends on
    the block below, so its bounds' distributions differ between trials; the cost is the top
    layer in use, decided by the last block's end alone."""
    from hiersearch.search.assignment_space import suggest_assignment

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        assignment = suggest_assignment(trial, 6, 3)
        trial.suggest_float("head_lr", 1e-2, 1e-1, log=True)
        top = max(assignment.layers_used(6))
        return 0.5, float(top)

    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1)
    )
    study.optimize(objective, n_trials=80)
    ends = {repr(t.distributions["assign/L3_end"]) for t in study.trials
            if "assign/L3_end" in t.params}
    assert len(ends) > 1  # what made Optuna's evaluators leave the bounds out
    assert "assign/L3_end" not in importances(study, 1)  # only the block trials have it
    (count, found), = group_importances(study, 1)
    assert count == sum("assign/L3_end" in t.params for t in study.trials)
    # the bounds are correlated (each block starts above the last): they share the importance
    assert sum(v for k, v in found.items() if k.startswith("assign/L")) > 0.9
    assert found["head_lr"] < 0.05 and found["assign/L3_end"] > 0.2
    assert group_importances(study, 0) == []  # every trial scores 0.5: nothing to explain


def test_importances_need_two_completed_trials() -> None:
    study = optuna.create_study(direction="maximize")
    _fill(study, 1)
    with pytest.raises(InputError, match="^--importance: importances need at least 2"):
        importances(study)


def test_importances_of_an_objective_with_one_value_in_every_trial_are_refused(
    tmp_path: Path,
) -> None:
    """fANOVA's forest has no variance to split there (Optuna raises a RuntimeError): a
    refusal for that objective, while the other objective's importances are computed."""
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    study.optimize(lambda t: (0.25, t.suggest_float("lr", 0, 1) + t.suggest_int("n", 1, 3)),
                   n_trials=8)
    with pytest.raises(ConstantObjective, match="^--importance: not computable: every"):
        importances(study, 0)
    assert set(importances(study, 1)) == {"lr", "n"}
    written = write_pictures(study, str(tmp_path), ["dev/rp_macro", "cost/layers"], {})
    assert [Path(p).name for p in written] == ["history.png", "pareto_front.png"]


def test_pictures_of_a_multi_objective_study_include_its_pareto_front(tmp_path: Path) -> None:
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    study.optimize(
        lambda t: (t.suggest_float("lr", 0, 1), t.suggest_int("layers", 1, 6)), n_trials=8
    )
    written = write_pictures(study, str(tmp_path / "exp"), ["dev/rp_macro", "cost/layers"])
    assert [Path(p).name for p in written] == ["importance.png", "history.png",
                                               "pareto_front.png"]
    assert all(Path(p).read_bytes()[:8] == PNG for p in written)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "exp" / "tensorboard-study"))
    board.Reload()
    assert sorted(board.Tags()["images"]) == ["study/history", "study/importance",
                                              "study/pareto_front"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_optuna_dashboard_on_loopback_serves_the_experiments_study(tmp_path: Path) -> None:
    executable = shutil.which("optuna-dashboard", path=os.path.dirname(sys.executable))
    assert executable, "optuna-dashboard is in the dev extra"
    experiment = tmp_path / "exp"
    opened = open_storage(str(experiment), "exp", None, ["max"])
    _fill(optuna.create_study(study_name="exp", storage=opened.storage, direction="maximize"), 3)
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api/studies"
    server = subprocess.Popen(
        [executable, str(opened.url), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline, studies = time.time() + 60, None
        while time.time() < deadline and studies is None:
            try:
                with urllib.request.urlopen(api, timeout=5) as r:
                    studies = json.loads(r.read())["study_summaries"]
            except OSError:  # not listening yet
                time.sleep(0.3)
        assert studies is not None, "optuna-dashboard did not answer within 60 s"
        assert [(s["study_name"], s["directions"]) for s in studies] == [("exp", ["maximize"])]
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
