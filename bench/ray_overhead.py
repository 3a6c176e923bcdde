"""Ray costs little: one trial in-process (`recipe.fit` with a `LocalSession`) against the same
trial through `search.run_search` on a one-trial space, with each launcher: "auto" (the
default for one worker: `recipe.fit` runs in the Ray Tune trial's process) and "train" (the
trial drives a Ray Train `TorchTrainer` with one worker); same corpus, config, epochs and
seed, the three in rotating order, several repetitions. With `--trials N` (default 3) also a
search of N trials of the same config (seeds 0..N-1, one at a time): Ray's cost per trial of a
search, where the later trials reuse the first one's process.

Figures:
- steady-state throughput ratio: training samples/s (the reports' `train/samples_per_s`,
  epochs after the first) of the Ray run over the in-process run of the same repetition;
- fixed per-trial overhead: wall time minus the time spent in the training loops (each epoch's
  samples / its samples/s), for the Ray run (`run_search` call) and the in-process run (`fit`
  call, imports already done);
- where that overhead goes: every phase of the trial is timed by probes (bench/_timing.py)
  installed in this process and, through Ray's `worker_process_setup_hook`, in the Ray worker
  processes: Tune start-up and scheduling, the Train worker's process start and imports, corpus
  and model loading, dev evaluation, checkpoint writes and their reports, test evaluation,
  utilization, artifacts, and the tear-down; optionally a cProfile of one in-process `fit`.

Targets: throughput ratio >= 0.95; fixed overhead <= 10 s per trial (2-core machine).

    python bench/ray_overhead.py [--quick] [--reps N] [--trials N] [--launchers auto,train]
                                 [--json OUT]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import math
import os
import pstats
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
import _timing  # noqa: E402
from _common import emit, machine, median, ray_init, setup_env, verdict  # noqa: E402

VARIANT = "LAST-THREE"  # the synthetic EuroVoc corpus has 3 levels
# How the Ray run trains: "auto" (the default for one worker) in the Tune trial's process,
# "train" through a Ray Train TorchTrainer with one worker; both measured, alternating.
LAUNCHERS = ("auto", "train")


def space_raw(model: str, docs: int, epochs: int, batch_size: int, max_leaves: int,
              util_docs: int, launcher: str = "auto", trials: int = 1) -> dict[str, Any]:
    """One named variant, no search: `trials` seeds run one after the other (one at a time,
    so that a later trial can reuse the first one's process, as in a search's later waves)."""
    return {
        "name": "ray-overhead",
        "data": {"hierarchy": "eurovoc", "docs": docs, "seed": 1, "max_leaves": max_leaves},
        "trial": {
            "model": model,
            "max_length": 128,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": 1.0e-4,
            "dropout": 0.1,
            "warmup_ratio": 0.1,
            "patience": epochs,  # no early stop: every run trains all epochs
            "num_workers": 1,
            "launcher": launcher,
            "cpus_per_worker": 1,
            "util_docs": util_docs,
            "keep_checkpoints": 1,
        },
        "assignment": {"space": "variants", "variants": [VARIANT]},
        "tune": {"algorithm": "grid", "seeds": trials, "max_concurrent": 1},
    }


# ----------------------------------------------------------------------------- analysis


def _within(events: list[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
    return [e for e in events if e["start"] >= start - 1e-3 and e["end"] <= end + 1e-3]


def _dur(event: dict[str, Any]) -> float:
    return float(event["end"]) - float(event["start"])


def _sum(events: list[dict[str, Any]], name: str) -> float:
    return sum(_dur(e) for e in events if e["name"] == name)


def epoch_train_seconds(reports: list[dict[str, Any]], epoch_samples: int) -> list[float]:
    """Seconds in each epoch's training loop, from the per-epoch reports' samples/s."""
    return [
        epoch_samples / float(r["samples_per_s"])
        for r in sorted(reports, key=lambda r: r["epoch"])
        if not r.get("final") and r.get("samples_per_s")
    ]


def steady_throughput(reports: list[dict[str, Any]]) -> float:
    """Median samples/s of the epochs after the first (the first also warms caches)."""
    per_epoch = [
        float(r["samples_per_s"])
        for r in sorted(reports, key=lambda r: r["epoch"])
        if not r.get("final") and r.get("samples_per_s")
    ]
    return median(per_epoch[1:] if len(per_epoch) > 1 else per_epoch)


def fit_phases(events: list[dict[str, Any]], epoch_samples: int) -> dict[str, float]:
    """Where the time of one `fit` call goes (events of that call's process and window)."""
    fit = next(e for e in events if e["name"] == "fit")
    inside = _within(events, fit["start"], fit["end"])
    reports = [e for e in inside if e["name"].endswith("Session.report")]
    evals = sorted((e for e in inside if e["name"] == "evaluate_split"), key=lambda e: e["start"])
    closes = [e for e in inside if e["name"] == "Artifacts.close"]
    syncs = [
        e for e in inside
        if e["name"] == "Artifacts.sync"
        and not any(c["start"] <= e["start"] <= c["end"] for c in closes)
    ]
    final = [r for r in reports if r.get("final")]
    train = epoch_train_seconds(reports, epoch_samples)
    phases = {
        "load_encoded_corpus": _sum(inside, "load_encoded") + _sum(inside, "Split.from_table"),
        "load_encoder": _sum(inside, "load_encoder"),
        "training_loops": sum(train),
        "dev_evaluation": sum(_dur(e) for e in evals[:-1]),
        "checkpoint_save": _sum(inside, "_save_checkpoint"),
        "epoch_reports_with_checkpoint": sum(_dur(r) for r in reports if not r.get("final")),
        "artifacts_sync_per_epoch": sum(_dur(e) for e in syncs),
        "test_evaluation": _dur(evals[-1]) if evals else 0.0,
        "utilization": _sum(inside, "utilization"),
        "artifacts_close": sum(_dur(e) for e in closes),
        "final_report_with_checkpoint": sum(_dur(r) for r in final),
    }
    phases["fit_other"] = _dur(fit) - sum(phases.values())
    phases["fit_total"] = _dur(fit)
    phases["epochs"] = float(len(train))
    return phases


def local_breakdown(events: list[dict[str, Any]], epoch_samples: int) -> dict[str, Any]:
    phases = fit_phases(events, epoch_samples)
    wall = phases["fit_total"]
    reports = [e for e in events if e["name"].endswith("Session.report")]
    return {
        "wall_s": wall,
        "training_loops_s": phases["training_loops"],
        "fixed_overhead_s": wall - phases["training_loops"],
        "steady_samples_per_s": steady_throughput(reports),
        "phases_s": phases,
    }


def ray_breakdown(events: list[dict[str, Any]], start: float, end: float,
                  epoch_samples: int) -> dict[str, Any]:
    """Phases of one `run_search` call (start..end) from the events of every process."""
    window = _within(events, start, end)
    fit = next(e for e in window if e["name"] == "fit")
    worker = [e for e in window if e["pid"] == fit["pid"]]
    trial_fn = next(e for e in window if e["name"] in ("trial_with_trainer", "trial_in_process"))
    hook = next((e for e in worker if e["name"] == "worker_setup_hook"), None)
    phases = fit_phases(worker, epoch_samples)
    prepare = _sum(window, "prepare_data")
    segments: dict[str, float] = {"prepare_data_cache_hit": prepare}
    if trial_fn["name"] == "trial_in_process":  # launcher auto: fit runs in the Tune trial
        began = hook["start"] if hook is not None else trial_fn["start"]
        segments["tune_start_and_trial_scheduling"] = began - start - prepare
        if hook is not None:
            segments["trial_process_bootstrap"] = _dur(hook)
        segments["trial_imports_and_setup_until_fit"] = fit["start"] - (
            hook["end"] if hook is not None else trial_fn["start"]
        )
        finish = {"trial_finish": trial_fn["end"] - fit["end"]}
    else:  # launcher train: the trial drives a TorchTrainer whose worker runs fit
        segments["tune_start_and_trial_scheduling"] = trial_fn["start"] - start - prepare
        segments.update(_train_worker_setup(worker, trial_fn, hook, fit))
        finish = {"worker_group_shutdown": trial_fn["end"] - fit["end"]}
    segments.update({f"fit/{k}": v for k, v in phases.items()
                     if k not in ("fit_total", "epochs")})
    segments.update(finish)
    segments["tune_finish"] = end - trial_fn["end"]
    wall = end - start
    reports = [e for e in worker if e["name"] == "RaySession.report"]
    # where the worker's heavy imports fall: torch inside the Ray Train setup (ray.train.torch
    # imports it), transformers inside fit/load_encoder (imported there on first use)
    imports = {
        e["name"].removeprefix("import "): _dur(e)
        for e in worker
        if e["name"] in ("import torch", "import transformers")
    }
    return {
        "worker_imports_s": imports,
        "wall_s": wall,
        "training_loops_s": phases["training_loops"],
        "fixed_overhead_s": wall - phases["training_loops"],
        "steady_samples_per_s": steady_throughput(reports),
        "phases_s": segments,
        "fit_total_s": phases["fit_total"],
    }


def multi_breakdown(events: list[dict[str, Any]], start: float, end: float,
                    epoch_samples: int) -> dict[str, Any]:
    """A search of several trials, one at a time: wall time, training loops and what is left,
    and how many of the trials ran in a process that an earlier trial had warmed."""
    window = _within(events, start, end)
    fits = sorted((e for e in window if e["name"] == "fit"), key=lambda e: e["start"])
    loops, pids = 0.0, []
    for fit in fits:
        own = [e for e in window if e["pid"] == fit["pid"]]
        loops += fit_phases(_within(own, fit["start"], fit["end"]), epoch_samples)[
            "training_loops"
        ]
        pids.append(fit["pid"])
    wall = end - start
    return {
        "trials": len(fits),
        "trial_processes": len(set(pids)),
        "wall_s": wall,
        "training_loops_s": loops,
        "fixed_overhead_s": wall - loops,
        "fit_s": [_dur(f) for f in fits],
        "between_fits_s": [b["start"] - a["end"] for a, b in itertools.pairwise(fits)],
    }


def _train_worker_setup(worker: list[dict[str, Any]], trial_fn: dict[str, Any],
                        hook: dict[str, Any] | None, fit: dict[str, Any]) -> dict[str, float]:
    """From the Tune trial function's start to the Ray Train worker's call of fit."""
    segments: dict[str, float] = {}
    imported = next((e for e in worker if e["name"] == "import hiersearch.trial.recipe"), None)
    after_hook = trial_fn["start"]  # if the worker process existed before (not seen)
    if hook is not None:
        segments["train_controller_and_worker_spawn"] = hook["start"] - trial_fn["start"]
        segments["worker_process_bootstrap"] = _dur(hook)
        after_hook = hook["end"]
    if imported is not None:
        segments["worker_ray_train_setup_until_hiersearch_import"] = max(
            imported["start"] - after_hook, 0.0
        )
        segments["worker_import_hiersearch_train"] = imported["end"] - max(
            after_hook, imported["start"]
        )
        segments["worker_setup_until_fit"] = fit["start"] - imported["end"]
    else:
        segments["worker_setup_until_fit"] = fit["start"] - after_hook
    return segments


# ----------------------------------------------------------------------------- runs


def _epoch_samples(train_docs: int, batch_size: int) -> int:
    # as fit counts them: every batch of the epoch at the full batch size
    return math.ceil(train_docs / batch_size) * batch_size


def run_local(base: Any, data: Any, events_file: Path, work: Path, rep: int) -> dict[str, Any]:
    from hiersearch.search.space import trial_config
    from hiersearch.trial.recipe import fit
    from hiersearch.trial.session import Artifacts, LocalSession

    config = trial_config(base, {"seed": 0}, VARIANT).replace(corpus=data.corpus_dir)
    root = work / f"local-{rep}"
    (root / "checkpoints").mkdir(parents=True)
    start = time.time()
    fit(config, data.encoded_path, LocalSession(root / "checkpoints"),
        Artifacts(str(root / "artifacts")))
    end = time.time()
    events = _within(_timing.load_events(events_file), start, end)
    events = [e for e in events if e["pid"] == os.getpid()]
    shutil.rmtree(root, ignore_errors=True)
    return {"start": start, "end": end, "events": events}


def run_ray(space: Any, storage: Path, events_file: Path, rep: str) -> dict[str, Any]:
    from hiersearch.search.run import run_search

    start = time.time()
    path = run_search(space, storage=str(storage), name=f"ray-{rep}", verbose=0)
    end = time.time()
    events = _within(_timing.load_events(events_file), start, end)
    shutil.rmtree(path, ignore_errors=True)
    return {"start": start, "end": end, "events": events}


def profile_fit(base: Any, data: Any, work: Path, top: int = 20) -> list[str]:
    """cProfile of one in-process fit: the top functions by cumulative time."""
    from hiersearch.search.space import trial_config
    from hiersearch.trial.recipe import fit
    from hiersearch.trial.session import Artifacts, LocalSession

    config = trial_config(base, {"seed": 0}, VARIANT).replace(corpus=data.corpus_dir)
    root = work / "profiled"
    (root / "checkpoints").mkdir(parents=True)
    profiler = cProfile.Profile()
    profiler.enable()
    fit(config, data.encoded_path, LocalSession(root / "checkpoints"),
        Artifacts(str(root / "artifacts")))
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(top)
    return [line for line in text.getvalue().splitlines() if line.strip()][-top - 1 :]


def multi_summary(runs: list[dict[str, Any]], trials: int, with_single: bool) -> dict[str, Any]:
    """Ray's added overhead per trial of an n-trial search (against n in-process fits of the
    same repetition) and, given the one-trial search of the same repetition, what each trial
    after the first adds: the search's fixed start-up is paid once, not per trial."""
    added = [
        (r["multi"]["fixed_overhead_s"] - trials * r["local"]["fixed_overhead_s"]) / trials
        for r in runs
    ]
    out: dict[str, Any] = {
        "trials": trials,
        "trial_processes_per_search": [r["multi"]["trial_processes"] for r in runs],
        "ray_added_overhead_per_trial_s_median": median(added),
        "target_fixed_overhead_10s_per_trial": verdict(median(added), 10.0, False),
    }
    if with_single and trials > 1:
        marginal = [
            (r["multi"]["fixed_overhead_s"] - r["auto"]["fixed_overhead_s"]) / (trials - 1)
            - r["local"]["fixed_overhead_s"]
            for r in runs
        ]
        out["ray_added_overhead_per_further_trial_s_median"] = median(marginal)
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny encoder, 60 docs, 1 rep")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--docs", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--trials", type=int, default=None,
                        help="trials of the multi-trial search (launcher auto); default 3, "
                             "--quick 0 (skipped)")
    parser.add_argument("--launchers", default=None,
                        help="one-trial searches to run, comma-separated (default auto,train; "
                             "--quick: auto)")
    parser.add_argument("--profile", action="store_true", help="also cProfile one local fit")
    parser.add_argument("--json", default=None, help="also write the result here")
    return parser


