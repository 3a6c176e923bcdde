"""Shared helpers of the benchmarks: environment, repetition, medians, result output.

Every figure of a benchmark is a ratio of two things measured side by side in one run
(alternating, several repetitions, median), because the machine they run on is shared and
absolute timings drift with its load; the load average is recorded with every result.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Offline, loopback-only Ray without token auth; never touch ~/.ray (HOME is a temp dir).
BENCH_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TOKENIZERS_PARALLELISM": "false",
    # worker start-up (torch + transformers imports) is slow on a loaded 2-core box
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300",
}


def setup_env(home: str | None = None) -> str:
    """Set the offline / Ray environment before Ray or transformers are imported; returns the
    temporary HOME (also the default place for data and Ray results)."""
    home = home or tempfile.mkdtemp(prefix="hiersearch-bench-home-")
    os.environ.update(BENCH_ENV)
    os.environ["HOME"] = home
    os.environ.setdefault("HIERSEARCH_DATA", str(Path(home) / "data"))
    os.environ.pop("RAY_ADDRESS", None)
    return home


def ray_init(num_cpus: int = 2, env_vars: dict[str, str] | None = None, **kwargs: Any) -> None:
    """The local Ray `hiersearch search` starts (dashboard named to every worker, so that
    trials stopped by ASHA free their placement groups), quiet, plus the bench's env vars."""
    from hiersearch.search.cluster import start_local

    start_local(num_cpus=num_cpus, env_vars=env_vars, log_to_driver=False, **kwargs)


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "load_average_1_5_15": [round(x, 2) for x in load_average()],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call, on the monotonic high-resolution clock."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@dataclass
class Timings:
    """Seconds per call of each candidate: wall clock, and CPU time of this process (all its
    threads). On a loaded machine wall time waits for a core while CPU time does not, so CPU
    time is the steadier figure there; both come from the same calls."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def median_wall(self, name: str) -> float:
        return median(self.wall[name])

    def median_cpu(self, name: str) -> float:
        return median(self.cpu[name])

    def to_json(self, digits: int = 4) -> dict[str, Any]:
        return {
            "wall_s": {k: [round(x, digits) for x in v] for k, v in self.wall.items()},
            "cpu_s": {k: [round(x, digits) for x in v] for k, v in self.cpu.items()},
        }


def alternate(named: dict[str, Callable[[], Any]], reps: int, rotate: bool = True) -> Timings:
    """Call every function once per repetition, in a rotating order (so that no candidate is
    always first or last after the others), and collect the seconds of each call."""
    names = list(named)
    out = Timings({name: [] for name in names}, {name: [] for name in names})
    for rep in range(reps):
        shift = rep % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            cpu_start = time.process_time()
            seconds, _ = timed(named[name])
            out.cpu[name].append(time.process_time() - cpu_start)
            out.wall[name].append(seconds)
    return out


def emit(name: str, result: dict[str, Any], out: str | None) -> None:
    """Print the result as JSON (and write it to `out` when given)."""
    result = {"bench": name, "command": " ".join([sys.executable, *sys.argv]), **result}
    text = json.dumps(result, indent=2, default=_jsonable)
    print(text, flush=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "MET" if ok else "MISSED"

