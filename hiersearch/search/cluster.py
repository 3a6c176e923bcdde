"""Joining a Ray cluster, or starting a local one that can clean up after stopped trials.

A trial that Tune stops (ASHA, Ctrl-C, a failed driver) dies with its `TorchTrainer`'s
controller, but the placement group holding the trial's CPUs/GPUs belongs to the job, not to the
controller. Ray Train's `PlacementGroupCleaner` frees it after looking the dead controller up
through the state API, i.e. the dashboard. It finds the dashboard by auto-detecting the Ray
instance on its host, which fails when the dashboard is off or another Ray instance runs on the
same machine ("Found multiple active Ray instances"); the placement group then stays reserved and
the next trial waits for resources forever. A local Ray started here therefore always runs its
dashboard on a known loopback port and names it to every process (`RAY_API_SERVER_ADDRESS`).

An autoscaling cluster starts small (cluster.yaml's GPU workers have `min_workers: 0`): what it
could grow to is read from its autoscaler's config (`largest_cluster`), so that the search runs
as many trials at once as the largest cluster would hold, not as many as the head node holds.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"
# `ray up` leaves the cluster launcher config here on the head node, where its autoscaler reads
# it (`ray start --autoscaling-config`, cluster.yaml's head_start_ray_commands).
LAUNCHER_CONFIG = "~/ray_bootstrap_config.yaml"
HEAD_RESOURCE = "node:__internal_head__"  # what every Ray head node has, and only it
SCALED = ("CPU", "GPU")  # the resources a trial asks for


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_local(
    num_cpus: int | None = None, env_vars: dict[str, str] | None = None, **init_kwargs: Any
) -> str:
    """Start a single-node Ray whose state API every worker can reach; return its URL.

    `env_vars` are set in every Ray process too; `init_kwargs` go to `ray.init` (a
    `runtime_env` given there keeps its other entries)."""
    import ray

    host = "127.0.0.1"  # ray.init's own default for the dashboard: never exposed
    port = free_port(host)
    api = f"http://{host}:{port}"
    runtime_env = dict(init_kwargs.pop("runtime_env", None) or {})
    runtime_env["env_vars"] = {
        **runtime_env.get("env_vars", {}), **(env_vars or {}), API_SERVER_ENV: api
    }
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host=host,
        dashboard_port=port,
        runtime_env=runtime_env,
        **init_kwargs,
    )
    # This process too: Tune and Train call the state API from the driver as well.
    os.environ[API_SERVER_ENV] = api
    return api


def started_here() -> str | None:
    """The address of the cluster whose node `ray start` started on this machine, if any:
    where a bare `ray.init()` would connect (e.g. `ray submit` runs the command on the head).

    Ray 2.60 has no public API for it: `ray.init()` looks it up itself, but `connect` must know
    before calling it whether to join (plain `ray.init`) or to start a local Ray with its
    dashboard settings (`start_local`), which `ray.init` refuses when it joins a cluster."""
    try:
        from ray._private.services import find_bootstrap_address
    except ImportError:  # gone in another Ray: a local Ray is started as if none ran
        return None
    return find_bootstrap_address(None) or None


def cluster_address(address: str | None) -> str | None:
    """The cluster `connect` joins: `address`, else RAY_ADDRESS, else the one `ray start`
    started on this machine; None when it would start a local Ray (trials run here)."""
    return address or os.environ.get("RAY_ADDRESS") or started_here()


def connect(address: str | None) -> None:
    """Join the cluster at `address` / RAY_ADDRESS, or the one `ray start` started on this
    machine, or else start a local Ray. On a real cluster every node runs one Ray instance,
    so there the state API is found without help."""
    import ray

    if ray.is_initialized():
        return
    address = cluster_address(address)
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        start_local()


def connected() -> bool:
    """Whether this process is connected to a Ray cluster (Ray is not imported to find out)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def disconnect() -> None:
    """Leave the cluster (stopping a local Ray this process started). Ray's driver threads
    print the raylet's warnings and the workers' log lines until then, and lines that Ray
    holds back to count repeats are printed by it: whatever stdout is at that moment."""
    import ray

    ray.shutdown()


def largest_cluster() -> dict[str, float] | None:
    """The most CPUs and GPUs the joined cluster could have: its head node plus every worker
    node its autoscaler may add. None when no autoscaler config is found (a fixed cluster, a
    local Ray, a driver on another machine than the head node).

    Ray reads an autoscaler's limits from the GCS (`get_max_resources_from_cluster_config`,
    which Ray Train checks a worker group against), but Ray 2.60's own autoscalers (v1, and
    v2 that `ray up` starts) never report them there: on the head node of a `ray up` cluster,
    where `ray submit` and `ray job submit` run the search, they are read from the launcher
    config that the autoscaler reads."""
    import ray

    if ray.util.client.ray.is_connected():  # Ray Client: the cluster's GCS is not reachable
        return None
    head = _head_node()
    workers = _reported_workers_limit()
    if workers is None and head is not None and _runs_on(head):
        workers = launcher_workers_limit(Path(LAUNCHER_CONFIG).expanduser())
    if workers is None:
        return None
    # Reported limits leave the head out (it is never scaled); it runs trials all the same.
    own = head["Resources"] if head else {}
    return {key: float(own.get(key, 0)) + float(workers.get(key, 0)) for key in SCALED}


def _head_node() -> dict[str, Any] | None:
    import ray

    return next(
        (n for n in ray.nodes() if n.get("Alive") and HEAD_RESOURCE in n.get("Resources", {})),
        None,
    )


def _runs_on(node: dict[str, Any]) -> bool:
    """Whether this driver runs on `node` (so that its files are the node's)."""
    import ray

    return bool(node.get("NodeID") == ray.get_runtime_context().get_node_id())


def _reported_workers_limit() -> dict[str, float] | None:
    """The worker nodes' resources at most, as an autoscaler reported them to the GCS."""
    # Private in Ray 2.60 (Ray Train and Ray Data read it so): ray is pinned (pyproject.toml).
    from ray._private.state import state

    return state.get_max_resources_from_cluster_config()


def launcher_workers_limit(path: Path) -> dict[str, float] | None:
    """The CPUs and GPUs that the worker nodes of a cluster launcher config (a `ray up` YAML)
    could add at most; None if there is no such file. Read by the autoscaler's own reader
    (defaults filled in, validated), so that a config the autoscaler runs reads the same here."""
    if not path.is_file():
        return None
    from ray.autoscaler.v2.instance_manager.config import FileConfigReader

    config = FileConfigReader(str(path)).get_cached_autoscaling_config()
    head = config.get_head_node_type()
    # The reader counts the head node among its type's nodes: it is not a worker to add.
    types = [
        (node_type.resources, node_type.max_worker_nodes - (1 if name == head else 0))
        for name, node_type in (config.get_node_type_configs() or {}).items()
    ]
    return most_resources(types, config.get_max_num_worker_nodes())


def most_resources(
    node_types: Iterable[tuple[Mapping[str, float], int]], max_nodes: int | None
) -> dict[str, float]:
    """The most CPUs and GPUs that nodes of these types (resources, most nodes of the type) add
    together when at most `max_nodes` nodes run in all (None: no such cap): for each resource,
    the nodes richest in it."""
    nodes = [resources for resources, count in node_types for _ in range(max(count, 0))]
    most = {}
    for key in SCALED:
        amounts = sorted((float(node.get(key, 0)) for node in nodes), reverse=True)
        most[key] = sum(amounts[:max_nodes])
    return most
