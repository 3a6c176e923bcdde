"""The GPU check's figures and verdicts, from what its steps left in the work directory: the
trials that ran at once, the device's scores against the CPU's, and the report (each step's
status, a verdict per check, the summary lines, the logs' tarball). tools/gpu/gpu_check.py's
subcommands `overlap`, `compare` and `report` call these. Only the standard library is
imported at module level (numpy where scores are compared).

Concurrency is read from the trials' own result rows: each row is a report at `timestamp`
(whole seconds) after `time_total_s` seconds of the trial's training function, so a trial ran
from max(timestamp - time_total_s) to its last timestamp; the sweep over those intervals gives
the most trials that ran at once and for how long (1 s resolution: the trials run for tens of
seconds).
"""

from __future__ import annotations

import io
import json
import math
import tarfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

TRIALS = 4  # the trials of gpu_quarter.yaml, all meant to run at once
# Steps in the order gpu_check.sh runs them; the checks that decide the verdict.
STEPS = ("install", "env", "tests", "throughput", "search", "search_check", "export", "docs",
         "predict_device", "compare")
# Largest |p_cuda - p_cpu| of a probability allowed, by the trial's precision. bf16 keeps 8
# significant bits (relative rounding 2^-9 ~ 0.2 % per operation), compounded over the encoder's
# layers; the heads and logits run in float32 on the bf16 encoder's features, and a sigmoid's
# slope is at most 1/4, so a logit off by ~0.05 moves a probability by ~0.0125: 0.02 (the
# bound tests/test_gpu.py uses on main). fp16 and TF32 keep 11 bits (8x finer): 0.01. fp32 on
# both devices differs only in summation order: 1e-4.
TOLERANCE = {"bf16": 0.02, "fp16": 0.01, "tf32": 0.01, "fp32": 1e-4}
TOP_K = 5


# --- overlap ------------------------------------------------------------------------------------


def read_trials(experiment: Path) -> dict[str, list[dict[str, Any]]]:
    """Each trial directory's result rows (result.json, one JSON object per line)."""
    trials = {}
    for result in sorted(experiment.glob("*/result.json")):
        rows = []
        for line in result.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a killed trial
            if isinstance(row, dict):
                rows.append(row)
        trials[result.parent.name] = rows
    return trials


def trial_interval(rows: Sequence[dict[str, Any]]) -> tuple[float, float] | None:
    """(start, end) in seconds since the epoch of a trial's training function, from its
    result rows; None without a timed row."""
    timed = [r for r in rows if isinstance(r.get("timestamp"), (int, float))
             and isinstance(r.get("time_total_s"), (int, float))]
    if not timed:
        return None
    start = max(float(r["timestamp"]) - float(r["time_total_s"]) for r in timed)
    end = max(float(r["timestamp"]) for r in timed)
    return start, max(start, end)


