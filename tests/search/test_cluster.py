"""The local Ray that `hiersearch` starts lets Ray Train's placement-group cleaner, a detached
actor, look actors up through the state API: without it a trial stopped by ASHA keeps its CPUs
and the next trial waits forever. Joining a cluster; and where the largest size an autoscaling
cluster may grow to is read (the cluster's resources, its nodes and the GCS's key-value store
mocked)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray._private.state import state
from ray.core.generated import autoscaler_pb2

from hiersearch.search import cluster
from hiersearch.search.cluster import (
    API_SERVER_ENV,
    free_port,
    largest_cluster,
    launcher_workers_limit,
    most_resources,
)

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"
HEAD_CPUS = 8.0  # cluster.yaml's head, an m5.2xlarge: `ray up` fills its CPUs in
HEAD = {"NodeID": "head", "Alive": True,
        "Resources": {"CPU": HEAD_CPUS, "node:__internal_head__": 1.0}}


def test_free_port_can_be_bound() -> None:
    import socket

    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.usefixtures("ray_session")
def test_a_detached_actor_finds_the_state_api_of_the_local_ray() -> None:
    import ray
    from ray.train.v2._internal.state.util import is_actor_alive

    @ray.remote(num_cpus=0)
    class Probe:
        def env(self) -> str | None:
            return os.environ.get(API_SERVER_ENV)

        def alive(self, actor_id: str) -> Any:
            return is_actor_alive(actor_id, timeout=30)  # what PlacementGroupCleaner calls

    target = Probe.remote()
    probe = Probe.options(lifetime="detached").remote()
    try:
        target_id = target._actor_id.hex()
        assert ray.get(probe.env.remote()) == os.environ[API_SERVER_ENV]
        assert ray.get(probe.alive.remote(target_id)) is True
        ray.kill(target)
        assert not ray.get(probe.alive.remote(target_id))
    finally:
        ray.kill(probe)


def _record_init(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    import ray

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(API_SERVER_ENV, "")  # recorded, so whatever connect() sets is undone
    monkeypatch.delenv(API_SERVER_ENV)
    return calls


def test_connect_joins_the_given_address(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _record_init(monkeypatch)
    cluster.connect("10.0.0.1:6379")
    assert calls == [{"address": "10.0.0.1:6379", "log_to_driver": True}]


def test_connect_joins_the_cluster_ray_start_started_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _record_init(monkeypatch)
    monkeypatch.setattr(cluster, "started_here", lambda: "10.0.0.2:6379")
    cluster.connect(None)
    assert calls == [{"address": "10.0.0.2:6379", "log_to_driver": True}]


def test_connect_starts_a_local_ray_with_its_dashboard_named_to_every_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _record_init(monkeypatch)
    monkeypatch.setattr(cluster, "started_here", lambda: None)
    cluster.connect(None)
    (call,) = calls
    api = f"http://{call['dashboard_host']}:{call['dashboard_port']}"
    assert call["include_dashboard"] is True and call["dashboard_host"] == "127.0.0.1"
    assert call["runtime_env"] == {"env_vars": {API_SERVER_ENV: api}}
    assert os.environ[API_SERVER_ENV] == api


# --- where the cluster's largest size is read ---------------------------------------------


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


def test_the_largest_cluster_is_the_head_and_what_its_autoscaler_may_add(
    monkeypatch: pytest.MonkeyPatch, launcher: dict[str, Any]
) -> None:
    # what an autoscaler reports may hold custom resources too, which trials do not ask for
    reported = {**_reported_limits(launcher), "accelerator_type:A100": 2}
    _cluster(monkeypatch, {"CPU": HEAD_CPUS}, reported)
    assert largest_cluster() == {"CPU": HEAD_CPUS + 224, "GPU": 24.0}


def test_without_an_autoscaler_config_there_is_no_largest_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _cluster(monkeypatch, {"CPU": 16.0, "GPU": 1.0}, None)
    assert largest_cluster() is None

