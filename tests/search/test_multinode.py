"""A real two-node Ray cluster (two network namespaces on this machine), driven the way
docs/cluster.md tells a user to drive a cloud cluster: `ray start` with token auth on each
node, then `ray job submit` to the head's dashboard. See tests/multinode.py for the harness.

The harness test proves the cluster itself with a small job; the search test runs the smoke
search on it and reads the leaderboard from the shared storage.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from multinode import VENV_BIN, TwoNodeCluster, two_node_cluster, unavailable_reason

from hiersearch.report.results import NOT_TRIALS  # the baseline and ensemble rows

REPO = Path(__file__).resolve().parents[2]
_UNAVAILABLE = unavailable_reason()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.cluster,
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or ""),
]

# The job's driver. Functions are defined inside main() so that cloudpickle ships them by
# value: the worker node never sees this file, only the uploaded working_dir.
JOB = textwrap.dedent(
    """
    import hashlib
    import json
    import os
    import sys
    from pathlib import Path

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


    def main() -> None:
        storage, head_private = sys.argv[1], sys.argv[2]
        ray.init()

        @ray.remote(num_cpus=1)
        def probe(blob: bytes, tag: str) -> dict:
            import probe_mod  # only in the uploaded working_dir

            node = ray.get_runtime_context().get_node_id()
            Path(storage, f"{tag}-{node}").write_text(node)
            return {
                "node": node,
                "ip": ray.util.get_node_ip_address(),
                "sha": hashlib.sha256(blob).hexdigest(),
                "module": probe_mod.VALUE,
                "sees_head_private": os.path.exists(head_private),
                "auth_mode": os.environ.get("RAY_AUTH_MODE"),
            }

        nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        # Bigger than the inline limit, so workers fetch it through the object managers.
        data = os.urandom(4 << 20)
        blob = ray.put(data)
        pinned = ray.get([
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False))
            .remote(blob, "pinned")
            for n in nodes
        ])
        spread = ray.get([
            probe.options(scheduling_strategy="SPREAD").remote(blob, "spread")
            for _ in range(4)
        ])
        result = {
            "nodes": nodes,
            "sha": hashlib.sha256(data).hexdigest(),
            "pinned": pinned,
            "spread": spread,
            "driver_env": {k: os.environ.get(k) for k in
                           ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "HOME")},
        }
        Path(storage, "result.json").write_text(json.dumps(result))
        print(json.dumps(result))


    main()
    """
)


def _job_log(proc: subprocess.CompletedProcess[str], cluster: TwoNodeCluster) -> str:
    return (
        f"ray job submit exited {proc.returncode}\nstdout:\n{proc.stdout[-6000:]}\n"
        f"stderr:\n{proc.stderr[-3000:]}\n{cluster.logs_tail()}"
    )


def _namespaces() -> str:
    return subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10
    ).stdout


@pytest.fixture(scope="module")
def cluster() -> Iterator[TwoNodeCluster]:
    """One cluster for both tests (a start costs 10-20 s): one CPU a node, so that the search's
    two 1-CPU trials can only run at the same time on different nodes. Torn down, it must leave
    no namespace (the veth pair goes with them), ~/.ray untouched and no directory behind."""
    user_token = Path.home() / ".ray" / "auth_token"
    had_user_token = user_token.exists()
    with two_node_cluster(num_cpus=1) as started:
        names = (started.head.ns, started.worker.ns)
        yield started
    assert not any(name in _namespaces() for name in names)
    assert user_token.exists() == had_user_token
    assert not started.root.exists()


def test_two_node_cluster_runs_a_job_on_both_nodes(cluster: TwoNodeCluster) -> None:
    names = (cluster.head.ns, cluster.worker.ns)
    assert all(name in _namespaces() for name in names)
    workdir = cluster.client / "job"
    workdir.mkdir()
    (workdir / "job.py").write_text(JOB)
    (workdir / "probe_mod.py").write_text(f"VALUE = {cluster.tag!r}\n")
    (cluster.head.private / "marker").write_text("head only")

    proc = cluster.submit(
        ["python", "job.py", str(cluster.storage), str(cluster.head.private / "marker")],
        extra=["--working-dir", str(workdir)],
        timeout=150,
    )
    assert proc.returncode == 0, _job_log(proc, cluster)
    result = json.loads((cluster.storage / "result.json").read_text())

    # A client holding a different token is turned away: auth is really on.
    wrong = cluster.client / "wrong_token"
    wrong.write_text("0" * 64)
    refused = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            cluster.head.ns,
            str(VENV_BIN / "ray"),
            "job",
            "list",
            "--address",
            cluster.dashboard_url,
        ],
        env={**cluster.env(), "RAY_AUTH_TOKEN_PATH": str(wrong)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    written = sorted(p.name for p in cluster.storage.iterdir())

    assert refused.returncode != 0, refused.stdout
    assert "403" in refused.stdout + refused.stderr or "nvalid" in refused.stderr

    head_id, worker_id = (
        next(p["node"] for p in result["pinned"] if p["ip"] == addr)
        for addr in (cluster.head.addr, cluster.worker.addr)
    )
    assert sorted(result["nodes"]) == sorted([head_id, worker_id])
    for probe in result["pinned"] + result["spread"]:
        assert probe["sha"] == result["sha"]  # the object crossed the veth intact
        assert probe["module"] == cluster.tag  # working_dir reached the node
        assert probe["auth_mode"] == "token"
        # Each node has a disk of its own; only the storage directory is shared.
        assert probe["sees_head_private"] is (probe["node"] == head_id)
    assert {p["node"] for p in result["spread"]} == {head_id, worker_id}
    assert {f"pinned-{head_id}", f"pinned-{worker_id}"} <= set(written)

    # The driver was given no token env by the client: it inherited the head's.
    assert result["driver_env"]["RAY_AUTH_MODE"] == "token"
    assert result["driver_env"]["RAY_AUTH_TOKEN_PATH"] == str(cluster.token_path)
    assert result["driver_env"]["RAY_ADDRESS"] == cluster.gcs_address
    assert result["driver_env"]["HOME"] == str(cluster.head.home)


def _search_available() -> bool:
    try:
        from hiersearch.search import run_search  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _search_available(), reason="hiersearch search not available")
def test_search_runs_trials_on_both_nodes(cluster: TwoNodeCluster) -> None:
    # One CPU per node and two 1-CPU trials (2 workers x 0.5 CPU): they can only run at the
    # same time on different nodes, which Tune does as soon as both are pending.
    # docs/cluster.md's command, the shared directory standing in for NFS: the storage, and
    # (by default under it) the generated corpus that the trials on both nodes read.
    proc = cluster.submit(
        [
            "hiersearch",
            "search",
            "--space",
            "search_spaces/smoke.yaml",
            "--trials",
            "2",
            "--storage",
            str(cluster.storage),
            "--name",
            "multinode",
        ],
        extra=["--working-dir", str(REPO)],
        timeout=300,
    )
    assert proc.returncode == 0, _job_log(proc, cluster)
    board = subprocess.run(
        [
            str(VENV_BIN / "hiersearch"),
            "leaderboard",
            str(cluster.storage / "multinode"),
            "--format",
            "json",
        ],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert board.returncode == 0, board.stderr
    rows = [r for r in json.loads(board.stdout)["rows"] if r["status"] not in NOT_TRIALS]
    assert len(rows) == 2, rows
    # The leaderboard shows the trials' "trial/node_id" result as its node_id column.
    node = "node_id" if "node_id" in rows[0] else "trial/node_id"
    assert len({row[node] for row in rows}) == 2, rows
    assert {row["status"] for row in rows} == {"terminated"}, rows
