"""A real two-node Ray cluster on one machine, each node in its own network namespace.

Ray rewrites 127.0.0.1 to the machine's external address, so two nodes cannot share
loopback; and traffic may go nowhere but loopback and addresses this harness creates. So each
node lives in a network namespace of its own, joined to the other by a veth pair whose both
ends sit inside the namespaces (nothing is added on the host side). A namespace has no route
but its /24, so nothing Ray does in there can reach any other address.

Network namespaces alone would leave both nodes one disk, which hides the classic multi-node
bug (a trial on a worker node opening a path that only exists on the head). So each node also
gets a mount namespace in which the other node's private directory (its Ray temp dir, HOME,
unpacked working_dir) is covered by an empty tmpfs. What both nodes do see is what every node of
a real cluster has: the installed software (the editable install in .venv, like a node image),
the token file (copied to each node by `ray up`) and the storage directory (NFS or a bucket).

Every process this harness starts runs inside a namespace it created; teardown finds them with
`ip netns pids` and signals them by pid, so no unrelated process is ever touched. Nothing here
reads or writes ~/.ray: the token lives in the harness's own directory, and every process it
starts has a HOME there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The /24 exists only inside the namespaces, so runs side by side cannot clash; the third octet
# still varies per run, to tell runs apart in Ray's logs.
SUBNET_PREFIX = "10.213"
HEAD_PORT = 6379
DASHBOARD_PORT = 8265
# Ray's default object store is 30% of RAM per node; two nodes on a 24 GiB CI box would pin
# 14 GiB of /dev/shm for a test that moves a few MiB.
OBJECT_STORE_BYTES = 300 * 1024 * 1024
VENV_BIN = Path(sys.executable).parent
NS_PREFIX = "hsmn-"
_NS_NAME = re.compile(rf"^{NS_PREFIX}(\d+)-[0-9a-f]{{6}}-[hw]$")


def unavailable_reason() -> str | None:
    """Why this machine cannot build the cluster, or None when it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs the `ip` command (iproute2) to create network namespaces"
    if not (VENV_BIN / "ray").exists():
        return f"needs the `ray` CLI beside {sys.executable}"
    return None


class ClusterError(RuntimeError):
    """The cluster could not be built or a command in it failed; the message carries logs."""


