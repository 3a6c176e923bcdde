"""`hiersearch export` and `hiersearch predict`: a finished trial as a model directory, and the
labels it predicts for documents."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hiersearch.cli.common import EXIT_OK, positive_int, refuse_input_as_output
from hiersearch.errors import InputError

__all__ = ["COMMANDS", "add_parsers"]


def add_parsers(sub: Any) -> None:
    export = sub.add_parser(
        "export", help="a finished trial (or the ensemble) -> a self-contained model dir"
    )
    export.add_argument("experiment", help="experiment directory (path or URI)")
    pick = export.add_mutually_exclusive_group()
    pick.add_argument("--trial", default=None, help="trial id (see the leaderboard)")
    pick.add_argument(
        "--best", default=None, metavar="METRIC",
        help="the best finished trial by METRIC (default: the experiment's metric and mode)",
    )
    pick.add_argument(
        "--ensemble", action="store_true",
        help="the experiment's ensemble (its ensemble.json) as one model directory",
    )
    export.add_argument("--out", required=True, help="model directory to write (new or empty)")

    predict = sub.add_parser("predict", help="label documents with an exported model")
    predict.add_argument("model_dir")
    predict.add_argument("--input", required=True, help="JSONL or CSV with a text field, or -")
    predict.add_argument("--out", default=None, help="JSON Lines file (default: stdout)")
    limit = predict.add_mutually_exclusive_group()
    limit.add_argument(
        "--top-k", default=None,
        help="a ranking: the K best labels per level (default: label sets at the thresholds "
        "tuned on dev)",
    )
    limit.add_argument(
        "--threshold", default=None, help="label sets of the labels scoring >= T, in (0, 1)"
    )
    predict.add_argument(
        "--consistency", default=None, metavar="drop|add|none",
        help="label sets: drop a label none of whose parents is predicted (default), add its "
        "best parent, or keep the thresholded sets as they are",
    )
    predict.add_argument("--levels", default=None, metavar="A-B", help="only levels A..B")
    predict.add_argument("--batch-size", default="32")
    predict.add_argument("--device", default="cpu", choices=("cpu", "cuda"))


def _export(args: argparse.Namespace) -> int:
    from hiersearch.serve.export import MODEL_FILE, export_trial

    if "://" not in args.experiment:
        refuse_input_as_output("--out", [args.out], [("EXPERIMENT", args.experiment)])
    if args.ensemble:
        from hiersearch.serve.export_ensemble import export_ensemble

        out = export_ensemble(args.experiment, args.out)
    else:
        out = export_trial(args.experiment, args.out, trial=args.trial, best=args.best)
    print(f"wrote {out}")
    tuned = json.loads((out / MODEL_FILE).read_text(encoding="utf-8")).get("thresholds")
    if tuned is None:
        print("note: the trial has no F1 thresholds tuned on dev (trained before hiersearch "
              "tuned them): predict needs --top-k K or --threshold T", file=sys.stderr)
    limit = "" if tuned is not None else " --top-k 5"
    print(f"predict: hiersearch predict {out} --input docs.jsonl --out predictions.jsonl{limit}")
    return EXIT_OK


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"expected a number, got {text!r}", where="--threshold") from None
    if not 0.0 < value < 1.0:  # scores are probabilities; NaN fails this too
        raise InputError(f"must be in (0, 1) (got {text})", where="--threshold")
    return value


def _level_range(text: str) -> tuple[int, int]:
    """"A-B" or "A" (1-based, inclusive); the model's depth is checked once it is loaded."""
    first, sep, last = text.partition("-")
    try:
        bounds = (int(first), int(last) if sep else int(first))
    except ValueError:
        raise InputError(f"expected A-B or A (1-based levels), got {text!r}",
                         where="--levels") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise InputError(f"expected 1 <= A <= B, got {text!r}", where="--levels")
    return bounds


def _predict(args: argparse.Namespace) -> int:
    # every option is checked before the model (and torch) loads
    top_k = positive_int(args.top_k, "--top-k") if args.top_k is not None else None
    threshold = _threshold(args.threshold) if args.threshold is not None else None
    levels = _level_range(args.levels) if args.levels is not None else None
    batch_size = positive_int(args.batch_size, "--batch-size")
    if args.out is not None and args.input != "-":
        refuse_input_as_output("--out", [args.out], [("--input", args.input)])
    from hiersearch.serve.predict import run_predict

    return run_predict(
        model_dir=args.model_dir, input=args.input, out=args.out, top_k=top_k,
        threshold=threshold, levels=levels, batch_size=batch_size, device=args.device,
        consistency=args.consistency,
    )


COMMANDS = {"export": _export, "predict": _predict}
