"""Timing probes for the Ray-overhead benchmark: wrap the phases of a trial (`recipe.fit`, the
phases of its `TrialRecipe` and what they call, `search.trainable.trial_with_trainer`) so
that every process running them appends one JSON line per call (pid, name, wall-clock start
and end) to the file named by HIERSEARCH_BENCH_EVENTS.

In the benchmark's own process the wrappers are installed directly (`install_now`). In Ray
worker processes `install` runs as Ray's `worker_process_setup_hook` (this directory is put on
the workers' PYTHONPATH); it only registers an import hook, so that a worker that never
imports hiersearch pays nothing, and one that does gets the wrappers right after the import
(whose own duration is recorded too). Nothing in hiersearch is modified on disk.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EVENTS_ENV = "HIERSEARCH_BENCH_EVENTS"
# Module globals of hiersearch.trial.recipe, looked up at each call: the wrappers get called.
_TRAIN_FUNCTIONS = (
    "fit",
    "load_encoded",
    "load_encoder",
    "evaluate_split",
    "_save_checkpoint",
    "utilization",
)
# The recipe's phases (methods of TrialRecipe), recorded as "TrialRecipe.<phase>".
_RECIPE_PHASES = ("setup", "restore", "train_epoch", "evaluate", "end_epoch", "finish", "diverged")
_PATCHED = "_hiersearch_bench_patched"


def record(name: str, start: float, end: float, **extra: Any) -> None:
    """Append one event (wall-clock seconds since the epoch, comparable across processes)."""
    path = os.environ.get(EVENTS_ENV)
    if not path:
        return
    line = json.dumps({"pid": os.getpid(), "name": name, "start": start, "end": end, **extra})
    # one short O_APPEND write per event: lines from concurrent processes do not interleave
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            record(name, start, time.time())

    return wrapper


def _timed_report(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A session's report: also keeps the epoch, final flag and training throughput."""

    @functools.wraps(fn)
    def wrapper(self: Any, metrics: dict[str, Any], checkpoint_dir: Any) -> Any:
        start = time.time()
        try:
            return fn(self, metrics, checkpoint_dir)
        finally:
            record(
                name,
                start,
                time.time(),
                epoch=metrics.get("epoch"),
                final=metrics.get("trial/final"),
                samples_per_s=metrics.get("train/samples_per_s"),
                checkpoint=checkpoint_dir is not None,
            )

    return wrapper


def patch_train(module: Any) -> None:
    """Wrap the phases of `hiersearch.trial.recipe`: its module-level steps, the phases of its
    `TrialRecipe`, and the sessions' reports and artifact syncs (`hiersearch.trial.session`)."""
    if getattr(module, _PATCHED, False):
        return
    import hiersearch.trial.session as sessions  # loaded already: the recipe imports it

    for name in _TRAIN_FUNCTIONS:
        setattr(module, name, _timed(name, getattr(module, name)))
    recipe = module.TrialRecipe
    for phase in _RECIPE_PHASES:
        setattr(recipe, phase, _timed(f"TrialRecipe.{phase}", getattr(recipe, phase)))
    split = module.Split
    split.from_table = classmethod(_timed("Split.from_table", split.from_table.__func__))
    for cls in (sessions.LocalSession, sessions.RaySession):
        cls.report = _timed_report(f"{cls.__name__}.report", cls.report)
    sessions.Artifacts.sync = _timed("Artifacts.sync", sessions.Artifacts.sync)
    sessions.Artifacts.close = _timed("Artifacts.close", sessions.Artifacts.close)
    setattr(module, _PATCHED, True)


def patch_trainable(module: Any) -> None:
    """search/trainable.py: the two ways a Tune trial trains (looked up there by `trainable`)."""
    if getattr(module, _PATCHED, False):
        return
    module.trial_with_trainer = _timed("trial_with_trainer", module.trial_with_trainer)
    module.trial_in_process = _timed("trial_in_process", module.trial_in_process)
    setattr(module, _PATCHED, True)


def patch_run(module: Any) -> None:
    """search/run.py: the corpus preparation before Ray starts (looked up there)."""
    if getattr(module, _PATCHED, False):
        return
    module.prepare_data = _timed("prepare_data", module.prepare_data)
    setattr(module, _PATCHED, True)


_PATCHERS: dict[str, Callable[[Any], None] | None] = {
    "hiersearch.trial.recipe": patch_train,
    "hiersearch.search.trainable": patch_trainable,
    "hiersearch.search.run": patch_run,
    # only timed: where a worker's heavy imports happen (ray.train.torch imports torch)
    "torch": None,
    "transformers": None,
}


class _Finder(importlib.abc.MetaPathFinder):
    """Times the imports named above and patches the hiersearch modules once executed."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in _PATCHERS:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            start = time.time()
            execute(module)
            record(f"import {name}", start, time.time())
            patch = _PATCHERS[name]
            if patch is not None:
                patch(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _process_start() -> float | None:
    """Wall-clock start of this process (Linux: /proc), to see the worker's bootstrap."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def install() -> None:
    """Ray's worker_process_setup_hook: register the import hook (cheap, imports nothing)."""
    if not os.environ.get(EVENTS_ENV):
        return
    now = time.time()
    started = _process_start()
    record("worker_setup_hook", started if started is not None else now, now)
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def install_now() -> None:
    """In this process: patch the hiersearch modules directly."""
    import hiersearch.search.run
    import hiersearch.search.trainable
    import hiersearch.trial.recipe

    patch_train(hiersearch.trial.recipe)
    patch_trainable(hiersearch.search.trainable)
    patch_run(hiersearch.search.run)


def load_events(path: str | Path) -> list[dict[str, Any]]:
    file = Path(path)
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
