"""Joining a Ray cluster, or starting a local one that can clean up after stopped trials.

A trial that Tune stops (ASHA, Ctrl-C, a failed driver) dies with its `TorchTrainer`'s
controller, but the placement group holding the trial's CPUs/GPUs belongs to the job, not to the
controller. Ray Train's `PlacementGroupCleaner` frees it after looking the dead controller up
through the state API, i.e. the dashboard. It finds the dashboard by auto-detecting the Ray
instance on its host, which fails when the dashboard is off or another Ray instance runs on the
same machine ("Found multiple active Ray instances"); the placement group then stays reserved and
the next trial waits for resources forever. A local Ray started here therefore always runs its
dashboard on a known loopback port and names it to every process (`RAY_API_SERVER_ADDRESS`).
"""

from __future__ import annotations

import os
import socket
from typing import Any

API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"


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