@dataclass(frozen=True)
class Setup:
    """The measured trial's sizes and the runs of each repetition."""

    quick: bool
    model: str
    docs: int
    epochs: int
    reps: int
    trials: int  # of the multi-trial search; 0: none
    launchers: tuple[str, ...]  # the one-trial searches
    util_docs: int
    batch_size: int = 16

    @property
    def kinds(self) -> list[str]:
        """Every run of a repetition: the in-process fit, the one-trial searches, the
        multi-trial search."""
        return ["local", *self.launchers, *(["multi"] if self.trials else [])]


def resolve_setup(args: argparse.Namespace) -> Setup:
    """The command line's sizes, their defaults by --quick; ValueError on unknown launchers."""
    launchers_arg = args.launchers or ("auto" if args.quick else ",".join(LAUNCHERS))
    launchers = tuple(name for name in launchers_arg.split(",") if name)
    if not launchers or any(name not in LAUNCHERS for name in launchers):
        raise ValueError(f"--launchers: a comma-separated subset of {','.join(LAUNCHERS)}")
    return Setup(
        quick=args.quick,
        model=args.model or ("tiny:6x64" if args.quick else "minilm"),
        docs=args.docs or (60 if args.quick else 400),
        epochs=args.epochs or 2,
        reps=args.reps or (1 if args.quick else 3),
        trials=args.trials if args.trials is not None else (0 if args.quick else 3),
        launchers=launchers,
        util_docs=8 if args.quick else 32,
    )


