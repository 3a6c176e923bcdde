"""How many trials a search runs at once, on a fixed cluster and on an autoscaling one that
starts with no GPU (cluster.yaml's GPU workers have `min_workers: 0`). No Ray starts: the
cluster's resources, its nodes and the GCS's key-value store are mocked."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray._private.state import state
from ray.core.generated import autoscaler_pb2

from hiersearch.search import cluster
from hiersearch.search.cluster import largest_cluster, launcher_workers_limit, most_resources
from hiersearch.search.driver import max_concurrent, trials_that_fit
from hiersearch.search.space import load_space, preset_path
from hiersearch.trial.config import TrialConfig

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"
HEAD_CPUS = 8.0  # cluster.yaml's head, an m5.2xlarge: `ray up` fills its CPUs in
HEAD = {"NodeID": "head", "Alive": True,
        "Resources": {"CPU": HEAD_CPUS, "node:__internal_head__": 1.0}}


@pytest.fixture(scope="module")
def launcher() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _worker_types(launcher: dict[str, Any]) -> dict[str, dict[str, Any]]:
    head = launcher["head_node_type"]
    return {n: t for n, t in launcher["available_node_types"].items() if n != head}


def _reported_limits(launcher: dict[str, Any]) -> dict[str, float]:
    """What Ray's `get_max_resources_from_cluster_config` returns for cluster.yaml's worker
    types: each resource times its type's max_workers, summed (8 x g5.xlarge, 2 x p4d)."""
    types = _worker_types(launcher).values()
    keys = {key for t in types for key in t["resources"]}
    return {key: sum(t["max_workers"] * t["resources"].get(key, 0) for t in types)
            for key in keys}


def _paper() -> TrialConfig:
    """The paper preset's trial: one worker, 4 CPUs and 1 GPU (issue 22's 30-trial grid)."""
    return load_space(preset_path("paper")).base_config()


def _joined(
    monkeypatch: pytest.MonkeyPatch,
    now: dict[str, float],
    launcher_config: Path | None = None,
    driver_node: str = "head",
) -> None:
    """A joined cluster with `now` resources, its head node running the driver unless
    `driver_node` says otherwise; `launcher_config` is where `ray up` left its config (None:
    nowhere)."""
    monkeypatch.setattr(ray, "cluster_resources", lambda: dict(now))
    monkeypatch.setattr(ray, "nodes", lambda: [{**HEAD, "Resources": {**HEAD["Resources"]}}])
    monkeypatch.setattr(
        ray, "get_runtime_context",
        lambda: type("Context", (), {"get_node_id": lambda self: driver_node})(),
    )
    where = launcher_config or Path("/nonexistent/ray_bootstrap_config.yaml")
    monkeypatch.setattr(cluster, "LAUNCHER_CONFIG", str(where))


def _cluster(
    monkeypatch: pytest.MonkeyPatch,
    now: dict[str, float],
    reported: dict[str, float] | None,
    launcher_config: Path | None = None,
    driver_node: str = "head",
) -> None:
    """`_joined`, and what its autoscaler reported to the GCS as Ray reads it (None:
    nothing)."""
    _joined(monkeypatch, now, launcher_config, driver_node)
    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: reported)


def test_an_autoscaling_cluster_without_gpus_yet_runs_what_its_largest_size_holds(
    monkeypatch: pytest.MonkeyPatch, launcher: dict[str, Any]
) -> None:
    # what an autoscaler reports may hold custom resources too, which trials do not ask for
    reported = {**_reported_limits(launcher), "accelerator_type:A100": 2}
    _cluster(monkeypatch, {"CPU": HEAD_CPUS}, reported)
    # 24 GPUs at most (8 x 1 + 2 x 8), 232 CPUs (the head's 8 too): the GPUs decide
    assert max_concurrent(_paper(), None, 30) == 24


def test_tune_max_concurrent_caps_an_autoscaling_cluster(
    monkeypatch: pytest.MonkeyPatch, launcher: dict[str, Any]
) -> None:
    _cluster(monkeypatch, {"CPU": HEAD_CPUS}, _reported_limits(launcher))
    assert max_concurrent(_paper(), 6, 30) == 6


