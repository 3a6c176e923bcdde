"""`hiersearch reproduce` and `hiersearch search`: run an experiment with Ray, then print its
tables and the command that exports its best trial (with --json, one summary object on stdout).

The experiment's Ray is left before anything is printed: Ray's driver threads print the
trials' log lines (e.g. Ray Train's "Checkpoint successfully created at ...") whenever they
arrive, so the tables and the export hint would otherwise not be the last lines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from hiersearch.cli.common import EXIT_OK
from hiersearch.errors import InputError
from hiersearch.search_spaces import Preset, preset_lines

__all__ = ["COMMANDS", "add_parsers", "print_export_hint"]


def _presets_epilog(presets: Sequence[Preset]) -> str:
    """The presets' help lines (their space files' `help:`), one line each."""
    width = max(len(p.name) for p in presets)
    lines = [f"  {p.name:<{width}}  {p.help}" for p in presets]
    return "presets (what it runs; corpus; hardware; about how long):\n" + "\n".join(lines)


def add_parsers(sub: Any) -> None:
    presets = preset_lines()
    reproducible = [p for p in presets if p.reproduce]
    reproduce = sub.add_parser(
        "reproduce", help="the five named variants as fixed trials",
        epilog=_presets_epilog(reproducible),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    reproduce.add_argument("--preset", default="quick", choices=[p.name for p in reproducible])
    reproduce.add_argument("--seeds", type=int, default=None, help="seeds per configuration")
    _add_run_options(reproduce)

    search = sub.add_parser(
        "search", help="search a space file with Ray Tune + Optuna",
        epilog=_presets_epilog(presets),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    search.add_argument("--space", required=True, help="a search-space file or preset name")
    search.add_argument(
        "--trials", type=int, default=None,
        help="trials in all (default: the space's num_samples); cuts a grid to its first N points",
    )
    _add_run_options(search)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default="runs", help="experiment storage: path or URI")
    p.add_argument("--name", default=None, help="experiment name (default: the space's)")
    p.add_argument("--data", default=None, help="corpus dir (default: the space's)")
    p.add_argument("--model", default=None, help="backbone: minilm, mpnet, tiny:LxH or a dir")
    p.add_argument(
        "--address", default=None, help="Ray cluster (default: RAY_ADDRESS, else a local Ray)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted experiment; finished trials are kept",
    )
    p.add_argument(
        "--study-storage",
        default=os.environ.get("HIERSEARCH_STUDY_STORAGE"),
        metavar="URL",
        help="SQLAlchemy URL of the Optuna study, e.g. postgresql://host/db (default: "
        "HIERSEARCH_STUDY_STORAGE, else a SQLite file in the experiment directory)",
    )
    p.add_argument(
        "--json", action="store_true",
        help="end with one JSON summary object on stdout (the progress goes to stderr)",
    )
    p.add_argument(
        "--ensemble-members", type=int, default=None, metavar="M",
        help="fit an ensemble (the leaderboard's 'ensemble' row) over the M best finished "
        "trials and the baseline once the run ends (default 20; 0: none)",
    )
    p.add_argument(
        "--mlflow", default=None, metavar="URI",
        help="log every trial as an MLflow run (default: HIERSEARCH_MLFLOW_URI); "
        "pip install 'hiersearch[mlflow]'",
    )


def _reproduce(args: argparse.Namespace) -> int:
    _prepare_env()
    from hiersearch.report import leaderboard as lb
    from hiersearch.report import results
    from hiersearch.report.experiment import read_meta
    from hiersearch.search.space import load_space

    with _summary_stdout(args) as summary_out:
        space = load_space(args.preset)
        path = _run(
            args, space, fixed_only=True, seeds=args.seeds,
            default_name=f"reproduce-{args.preset}",
        )
        table = results.load_experiments([path])
        levels = len((read_meta(path) or {}).get("label_counts", [])) or None
        for split in ("dev", "test"):
            print(lb.paper_table_text(lb.paper_table(table, split, levels), split))
        print(f"experiment: {path}")
        best = print_export_hint(path, None, table)
        _write_summary(summary_out, args.command, path, table, *best)
    return EXIT_OK


def _search(args: argparse.Namespace) -> int:
    _prepare_env()
    from hiersearch.report import leaderboard as lb
    from hiersearch.report import results
    from hiersearch.search.space import load_space

    if args.trials is not None and args.trials < 1:
        raise InputError("must be >= 1", where="--trials")
    with _summary_stdout(args) as summary_out:
        space = load_space(args.space)
        path = _run(args, space, trials=args.trials)
        table = lb.mark_pareto(results.load_experiments([path]))
        metric = space.tune.metrics[0] if space.tune.metrics[0] in table.columns else None
        table = lb.sort_rows(table, metric, space.tune.modes[0])
        # the leaderboard's summary columns, as `hiersearch leaderboard` shows them
        print(lb.render(lb.select_columns(lb.top(table, 10), None, "table"), "table"))
        print(f"\nexperiment: {path}")
        best = print_export_hint(path, metric, table)
        _write_summary(summary_out, args.command, path, table, *best)
    return EXIT_OK


def _prepare_env() -> None:
    # The classic trial table shows the metric columns we choose (the new engine ignores them).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


def _run(args: argparse.Namespace, space: Any, **extra: Any) -> str:
    """The experiment run with the command's options, its Ray left (see the module's
    docstring) before the path to the experiment is returned."""
    from hiersearch.search.run import run_search

    default_name = extra.pop("default_name", None)
    members = ensemble_members(args.ensemble_members)
    with _ray_left_as_found():
        path = run_search(
            space,
            storage=args.storage,
            name=args.name or default_name,
            resume=args.resume,
            address=args.address,
            data_dir=args.data,
            model=args.model,
            study_storage=args.study_storage,
            mlflow=args.mlflow,
            **extra,
        )
    if members:
        fit_ensemble(path, members)
    return path


def ensemble_members(given: int | None) -> int:
    """--ensemble-members: the trials an ensemble chooses from (0: no ensemble)."""
    from hiersearch.report.ensemble import TOP

    if given is not None and given < 0:
        raise InputError("must be >= 0", where="--ensemble-members")
    return TOP if given is None else given


def fit_ensemble(path: str, members: int, out: TextIO | None = None) -> None:
    """Fit the experiment's ensemble (search/members.py) and say what it gave on `out`
    (default stdout); an experiment with nothing to fit on says so and goes on (the run
    itself succeeded)."""
    from hiersearch import metrics as M
    from hiersearch.report.ensemble import KIND_BASELINE, KIND_DENSE
    from hiersearch.search.members import fit_experiment_ensemble

    try:
        fitted = fit_experiment_ensemble(path, members)
    except InputError as exc:
        print(f"[hiersearch] no ensemble: {exc.where}: {exc.message}", file=sys.stderr)
        return
    for mode, ensemble in fitted.ensembles.items():
        dev, test = (ensemble.metrics.get(M.rp_macro_key(s), math.nan) for s in ("dev", "test"))
        served = " (the leaderboard's 'ensemble' row)" if mode == fitted.served else ""
        print(f"[hiersearch] ensemble, {mode.replace('_', ' ')} selection of "
              f"{len(ensemble.used())} members: dev macro {dev:.3f}, test macro {test:.3f}"
              f"{served}", file=out, flush=True)
    skipped = f"; skipped {len(fitted.skipped)}" if fitted.skipped else ""
    kinds = {m.kind for m in fitted.ensemble.members}
    others = "".join(f", {name}" for kind, name in ((KIND_BASELINE, "the baseline"),
                                                    (KIND_DENSE, "the dense k-NN"))
                     if kind in kinds)
    print(f"[hiersearch] ensemble fitted in {fitted.seconds:.1f}s over the {fitted.top} best "
          f"trials{others}{skipped}: {path.rstrip('/')}/ensemble.json", file=out, flush=True)


@contextlib.contextmanager
def _ray_left_as_found() -> Iterator[None]:
    """A Ray the command connects to (or starts) is left as soon as the run ends, not by
    `ray.init`'s exit hook after the command: until then Ray's driver threads print what the
    raylet and the workers log (e.g. "(raylet) WARNING: 10 PYTHON worker processes have been
    started..."), and at shutdown the repeats of a line it held back, on whatever stdout is
    then. A Ray that was up before (a test's, a notebook's) stays up."""
    from hiersearch.search.cluster import connected, disconnect

    before = connected()
    try:
        yield
    finally:
        if not before and connected():
            disconnect()


@contextlib.contextmanager
def _summary_stdout(args: argparse.Namespace) -> Iterator[TextIO | None]:
    """With --json: standard output (Python's and file descriptor 1, which Ray's log lines
    and child processes write to as well) goes to standard error, and this yields the real
    standard output for the summary; else None, with nothing redirected."""
    if not args.json:
        yield None
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real = open(saved, "w", closefd=False)  # noqa: SIM115 (flushed and closed below)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield real
    finally:
        real.close()
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def print_export_hint(
    path: str, metric: str | None, table: Any = None
) -> tuple[Any, str | None]:
    """Print the command that exports the best finished trial (by `metric`, else the
    experiment's); return that trial's row and the command, (None, None) when no finished
    trial has a checkpoint. `table`: the experiment's leaderboard table, if already read."""
    from hiersearch.serve.export import choose_trial

    try:
        row = choose_trial(path, None, metric, table)
    except InputError:  # no finished trial with a checkpoint: nothing to export
        return None, None
    command = f"hiersearch export {path} --trial {row['trial_id']} --out models/{row['trial_id']}"
    print(f"export the best trial: {command}")
    return row, command


def _write_summary(
    out: TextIO | None, command: str, path: str, table: Any, best: Any, export: str | None
) -> None:
    """With --json (`out`, the real stdout): the run's summary object (report/summary.py)."""
    if out is None:
        return
    from hiersearch.report.summary import run_summary

    out.write(json.dumps(run_summary(command, path, table, best, export), indent=2) + "\n")


COMMANDS = {"reproduce": _reproduce, "search": _search}
