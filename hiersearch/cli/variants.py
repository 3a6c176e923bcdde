"""`hiersearch variants` and `hiersearch space`: the named layer-to-level variants, and the size
of an assignment search space."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hiersearch.cli.common import EXIT_OK
from hiersearch.errors import InputError

__all__ = ["COMMANDS", "add_parsers"]


def add_parsers(sub: Any) -> None:
    variants = sub.add_parser("variants", help="the named layer-to-level variants")
    variants.add_argument("--layers", type=int, required=True)
    variants.add_argument("--levels", type=int, required=True)
    variants.add_argument("--label-counts", default=None, help="c1,..,cL (HYBRID uses them)")
    variants.add_argument("--json", action="store_true")

    space = sub.add_parser("space", help="size of the assignment search space")
    space.add_argument("--layers", type=int, required=True)
    space.add_argument("--levels", type=int, required=True)
    space.add_argument("--space", default=None, help="a search-space file (its options)")
    space.add_argument("--json", action="store_true")


def _label_counts(text: str | None, levels: int) -> list[int] | None:
    if text is None:
        return None
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError as exc:
        raise InputError(
            f"expected comma-separated integers, got {text!r}", where="--label-counts"
        ) from exc
    if len(counts) != levels or any(c < 1 for c in counts):
        raise InputError(
            f"expected {levels} positive counts, got {text!r}", where="--label-counts"
        )
    return counts


def _variants(args: argparse.Namespace) -> int:
    from hiersearch.model.assignment import check_layer_count, named_variants

    check_layer_count(args.layers, "--layers")
    counts = _label_counts(args.label_counts, args.levels)
    variants = named_variants(args.layers, args.levels, counts)
    if args.json:  # every layer listed, as before: the JSON's shape stays
        out = {name: a.to_json() for name, a in variants.items()}
        print(json.dumps(out, indent=2))
        return EXIT_OK
    width = max(len(name) for name in variants)
    for name, assignment in variants.items():
        print(f"{name:<{width}}  {assignment.to_short_string()}")
    return EXIT_OK


def _space(args: argparse.Namespace) -> int:
    from hiersearch.model.assignment import check_layer_count
    from hiersearch.search.assignment_space import SpaceOptions, space_summary

    check_layer_count(args.layers, "--layers")
    options = SpaceOptions()
    if args.space:
        from hiersearch.search.space import load_space

        options = load_space(args.space).assignment.options()
    summary = space_summary(args.layers, args.levels, options)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")
    return EXIT_OK


COMMANDS = {"variants": _variants, "space": _space}
