"""`hiersearch leaderboard`: experiment directories -> one table, and with --importance the
parameter importances of each experiment's search with its study's pictures."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from hiersearch.cli.common import EXIT_OK
from hiersearch.errors import InputError

__all__ = ["COMMANDS", "add_parsers"]


def add_parsers(sub: Any) -> None:
    board = sub.add_parser("leaderboard", help="experiment directories -> one table")
    board.add_argument("dirs", nargs="+")
    board.add_argument("--sort", default=None)
    board.add_argument("--group-by", default=None)
    board.add_argument("--top", type=int, default=None)
    board.add_argument("--where", default=None)
    board.add_argument(
        "--columns", default=None,
        help="comma-separated columns to show, or 'all' (default: the summary columns in "
        "table, markdown and latex; every column in csv and json)",
    )
    board.add_argument(
        "--format", default=None, choices=("table", "markdown", "csv", "json", "latex"),
        help="default: from --out's suffix, else table",
    )
    board.add_argument("--out", default=None, help="write to this file (atomically)")
    board.add_argument(
        "--pareto", action="store_true",
        help="keep only the Pareto front of a search over several metrics",
    )
    board.add_argument(
        "--importance", action="store_true",
        help="print the parameter importances of the search's metric(s) and write "
        "importance.png and history.png (and pareto_front.png) into the experiment directory",
    )
    board.add_argument(
        "--ensemble", action="store_true",
        help="fit (or refit) each experiment's ensemble over its best trials and its baseline "
        "first: the table's 'ensemble' row, kept as ensemble.json",
    )
    board.add_argument(
        "--ensemble-members", type=int, default=None, metavar="M",
        help="with --ensemble: the M best finished trials by the search metric (default 20)",
    )
    board.add_argument(
        "--study-storage", default=None, metavar="URL",
        help="the Optuna study's URL, when hiersearch.json hides its password",
    )


def _leaderboard(args: argparse.Namespace) -> int:
    from hiersearch.report import leaderboard as lb
    from hiersearch.report import results

    if args.out:
        _refuse_experiment_files(args.out, args.dirs)
    if args.ensemble or args.ensemble_members is not None:
        from hiersearch.cli.runs import ensemble_members, fit_ensemble

        members = ensemble_members(args.ensemble_members)
        for location in args.dirs if members else []:  # stdout holds the table only
            fit_ensemble(location, members, sys.stderr)
    table = lb.mark_pareto(results.load_experiments(args.dirs))
    if args.pareto:
        table = lb.keep_pareto(table)
    if args.where:
        table = lb.filter_rows(table, args.where)
    if args.group_by:
        table = lb.group_rows(table, args.group_by)
    table = lb.sort_rows(table, args.sort, None)
    if args.top is not None:
        table = lb.top(table, args.top)
    fmt = args.format or (lb.format_of(args.out) if args.out else "table")
    table = lb.select_columns(table, args.columns, fmt)
    if args.out:
        lb.export(table, args.out, fmt)
        print(f"wrote {args.out}")
    else:
        print(lb.render(table, fmt))
    if args.importance:  # per experiment: a storage root stands for every one in it
        for location in [e for d in args.dirs for e in results.experiment_locations(d)]:
            _importance(location, args.study_storage)
    return EXIT_OK


def _refuse_experiment_files(out: str, dirs: Sequence[str]) -> None:
    """A leaderboard's --out must not replace a file of an experiment it reads (its
    hiersearch.json, a trial's results, Tune's state): whatever name the path takes. A new
    file is harmless, even inside an experiment."""
    from pathlib import Path

    from hiersearch.files import is_inside
    from hiersearch.report import results

    target = Path(out).expanduser()
    if not target.exists():
        return
    local = [d for d in dirs if "://" not in d or d.startswith("file://")]  # not a bucket's
    for location in [e for d in local for e in results.experiment_locations(d)]:
        if is_inside(target, location.removeprefix("file://")):
            raise InputError(
                f"{out} is a file of the experiment {location}, which the leaderboard reads; "
                "writing it would replace that file (write the table outside the experiment)",
                where="--out",
            )


def _importance(location: str, study_storage: str | None) -> None:
    """Parameter importances per searched metric, and the study's pictures beside it."""
    from hiersearch.report.experiment import read_meta
    from hiersearch.report.study import (
        ConstantObjective,
        group_importances,
        importances,
        load_study,
        write_pictures,
    )

    meta = read_meta(location) or {}
    study = load_study(location, meta, study_storage)
    metrics = meta.get("metrics") or [meta.get("metric") or "objective"]
    per_metric: list[dict[str, float] | ConstantObjective] = []
    for index in range(len(metrics)):
        try:
            per_metric.append(importances(study, index))
        except ConstantObjective as exc:
            per_metric.append(exc)
    if all(isinstance(found, ConstantObjective) for found in per_metric):
        raise per_metric[0]  # nothing to show: refused as the other importance refusals are
    for index, (metric, found) in enumerate(zip(metrics, per_metric, strict=True)):
        if isinstance(found, ConstantObjective):  # the other metric(s) still have theirs
            print(f"\nparameter importances for {metric} ({location}): {found.message}")
            continue
        print(f"\nparameter importances for {metric} ({location}):")
        for param, value in found.items():
            print(f"  {param:<24} {value:.3f}")
        for count, group in group_importances(study, index):
            print(f"  within the {count} trials that also have {_other_params(group)}:")
            for param, value in group.items():
                print(f"    {param:<22} {value:.3f}")
    if "://" in location and not location.startswith("file://"):
        return  # pictures are written next to a local experiment only
    first = {} if isinstance(per_metric[0], ConstantObjective) else per_metric[0]
    for path in write_pictures(study, location.removeprefix("file://"), metrics, first):
        print(f"wrote {path}")


def _other_params(found: dict[str, float]) -> str:
    names = sorted(p for p in found if "/" in p) or sorted(found)
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


COMMANDS = {"leaderboard": _leaderboard}
