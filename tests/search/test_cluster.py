"""The local Ray that `hiersearch` starts lets Ray Train's placement-group cleaner, a detached
actor, look actors up through the state API: without it a trial stopped by ASHA keeps its CPUs
and the next trial waits forever."""

from __future__ import annotations

import os
from typing import Any

import pytest

from hiersearch.search import cluster
from hiersearch.search.cluster import API_SERVER_ENV, free_port


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
