"""MLflow tracking of a search (search/tracking.py) against a real local tracking store: a
SQLite database in a temporary directory, read back with MLflow's own client."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hiersearch import metrics as M
from hiersearch.errors import InputError
from hiersearch.search.run import run_search
from hiersearch.search.space import SpaceFile, load_space, parse_space

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("ray_session"),
    pytest.mark.skipif(
        importlib.util.find_spec("mlflow") is None,
        reason="mlflow is not installed (pip install 'hiersearch[mlflow]', or '.[dev]')",
    ),
]


def _two_trials() -> SpaceFile:
    """The smoke preset's first two variants, one worker each (trained in their Tune trial)."""
    raw = load_space("smoke").raw
    trial = {**raw["trial"], "num_workers": 1, "cpus_per_worker": 1, "epochs": 1, "util_docs": 4}
    return parse_space({**raw, "trial": trial})


def test_mlflow_logs_every_trial_as_a_run_with_params_metrics_and_heatmaps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = run_search(_two_trials(), storage=str(tmp_path / "runs"), name="tracked", trials=2,
                      verbose=0, mlflow=uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tracked")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    assert {run.data.tags["trial/variant"] for run in runs} == {"FLAT", "LAST-THREE"}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["hiersearch.experiment"] == path
        assert run.data.params["variant"] == run.data.tags["trial/variant"]
        dev = client.get_metric_history(run.info.run_id, M.rp_macro_key("dev"))
        assert len(dev) == 2  # the epoch, then the final report
        assert M.rp_macro_key("test") in run.data.metrics  # the final metrics
        assert any(key.startswith("util/") for key in run.data.metrics)
        names = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
        assert {"cls_angle.png", "attention_kl.png", "config.json",
                "final_metrics.json"} <= names


def test_mlflow_without_the_package_is_refused_before_ray_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "mlflow" else find_spec(name, *rest))
    with pytest.raises(InputError, match=r"pip install 'hiersearch\[mlflow\]'"):
        run_search(_two_trials(), storage=str(tmp_path / "runs"), mlflow="sqlite:///x.db")
    assert not (tmp_path / "runs").exists()


def test_metric_keys_become_names_mlflow_accepts() -> None:
    from hiersearch.search.tracking import mlflow_name

    assert mlflow_name("dev/rp@5_L1") == "dev/rp_at_5_L1"
    assert mlflow_name(M.rp_macro_key("dev")) == M.rp_macro_key("dev")