def rep_order(kinds: list[str], rep: int) -> list[str]:
    """The runs of repetition `rep`, rotated by one each repetition."""
    return kinds[rep % len(kinds):] + kinds[: rep % len(kinds)]


@dataclass(frozen=True)
class Runner:
    """What every run shares: the spaces by kind, the warm corpus, where events and runs go."""

    spaces: dict[str, Any]
    base: Any
    data: Any
    events_file: Path
    work: Path
    epoch_samples: int

    def run(self, kind: str, rep: int) -> dict[str, Any]:
        """One run of `kind` (local, a launcher, multi) -> its breakdown."""
        if kind == "local":
            run = run_local(self.base, self.data, self.events_file, self.work, rep)
            return local_breakdown(run["events"], self.epoch_samples)
        run = run_ray(self.spaces[kind], self.work / "storage", self.events_file, f"{kind}-{rep}")
        breakdown = multi_breakdown if kind == "multi" else ray_breakdown
        return breakdown(run["events"], run["start"], run["end"], self.epoch_samples)

    def repetition(self, setup: Setup, rep: int) -> dict[str, Any]:
        order = rep_order(setup.kinds, rep)
        row: dict[str, Any] = {"rep": rep, "order": order}
        for kind in order:
            row[kind] = self.run(kind, rep)
        for launcher in setup.launchers:
            row[f"throughput_ratio_{launcher}"] = (
                row[launcher]["steady_samples_per_s"] / row["local"]["steady_samples_per_s"]
            )
        print(f"[ray_overhead] rep {rep}: local {row['local']['wall_s']:.1f}s, "
              + ", ".join(f"{k} {row[k]['wall_s']:.1f}s" for k in setup.kinds[1:]), flush=True)
        return row