def test_no_more_trials_run_at_once_than_the_run_has(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # max_count -1 (no upper bound) reads as sys.maxsize
    _cluster(monkeypatch, {"CPU": HEAD_CPUS}, {"CPU": sys.maxsize, "GPU": sys.maxsize})
    assert max_concurrent(_paper(), None, 30) == 30
    assert capsys.readouterr().err.startswith(
        "trials at once: 30 (the run's trials; any number fit the unlimited CPUs and unlimited "
        "GPUs its autoscaler may grow the cluster to"
    )


def test_without_an_autoscaler_config_the_cluster_as_it_is_decides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _cluster(monkeypatch, {"CPU": 16.0, "GPU": 1.0}, None)
    base = TrialConfig(use_gpu=True, cpus_per_worker=1)
    assert max_concurrent(base, None) == 1
    assert max_concurrent(base.replace(gpus_per_worker=0.25), None) == 4
    assert max_concurrent(base.replace(use_gpu=False), None) == 16


def test_the_cluster_as_it_is_counts_when_larger_than_its_autoscaler_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a GPU node added by hand, beyond what the autoscaler config names
    _cluster(monkeypatch, {"CPU": 40.0, "GPU": 4.0}, {"CPU": 8.0, "GPU": 1.0})
    assert max_concurrent(_paper(), None) == 4


def test_the_search_says_how_many_trials_run_at_once_and_why(
    monkeypatch: pytest.MonkeyPatch, launcher: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _cluster(monkeypatch, {"CPU": HEAD_CPUS}, _reported_limits(launcher))
    max_concurrent(_paper(), None, 30)
    assert capsys.readouterr().err == (
        "trials at once: 24 (24 fit the 232 CPUs and 24 GPUs its autoscaler may grow the "
        "cluster to, 4 CPUs and 1 GPU each; it has 8 CPUs and 0 GPUs now)\n"
    )
    max_concurrent(_paper(), 6, 30)
    assert capsys.readouterr().err.startswith("trials at once: 6 (tune.max_concurrent; 24 fit")


def test_trials_that_can_never_run_are_noted_not_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _cluster(monkeypatch, {"CPU": 16.0}, None)  # use_gpu on a fixed cluster without GPUs
    assert max_concurrent(_paper(), None, 30) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "trials at once: 1 (0 fit the cluster's 16 CPUs and 0 GPUs, 4 CPUs and " \
                       "1 GPU each)"
    assert lines[1].startswith("note: not one trial (4 CPUs and 1 GPU) fits the cluster's 16 "
                               "CPUs and 0 GPUs, and no autoscaler config was found")
    assert "never come" in lines[1] and "use_gpu" in lines[1]


def test_a_trial_holds_its_workers_cpus_and_gpus() -> None:
    ddp = TrialConfig(use_gpu=True, num_workers=2, cpus_per_worker=2)
    assert trials_that_fit(ddp, {"CPU": 16.0, "GPU": 4.0}) == 2
    assert trials_that_fit(ddp, {"CPU": 7.9, "GPU": 8.0}) == 1
    assert trials_that_fit(ddp, {"CPU": 16.0}) == 0
    quarter = TrialConfig(use_gpu=True, cpus_per_worker=2, gpus_per_worker=0.25)
    assert trials_that_fit(quarter, {"CPU": 16.0, "GPU": 1.0}) == 4


# --- where the cluster's largest size is read ---------------------------------------------


class _KeyValueStore:
    """The GCS key-value store, as Ray's GlobalState reads it, holding one value."""

    def __init__(self, namespace: str, key: str, value: bytes) -> None:
        self._items = {(namespace.encode(), key.encode()): value}

    def get_internal_kv(self, namespace: bytes, key: bytes) -> bytes | None:
        return self._items.get((namespace, key))


def _reported_config(launcher: dict[str, Any]) -> autoscaler_pb2.ClusterConfig:
    """cluster.yaml as an autoscaler reports it to the GCS (Ray after 2.60, autoscaler v2's
    `_autoscaling_config_to_cluster_config`): one group per worker type, the head left out,
    whole resources, no max_resources."""
    config = autoscaler_pb2.ClusterConfig()
    for name, node_type in _worker_types(launcher).items():
        group = config.node_group_configs.add()
        group.name = name
        for key, value in node_type["resources"].items():
            group.resources[key] = int(value)
        group.min_count = node_type["min_workers"]
        group.max_count = node_type["max_workers"]
    return config


def test_reads_the_cluster_config_an_autoscaler_reports_to_the_gcs(
    monkeypatch: pytest.MonkeyPatch, launcher: dict[str, Any]
) -> None:
    _joined(monkeypatch, {"CPU": HEAD_CPUS})  # Ray reads the value below itself
    value = _reported_config(launcher).SerializeToString()
    store = _KeyValueStore(ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE,
                           ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, value)
    monkeypatch.setattr(state, "_connect_and_get_accessor", lambda: store)
    assert largest_cluster() == {"CPU": HEAD_CPUS + 224, "GPU": 24.0}
    assert max_concurrent(_paper(), None, 30) == 24


def _bootstrap_config(launcher: dict[str, Any], tmp_path: Path) -> Path:
    """cluster.yaml as `ray up` leaves it on the head node: defaults filled in, the head's
    resources detected from its instance type, written as JSON."""
    from ray.autoscaler._private.util import prepare_config

    config = prepare_config(json.loads(json.dumps(launcher)))
    config["available_node_types"][config["head_node_type"]]["resources"] = {"CPU": HEAD_CPUS}
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(json.dumps(config))
    return path


def test_on_the_head_node_reads_the_launcher_config_its_autoscaler_reads(
    monkeypatch: pytest.MonkeyPatch, launcher: dict[str, Any], tmp_path: Path
) -> None:
    # Ray 2.60's autoscalers report nothing to the GCS
    _cluster(monkeypatch, {"CPU": HEAD_CPUS}, None, _bootstrap_config(launcher, tmp_path))
    assert largest_cluster() == {"CPU": HEAD_CPUS + 224, "GPU": 24.0}
    assert max_concurrent(_paper(), None, 30) == 24


def test_a_driver_off_the_head_node_reads_no_launcher_config(
    monkeypatch: pytest.MonkeyPatch, launcher: dict[str, Any], tmp_path: Path
) -> None:
    config = _bootstrap_config(launcher, tmp_path)
    _cluster(monkeypatch, {"CPU": HEAD_CPUS}, None, config, driver_node="another")
    assert largest_cluster() is None


def test_the_global_max_workers_caps_the_nodes_counted(
    launcher: dict[str, Any], tmp_path: Path
) -> None:
    a10g, a100x8 = {"CPU": 4, "GPU": 1}, {"CPU": 96, "GPU": 8}
    assert most_resources([(a10g, 8), (a100x8, 2)], None) == {"CPU": 224.0, "GPU": 24.0}
    # four nodes at most: for each resource, the nodes richest in it
    assert most_resources([(a10g, 8), (a100x8, 2)], 4) == {"CPU": 200.0, "GPU": 18.0}
    capped = _bootstrap_config({**launcher, "max_workers": 4}, tmp_path)
    assert launcher_workers_limit(capped) == {"CPU": 200.0, "GPU": 18.0}
    assert launcher_workers_limit(tmp_path / "absent.yaml") is None


def test_tune_keeps_as_many_trials_pending_as_may_run_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What lets an autoscaler see every trial's demand at once: the searcher Tune wraps in a
    ConcurrencyLimiter for `max_concurrent_trials` (ray/tune/tune.py) sets the number of
    pending trials; without the limit a searcher keeps one."""
    from ray.tune.execution.tune_controller import _get_max_pending_trials
    from ray.tune.search import ConcurrencyLimiter, Searcher, SearchGenerator

    class _Searcher(Searcher):
        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            return {}

    monkeypatch.delenv("TUNE_MAX_PENDING_TRIALS_PG", raising=False)
    limited = SearchGenerator(ConcurrencyLimiter(_Searcher(), max_concurrent=24))
    assert _get_max_pending_trials(limited) == 24
    assert _get_max_pending_trials(SearchGenerator(_Searcher())) == 1
    monkeypatch.setenv("TUNE_MAX_PENDING_TRIALS_PG", "7")  # the user's value wins
    assert _get_max_pending_trials(limited) == 7