def _run(
    argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv),
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(
            f"timed out after {timeout:.0f}s: {' '.join(argv)}\n"
            f"stdout:\n{_text(exc.stdout)}\nstderr:\n{_text(exc.stderr)}"
        ) from exc
    if check and proc.returncode != 0:
        raise ClusterError(
            f"exit {proc.returncode}: {' '.join(argv)}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


@dataclass
class Node:
    ns: str
    addr: str
    ifname: str  # its end of the veth pair
    private: Path  # hidden from the other node

    @property
    def temp_dir(self) -> Path:
        return self.private / "ray"

    @property
    def home(self) -> Path:
        return self.private / "home"


@dataclass
class TwoNodeCluster:
    """Head and worker Ray nodes in two network namespaces; use via `two_node_cluster()`.

    Layout of `root` (a short path: Ray's Unix sockets live under the temp dirs):
    auth_token, storage/ (shared by both nodes), client/ (the submitting side),
    h/ and w/ (each node's private directory).
    """

    root: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    num_cpus: int = 2

    def __post_init__(self) -> None:
        octet = int(self.tag, 16) % 200 + 20
        self.subnet = f"{SUBNET_PREFIX}.{octet}"
        # The owner's pid in the name lets a later run reap what a killed run left behind.
        prefix = f"{NS_PREFIX}{os.getpid()}-{self.tag}"
        self.head = Node(f"{prefix}-h", f"{self.subnet}.1", f"hs{self.tag}h", self.root / "h")
        self.worker = Node(f"{prefix}-w", f"{self.subnet}.2", f"hs{self.tag}w", self.root / "w")
        self.token_path = self.root / "auth_token"
        self.storage = self.root / "storage"
        self.client = self.root / "client"
        self._created: list[str] = []

    # -- environment ------------------------------------------------------------------------

    def env(self, node: Node | None = None) -> dict[str, str]:
        """The environment of a node's Ray processes, or of a client (node None). Job drivers
        and workers inherit their node's: the harness test checks that the driver sees
        RAY_AUTH_* without the client passing them on."""
        # Nothing Ray- or hiersearch-specific leaks in from the test process (conftest.py
        # turns auth off and points HIERSEARCH_DATA at a host-only dir): a node gets exactly
        # what a real node would.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RAY_", "HIERSEARCH_")) and k != "VIRTUAL_ENV"
        }
        env.update(
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
            HOME=str(node.home if node else self.client / "home"),
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_path),
            RAY_USAGE_STATS_ENABLED="0",
        )
        if node is not None:
            env.update(
                # Ray's default temp dir is $RAY_TMPDIR/ray: code that looks up "the local
                # cluster" (Ray Train's state API calls in actors) must find this node's, not
                # /tmp/ray, where another Ray on the host may live.
                RAY_TMPDIR=str(node.private),
                # Gloo advertises the address the hostname resolves to, 127.0.0.1 on this
                # machine; a real node resolves to its own address. Point it at the veth.
                GLOO_SOCKET_IFNAME=node.ifname,
            )
        return env

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head.addr}:{DASHBOARD_PORT}"

    @property
    def gcs_address(self) -> str:
        return f"{self.head.addr}:{HEAD_PORT}"

    # -- building ---------------------------------------------------------------------------

    def build_network(self) -> None:
        for node in (self.head, self.worker):
            _run(["ip", "netns", "add", node.ns], timeout=10)
            self._created.append(node.ns)
            _run(["ip", "-n", node.ns, "link", "set", "lo", "up"], timeout=10)
        # Create the pair straight into the namespaces so that no interface ever exists on
        # the host; deleting either namespace later deletes the pair.
        head_if, worker_if = self.head.ifname, self.worker.ifname
        _run(
            [
                "ip",
                "link",
                "add",
                head_if,
                "netns",
                self.head.ns,
                "type",
                "veth",
                "peer",
                "name",
                worker_if,
                "netns",
                self.worker.ns,
            ],
            timeout=10,
        )
        for node, ifname in ((self.head, head_if), (self.worker, worker_if)):
            _run(
                ["ip", "-n", node.ns, "addr", "add", f"{node.addr}/24", "dev", ifname], timeout=10
            )
            _run(["ip", "-n", node.ns, "link", "set", ifname, "up"], timeout=10)

    def write_token(self) -> None:
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)

    def exec_in(
        self, node: Node, argv: Sequence[str], *, timeout: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a client command in `node`'s network namespace (seeing the whole disk)."""
        return _run(
            ["ip", "netns", "exec", node.ns, *argv], timeout=timeout, env=self.env(), check=check
        )

    def ray(
        self, node: Node, *args: str, timeout: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.exec_in(node, [str(VENV_BIN / "ray"), *args], timeout=timeout, check=check)

    def start_node(self, node: Node, other: Node, args: Sequence[str], *, timeout: float) -> None:
        """`ray start` in `node`'s namespaces; its daemons keep the mount namespace."""
        # `ip netns exec` gives each invocation its own mount namespace (a slave of the host's,
        # so nothing mounted here shows outside); the daemons `ray start` leaves behind
        # inherit it, and the tmpfs dies with the last of them.
        hide = 'mount -t tmpfs -o size=1m,mode=0755 hs-private "$1" && shift && exec "$@"'
        argv = [
            "ip",
            "netns",
            "exec",
            node.ns,
            "sh",
            "-c",
            hide,
            "sh",
            str(other.private),
            str(VENV_BIN / "ray"),
            "start",
            f"--node-ip-address={node.addr}",
            f"--temp-dir={node.temp_dir}",
            *args,
        ]
        _run(argv, timeout=timeout, env=self.env(node))

    def start(self, node_timeout: float = 90.0) -> None:
        for path in (self.storage, self.client / "home", self.head.home, self.worker.home):
            path.mkdir(parents=True, exist_ok=True)
        self.write_token()
        self.build_network()
        common = [
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats",
        ]
        self.start_node(
            self.head,
            self.worker,
            [
                "--head",
                f"--port={HEAD_PORT}",
                f"--dashboard-host={self.head.addr}",
                f"--dashboard-port={DASHBOARD_PORT}",
                *common,
            ],
            timeout=node_timeout,
        )
        self.start_node(
            self.worker,
            self.head,
            [f"--address={self.gcs_address}", *common],
            timeout=node_timeout,
        )
        self.wait_for_nodes(2, timeout=node_timeout)

    def alive_nodes(self) -> list[dict[str, object]]:
        """The alive nodes as the dashboard's state API reports them, asked from the head."""
        proc = self.ray(
            self.head,
            "list",
            "nodes",
            "--address",
            self.dashboard_url,
            "--format",
            "json",
            "--filter",
            "state=ALIVE",
            timeout=30,
            check=False,
        )
        if proc.returncode != 0:
            return []
        try:
            return list(json.loads(proc.stdout))
        except json.JSONDecodeError:
            return []

    def wait_for_nodes(self, count: int, *, timeout: float) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        nodes: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            nodes = self.alive_nodes()
            if len(nodes) >= count:
                return nodes
            time.sleep(1.0)
        raise ClusterError(
            f"{len(nodes)} of {count} nodes alive after {timeout:.0f}s\n" + self.logs_tail()
        )

    # -- jobs -------------------------------------------------------------------------------

    def submit(
        self,
        entrypoint: Sequence[str],
        *,
        timeout: float,
        submission_id: str | None = None,
        extra: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """`ray job submit` from inside the head's namespace; waits for the job to finish.

        Returns the finished client process (exit 0 iff the job succeeded) without raising,
        so callers can show the job's log on failure.
        """
        sid = submission_id or f"hs-{self.tag}-{secrets.token_hex(2)}"
        return self.ray(
            self.head,
            "job",
            "submit",
            "--address",
            self.dashboard_url,
            "--submission-id",
            sid,
            *extra,
            "--",
            *entrypoint,
            timeout=timeout,
            check=False,
        )

    # -- teardown ---------------------------------------------------------------------------

    def pids(self) -> list[int]:
        """Processes inside the namespaces this harness created, and only those."""
        found = [pid for name in self._created for pid in _netns_pids(name)]
        return sorted(set(found) - {os.getpid()})

    def logs_tail(self, lines: int = 30) -> str:
        """The end of the main Ray logs of both nodes, for failure messages."""
        out = []
        for node in (self.head, self.worker):
            logs = node.temp_dir / "session_latest" / "logs"
            for name in ("raylet.err", "raylet.out", "gcs_server.err", "dashboard.log"):
                path = logs / name
                if path.exists():
                    # raylet.out repeats a long "[state-dump]" of counters; skip it.
                    text = [
                        line
                        for line in path.read_text(errors="replace").splitlines()
                        if "[state-dump]" not in line
                    ]
                    tail = text[-lines:]
                    out.append(f"--- {node.ns}: {name}\n" + "\n".join(tail))
        return "\n".join(out)

    def teardown(self, grace: float = 3.0) -> list[str]:
        """Stop every process in the namespaces, delete the namespaces (and with them the veth
        pair). Returns problems found, never raises, so it is safe in a finally block."""
        problems: list[str] = []
        # `ray stop` would scan and signal every Ray process on the host, ours or not, so
        # signal exactly the pids inside our namespaces instead.
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if _alive(p)]
                time.sleep(0.2)
            if not pids:
                break
        left = [p for p in self.pids() if _alive(p)]
        if left:
            problems.append(f"processes survived SIGKILL: {left}")
        for name in reversed(self._created):
            proc = _run(["ip", "netns", "del", name], timeout=10, check=False)
            if proc.returncode != 0:
                problems.append(f"ip netns del {name}: {proc.stderr.strip()}")
        self._created.clear()
        return problems


def _netns_pids(name: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", name], timeout=10, check=False)
    return [int(p) for p in proc.stdout.split() if p.strip().isdigit()]


def reap_stale(grace: float = 3.0) -> list[str]:
    """Delete the namespaces (and stop the processes in them) of harness runs whose owning
    process is gone, e.g. a test run killed by a CI timeout. Returns the names reaped."""
    listing = _run(["ip", "netns", "list"], timeout=10, check=False).stdout
    stale = []
    for line in listing.splitlines():
        name = line.split(" ", 1)[0]
        match = _NS_NAME.match(name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            stale.append(name)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        pids = [pid for name in stale for pid in _netns_pids(name)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            time.sleep(0.2)
        if not pids:
            break
    for name in stale:
        _run(["ip", "netns", "del", name], timeout=10, check=False)
    return stale


def _alive(pid: int) -> bool:
    # Our children that exited are zombies until reaped; they count as gone. Daemons were
    # reparented, so reaping only ever concerns `ip netns exec` children we already waited on.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


@contextlib.contextmanager
def two_node_cluster(*, num_cpus: int = 2) -> Iterator[TwoNodeCluster]:
    """A started two-node cluster, torn down on exit even when starting it fails.

    Its directory is a short one under /tmp rather than pytest's tmp_path, because Ray puts
    Unix sockets under --temp-dir and a socket path may not exceed 107 bytes.
    """
    reap_stale()
    root = Path(tempfile.mkdtemp(prefix="hsmn", dir="/tmp"))
    cluster = TwoNodeCluster(root=root, num_cpus=num_cpus)
    try:
        cluster.start()
        yield cluster
    except BaseException:
        problems = cluster.teardown()
        # Keep the directory: its session_latest/logs are what explains the failure.
        print(f"multinode: kept {root} for its Ray logs", file=sys.stderr)
        if problems:
            print("multinode teardown: " + "; ".join(problems), file=sys.stderr)
        raise
    problems = cluster.teardown()
    shutil.rmtree(root, ignore_errors=True)
    if problems:
        # A leaked namespace or Ray process would outlive the run: fail the test for it.
        raise ClusterError("teardown: " + "; ".join(problems))