def max_overlap(intervals: Iterable[tuple[float, float]]) -> tuple[int, float]:
    """The most intervals open at one instant, and for how many seconds in all that many
    were (an interval ending when another starts does not overlap it)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda x: (x[0], x[1]))
    best, open_now, seconds, last = 0, 0, 0.0, None
    for t, delta in events:
        if last is not None and open_now == best and best > 0:
            seconds += t - last
        open_now += delta
        if open_now > best:
            best, seconds = open_now, 0.0
        last = t
    return best, seconds


def expected_concurrency(base: dict[str, Any], cpus: int, gpus: int, trials: int) -> int:
    """How many one-worker trials the search's max_concurrent lets run at once
    (search/concurrency.py)."""
    per_trial_cpus = float(base.get("num_workers", 1)) * float(base.get("cpus_per_worker", 1))
    fits = math.floor(cpus / per_trial_cpus + 1e-9)
    if base.get("use_gpu"):
        per_trial_gpus = float(base.get("num_workers", 1)) * float(base.get("gpus_per_worker", 1))
        fits = min(fits, math.floor(gpus / per_trial_gpus + 1e-9))
    return max(1, min(fits, trials))


def overlap_report(experiment: Path, cpus: int, gpus: int, trials: int = TRIALS) -> dict[str, Any]:
    rows = read_trials(experiment)
    meta_path = experiment / "hiersearch.json"
    base = json.loads(meta_path.read_text()).get("base_config", {}) if meta_path.is_file() else {}
    intervals = {name: trial_interval(r) for name, r in rows.items()}
    known = [i for i in intervals.values() if i is not None]
    most, seconds = max_overlap(known)
    expected = expected_concurrency(base, cpus, gpus, trials)
    finished = [name for name, r in rows.items()
                if any("trial/stop_reason" in row for row in r)]
    origin = min((s for s, _ in known), default=0.0)
    out: dict[str, Any] = {
        "trials": len(rows),
        "finished": len(finished),
        "max_running_at_once": most,
        "seconds_at_max": round(seconds, 1),
        "expected_at_once": expected,
        "trial_processes": len({r.get("pid") for rr in rows.values() for r in rr
                                if r.get("pid") is not None}),
        "intervals_s": {name: None if i is None else [round(i[0] - origin, 1),
                                                      round(i[1] - origin, 1)]
                        for name, i in intervals.items()},
        "peak_memory_mb": {name: max((v for row in r for k, v in row.items()
                                      if "peak_mem" in k and isinstance(v, (int, float))),
                                     default=None)
                           for name, r in rows.items()},
        "use_gpu": bool(base.get("use_gpu")),
        "gpus_per_worker": base.get("gpus_per_worker"),
        "cpus_per_worker": base.get("cpus_per_worker"),
        "cpus": cpus,
        "gpus": gpus,
    }
    out["pass"] = (len(rows) == trials and len(finished) == trials
                   and expected == trials and most == trials)
    return out


# --- the device's scores against the CPU's -------------------------------------------------------


def precision_of(config: dict[str, Any]) -> str:
    """The trial's precision: `precision` (bf16|fp16|tf32|fp32), else the older `bf16` flag."""
    if config.get("precision"):
        return str(config["precision"])
    return "bf16" if config.get("bf16", True) else "fp32"


def top_k(scores: Any, k: int) -> list[tuple[int, ...]]:
    """Per row, the indices of the k highest scores as a sorted tuple (a set: order within
    the top k is not compared)."""
    import numpy as np

    k = min(k, scores.shape[1])
    if k == 0:
        return [() for _ in range(scores.shape[0])]
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return [tuple(sorted(int(i) for i in row)) for row in best]


def compare_scores(reference: Sequence[Any], other: Sequence[Any], k: int = TOP_K,
                   tolerance: float = TOLERANCE["bf16"]) -> dict[str, Any]:
    """Per-level score matrices (docs x labels, probabilities) of the same documents on two
    devices: the largest and mean absolute differences, and how often the top-k label sets
    and the top label agree (over documents x levels)."""
    import numpy as np

    if len(reference) != len(other):
        raise ValueError(f"{len(reference)} levels against {len(other)}")
    levels, same_top, same_first, cells = [], 0, 0, 0
    for a, b in zip(reference, other, strict=True):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            raise ValueError(f"shapes differ: {a.shape} against {b.shape}")
        diff = np.abs(a - b)
        levels.append({"labels": int(a.shape[1]), "max_abs_diff": float(diff.max(initial=0.0)),
                       "mean_abs_diff": float(diff.mean()) if diff.size else 0.0})
        same_top += sum(x == y for x, y in zip(top_k(a, k), top_k(b, k), strict=True))
        same_first += int((a.argmax(axis=1) == b.argmax(axis=1)).sum()) if a.size else 0
        cells += a.shape[0]
    worst = max((level["max_abs_diff"] for level in levels), default=0.0)
    return {
        "docs": int(np.asarray(reference[0]).shape[0]) if len(reference) else 0,
        "levels": levels,
        "max_abs_diff": worst,
        "tolerance": tolerance,
        f"top{k}_set_agreement": same_top / cells if cells else 1.0,
        "top1_agreement": same_first / cells if cells else 1.0,
        "pass": worst <= tolerance,
    }