def one_trial_spaces(setup: Setup) -> dict[str, Any]:
    """The parsed space of each kind of Ray run: one per launcher, and the multi-trial one."""
    from hiersearch.search.space import parse_space

    def space(launcher: str, trials: int = 1) -> Any:
        return parse_space(space_raw(setup.model, setup.docs, setup.epochs, setup.batch_size,
                                     300, setup.util_docs, launcher, trials))

    spaces = {launcher: space(launcher) for launcher in LAUNCHERS}
    if setup.trials:
        spaces["multi"] = space("auto", setup.trials)
    return spaces


def start_ray(events_file: Path) -> float:
    """Ray with the timing probes in its workers; the seconds its start took."""
    init_start = time.time()
    ray_init(
        num_cpus=2,
        env_vars={
            _timing.EVENTS_ENV: str(events_file),
            "PYTHONPATH": os.pathsep.join(
                [str(BENCH_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        },
        runtime_env={"worker_process_setup_hook": "_timing.install"},
    )
    return time.time() - init_start


def launcher_summary(runs: list[dict[str, Any]], launcher: str) -> dict[str, Any]:
    """One launcher's medians over the repetitions and its verdicts."""
    ratio = median([r[f"throughput_ratio_{launcher}"] for r in runs])
    fixed = median([r[launcher]["fixed_overhead_s"] for r in runs])
    return {
        "throughput_ratio_median": ratio,
        "ray_fixed_overhead_s_median": fixed,
        "ray_added_overhead_s_median": median(
            [r[launcher]["fixed_overhead_s"] - r["local"]["fixed_overhead_s"] for r in runs]
        ),
        # a phase missing from a run took no time there (e.g. no process bootstrap when
        # Ray placed the trial on a worker process it had started before the run)
        "ray_phases_s_median": {
            name: median([r[launcher]["phases_s"].get(name, 0.0) for r in runs])
            for name in dict.fromkeys(n for r in runs for n in r[launcher]["phases_s"])
        },
        "target_throughput_0.95": verdict(ratio, 0.95, higher_is_better=True),
        "target_fixed_overhead_10s": verdict(fixed, 10.0, higher_is_better=False),
    }


def summarise(setup: Setup, runs: list[dict[str, Any]], load_averages: list[list[float]],
              train_docs: int, ray_init_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "machine": machine(),
        "quick": setup.quick,
        "setup": {
            "model": setup.model, "docs": setup.docs, "train_docs": train_docs,
            "epochs": setup.epochs, "batch_size": setup.batch_size, "max_length": 128,
            "variant": VARIANT, "cpus_per_worker": 1, "torch_threads_per_trial": 1,
            "util_docs": setup.util_docs, "ray_init_once_s": ray_init_s,
            "multi_trial_search_trials": setup.trials,
        },
        "load_average_per_rep": load_averages,
        "runs": runs,
        "local_fixed_overhead_s_median": median([r["local"]["fixed_overhead_s"] for r in runs]),
        "local_phases_s_median": {
            name: median([r["local"]["phases_s"][name] for r in runs])
            for name in runs[0]["local"]["phases_s"]
        },
    }
    for launcher in setup.launchers:  # auto: fit in the Tune trial; train: a TorchTrainer
        out[launcher] = launcher_summary(runs, launcher)
    if setup.trials:
        out["multi"] = multi_summary(runs, setup.trials, "auto" in setup.launchers)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        setup = resolve_setup(args)
    except ValueError as exc:
        parser.error(str(exc))
    home = setup_env()
    events_file = Path(home) / "events.jsonl"
    os.environ[_timing.EVENTS_ENV] = str(events_file)

    import ray

    from hiersearch.search.preflight import prepare_data

    _timing.install_now()
    spaces = one_trial_spaces(setup)
    base = spaces["auto"].base_config()
    data = prepare_data(spaces["auto"], base, None, os.environ["HIERSEARCH_DATA"])  # warm
    from hiersearch.data.encode import load_encoded

    train_docs = len(load_encoded(data.encoded_path).splits["train"])
    work = Path(tempfile.mkdtemp(prefix="hiersearch-bench-ray-"))
    runner = Runner(spaces, base, data, events_file, work,
                    _epoch_samples(train_docs, setup.batch_size))
    ray_init_s = start_ray(events_file)
    load_averages = []
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(setup.reps):
            load_averages.append([round(x, 2) for x in os.getloadavg()])
            runs.append(runner.repetition(setup, rep))
        profile = profile_fit(base, data, work) if args.profile else None
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    out = summarise(setup, runs, load_averages, train_docs, ray_init_s)
    if profile is not None:
        out["profile_fit_top_cumulative"] = profile
    out["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    emit("ray_overhead", out, args.json)


if __name__ == "__main__":
    main()