# --- report -------------------------------------------------------------------------------------


def read_steps(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def step_status(step: dict[str, Any]) -> str:
    if "skipped" in step:
        return "skipped"
    if step.get("rc") in (124, 137):
        return "timeout"
    return "ok" if step.get("rc") == 0 else "failed"


def verdicts(mode: str, steps: dict[str, dict[str, Any]], figures: dict[str, Any]
             ) -> dict[str, str]:
    """pass / fail / not run of each thing the issue asks the check to show."""
    def ran(name: str) -> bool:
        return steps.get(name, {}).get("status") == "ok"

    def check(name: str, ok: bool) -> str:
        if name not in steps or steps[name]["status"] == "skipped":
            return "not run"
        return "pass" if ran(name) and ok else "fail"

    tests = figures.get("tests") or {}
    out = {
        "imports": check("env", bool((figures.get("env") or {}).get("ok"))),
        "gpu_tests": check("tests", tests.get("status") in ("ok", "no_tests")
                           if mode == "cpu" else tests.get("status") == "ok"),
        "four_trials_at_once": check("search_check",
                                     bool((figures.get("search_check") or {}).get("pass"))),
        "predict_matches_cpu": check("compare", bool((figures.get("compare") or {}).get("pass"))),
    }
    throughput = figures.get("throughput") or {}
    out["throughput"] = check("throughput", bool(throughput.get("candidates"))
                              or (mode == "cpu" and "skipped" in throughput))
    return out


def assemble(work: Path, mode: str, started: float | None = None) -> dict[str, Any]:
    steps = {}
    for step in read_steps(work / "steps.jsonl"):
        step["status"] = step_status(step)
        if "start" in step and "end" in step:
            step["seconds"] = round(float(step["end"]) - float(step["start"]), 1)
        log = work / "logs" / f"{step['step']}.log"
        if step["status"] in ("failed", "timeout") and log.is_file():
            step["log_tail"] = log.read_text(errors="replace")[-3000:]
        steps[step["step"]] = step
    figures = {}
    for name in ("env", "tests", "throughput", "search_check", "compare", "install",
                 "search_summary"):
        path = work / f"{name}.json"
        if path.is_file():
            try:
                figures[name] = json.loads(path.read_text())
            except ValueError as exc:
                figures[name] = {"unreadable": str(exc)}
    if "search_summary" in figures:
        figures["search_summary"] = slim_summary(figures["search_summary"])
    env = figures.get("env") or {}
    device = (env.get("device") or {}).get("name")
    if device is None:
        device = "cpu" if mode == "cpu" else f"no CUDA device ({env.get('nvidia_smi')})"
    report = {
        "check": "gpu_check",
        "mode": mode if mode == "gpu" else "cpu-dry-run",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": device,
        "versions": {"python": env.get("python"), **(env.get("versions") or {})},
        "total_s": round(time.time() - started, 1) if started else None,
        "steps": [steps[name] for name in STEPS if name in steps]
        + [s for n, s in steps.items() if n not in STEPS],
        "figures": figures,
        "verdicts": verdicts(mode, steps, figures),
    }
    report["pass"] = overall_pass(report["verdicts"])
    return report


def overall_pass(verdicts: dict[str, str]) -> bool:
    """Every check passed; the gpu tests may also not have run (a branch without any)."""
    return all(v == "pass" or (k == "gpu_tests" and v == "not run")
               for k, v in verdicts.items())


SUMMARY_METRICS = ("dev/rp_macro", "test/rp_macro", "train/samples_per_s", "train/epoch_s",
                   "train/peak_mem_mb", "train/peak_reserved_mb", "cost/forward_ms_per_doc")


def slim_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The search's --json summary without the hundreds of metric columns of its best trial."""
    best = summary.get("best") or {}
    metrics = best.get("metrics") or {}
    return {
        "experiment": summary.get("experiment"),
        "trials": summary.get("trials"),
        "best": {**{k: best.get(k) for k in ("trial_id", "variant", "assignment", "status")},
                 "metrics": {k: metrics[k] for k in SUMMARY_METRICS if k in metrics}},
    }


def _search_line(search: dict[str, Any]) -> str:
    return (f"  search: {search.get('finished')}/{search.get('trials')} trials "
            f"finished, {search.get('max_running_at_once')} at once for "
            f"{search.get('seconds_at_max')} s (expected {search.get('expected_at_once')})")


def _compare_line(compared: dict[str, Any]) -> str:
    nan = float("nan")
    return (f"  predict {compared.get('device')} vs cpu ({compared.get('precision')}): "
            f"max |diff| {compared.get('max_abs_diff', nan):.2e} "
            f"(tolerance {compared.get('tolerance')}), top-5 sets "
            f"{compared.get('top5_set_agreement', nan):.1%}, top-1 "
            f"{compared.get('top1_agreement', nan):.1%}")


# The figures summarized in one line each, in the order they print.
_FIGURE_LINES = {"search_check": _search_line, "compare": _compare_line}


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The few lines gpu_check.sh prints at its end."""
    figures = report["figures"]
    lines = [f"gpu_check ({report['mode']}) on {report['device']}: "
             f"{'PASS' if report['pass'] else 'FAIL'} in {report.get('total_s')} s"]
    for step in report["steps"]:
        extra = f" ({step['skipped']})" if "skipped" in step else ""
        lines.append(f"  {step['step']:<15} {step['status']:<8} "
                     f"{step.get('seconds', '-')!s:>6} s{extra}")
    tests = figures.get("tests") or {}
    if tests:
        lines.append(f"  tests: {tests.get('closing_line') or tests.get('status')}")
    for name, c in ((figures.get("throughput") or {}).get("candidates") or {}).items():
        mfu = f"{c['mfu']:.1%}" if c.get("mfu") is not None else "?"
        lines.append(f"  throughput {name:<14} {c['samples_per_s']:8.1f} samples/s  MFU {mfu:>6}"
                     f"  peak alloc {c['peak_allocated_gib']:.1f} GiB"
                     f"  reserved {c['peak_reserved_gib']:.1f} GiB")
    lines += [line(figures[key]) for key, line in _FIGURE_LINES.items() if figures.get(key)]
    lines.append("  verdicts: " + ", ".join(f"{k} {v}" for k, v in report["verdicts"].items()))
    return lines


def pack_logs(work: Path, tarball: Path, per_file: int = 512 * 1024,
              total: int = 12 * 2**20) -> int:
    """The check's logs, step JSONs, the experiment's small files and Ray's session logs as
    one tar.gz (each file's last `per_file` bytes, `total` bytes in all); files packed."""
    patterns = ("logs/*.log", "*.json", "*.jsonl", "runs/*/*.json",
                "runs/*/*/result.json", "runs/*/*/error.txt", "runs/*/*/*.json",
                "ray/session_*/logs/*.log", "ray/session_*/logs/*.out", "ray/session_*/logs/*.err")
    files = sorted({p for pattern in patterns for p in work.glob(pattern) if p.is_file()})
    packed, used = 0, 0
    with tarfile.open(tarball, "w:gz") as archive:
        for path in files:
            size = path.stat().st_size
            data = path.read_bytes()[-per_file:] if size > per_file else path.read_bytes()
            if used + len(data) > total:
                continue
            info = tarfile.TarInfo(str(path.relative_to(work)))
            info.size, info.mtime = len(data), int(path.stat().st_mtime)
            archive.addfile(info, io.BytesIO(data))
            packed, used = packed + 1, used + len(data)
    return packed
