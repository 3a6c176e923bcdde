"""A finished trial -> a self-contained model directory (`hiersearch export`).

The directory holds everything prediction needs and nothing that needs Ray, the encoding cache
or the experiment directory:

    encoder/       the encoder cut at its top used layer (`save_pretrained`)
    tokenizer/     its tokenizer (`save_pretrained`)
    heads.pt       the classifier's state dict without the encoder's keys (heads, norms with
                   their running statistics)
    model.json     format, assignment, head options, label counts, max_length, the trial's
                   config and final metrics, experiment and trial id, and `thresholds`: each
                   level's F1 threshold tuned on dev at the best epoch (a label is predicted
                   iff its probability >= it), null for a trial trained before thresholds
                   were tuned
    labels.json    per level: label ids in the training column order and their descriptions
    hierarchy.json the hierarchy the trial trained on (cut to its levels)
    README.md      a short model card

The trial's final checkpoint holds the weights of its best epoch (by dev loss, see the recipe's
`finish`), the ones its dev and test metrics were measured with. An experiment's ensemble
exports through `export_ensemble.py`, from the pieces here (`read_trial`, `write_encoder`,
`write_model_files`).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from hiersearch import metrics as M
from hiersearch.data.corpus import load_corpus_header
from hiersearch.data.hierarchy import Hierarchy, read_json_object
from hiersearch.errors import InputError
from hiersearch.files import (
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    check_writable_dir,
)
from hiersearch.model.classifier import LayerwiseClassifier
from hiersearch.model.encoder import tokenizer_path
from hiersearch.report.experiment import open_location, read_meta
from hiersearch.report.results import STATUS_TERMINATED, load_experiments
from hiersearch.trial import checkpoint as trial_checkpoint
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.recipe import build_classifier

# model.json's "format": bumped when the directory layout changes incompatibly
MODEL_FORMAT = "hiersearch.model/1"
MODEL_FILE, LABELS_FILE, HEADS_FILE, HIERARCHY_FILE = (
    "model.json", "labels.json", "heads.pt", "hierarchy.json",
)
ENCODER_DIR, TOKENIZER_DIR = "encoder", "tokenizer"
ENCODER_PREFIX = "encoder."


def export_trial(
    experiment: str, out: str, trial: str | None = None, best: str | None = None
) -> Path:
    """Export one finished trial of `experiment` (by id, else the best by `best` or the
    experiment's metric) to `out`; returns the model directory."""
    if trial is not None and best is not None:
        raise InputError("give --trial or --best, not both", where="--trial")
    target = check_new_dir(out)
    row = choose_trial(experiment, trial, best)
    model = read_trial(str(row["checkpoint"]))
    with atomic_directory(target) as tmp:
        write_model_dir(tmp, model.core, model.config, model.hierarchy, model.synthetic,
                        model.final, str(row["experiment"]), str(row["trial_id"]),
                        str(row["checkpoint"]))
    return target


@dataclass(frozen=True)
class TrialModel:
    """A finished trial's model as its final checkpoint holds it."""

    config: TrialConfig
    hierarchy: Hierarchy  # the hierarchy it trained on (cut to its levels)
    synthetic: bool  # its corpus is SYNTHETIC
    core: LayerwiseClassifier  # its best epoch's weights, in eval mode
    final: dict[str, Any]  # its final report


def read_trial(location: str) -> TrialModel:
    """The model in a finished trial's final checkpoint (a local path or a URI); a missing or
    damaged file is an InputError naming it."""
    with _local_checkpoint(location) as checkpoint:
        config = _read_config(checkpoint)
        hierarchy, synthetic = _trial_hierarchy(config)
        core = build_classifier(config, hierarchy.label_counts()).eval()
        _load_weights(core, checkpoint)
        final = read_json_object(trial_checkpoint.final_metrics_path(checkpoint))
    return TrialModel(config, hierarchy, synthetic, core, final)


def check_new_dir(out: str) -> Path:
    """`--out` as a new or empty directory that can be written (checked before any
    checkpoint is read: a place that cannot be written fails at once)."""
    target = Path(out).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError("exists and is not an empty directory", where=f"--out {out}")
    try:
        check_writable_dir(target)
    except OSError as exc:
        raise InputError.from_os_error(exc, f"--out {out}") from None
    return target


def choose_trial(
    experiment: str, trial: str | None, best: str | None, table: pd.DataFrame | None = None
) -> pd.Series:
    """The leaderboard row of the trial to export: by id, or the best finished trial with a
    checkpoint by `best` (default: the experiment's metric and mode). `table`: the
    experiment's leaderboard table when the caller has already read it."""
    if table is None:
        table = load_experiments([experiment])
    if trial is not None:
        rows = table[table["trial_id"].astype(str) == trial]
        if rows.empty:
            known = ", ".join(map(str, table["trial_id"]))
            raise InputError(f"no trial {trial!r} in {experiment} (trials: {known})",
                             where="--trial")
        row = rows.iloc[0]
        if row["status"] != STATUS_TERMINATED or not isinstance(row["checkpoint"], str):
            raise InputError(f"trial {trial!r} has not finished with a checkpoint "
                             f"(status: {row['status']})", where="--trial")
        return row
    meta = read_meta(experiment) or {}
    metric = best or meta.get("metric") or M.DEFAULT_METRIC
    if metric not in table.columns:
        raise InputError(f"no metric {metric!r} in {experiment}", where="--best")
    mode = _mode(metric, meta)
    done = table[(table["status"] == STATUS_TERMINATED) & table["checkpoint"].notna()]
    done = done[pd.to_numeric(done[metric], errors="coerce").notna()]
    if done.empty:
        raise InputError(f"no finished trial with a checkpoint and a {metric!r} value in "
                         f"{experiment}", where="--best")
    values = pd.to_numeric(done[metric])
    return done.loc[values.idxmax() if mode == "max" else values.idxmin()]


def _mode(metric: str, meta: dict[str, Any]) -> str:
    """The experiment's mode for its own metric; otherwise losses and times are minimized."""
    if metric == meta.get("metric") and meta.get("mode") in ("max", "min"):
        return str(meta["mode"])
    name = metric.rpartition("/")[2]
    return "min" if "loss" in name or name.endswith(("_s", "seconds", "_mb")) else "max"


@contextlib.contextmanager
def _local_checkpoint(location: str) -> Iterator[Path]:
    """The checkpoint as a local directory: as is on a local disk, else a temporary copy."""
    if "://" not in location:
        yield Path(location)
        return
    import pyarrow.fs

    filesystem, path = open_location(location)
    with tempfile.TemporaryDirectory(prefix="hiersearch-export-") as tmp:
        pyarrow.fs.copy_files(path, tmp, source_filesystem=filesystem,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
        yield Path(tmp)


def _read_config(checkpoint: Path) -> TrialConfig:
    path = trial_checkpoint.config_path(checkpoint)
    return TrialConfig.from_dict(read_json_object(path), where=str(path))


def _trial_hierarchy(config: TrialConfig) -> tuple[Hierarchy, bool]:
    """The hierarchy as the trial saw it (cut to its levels), and whether its corpus is
    SYNTHETIC: its `label_index()` is the training column order (as the encoding builds it).
    No document is read."""
    hierarchy, meta = load_corpus_header(config.corpus)
    if config.levels is not None:
        hierarchy = hierarchy.truncate(*config.levels)
    return hierarchy, bool(meta.get("synthetic", False))


def _load_weights(core: LayerwiseClassifier, checkpoint: Path) -> None:
    """The checkpoint's weights into `core` (a missing or damaged file is a CheckpointError,
    an InputError naming it)."""
    weights = trial_checkpoint.read_weights(checkpoint)
    try:
        core.load_state_dict(weights)
    except RuntimeError as exc:  # weights of another shape
        first = str(exc).strip().splitlines()[0]
        where = str(trial_checkpoint.weights_path(checkpoint))
        raise InputError(f"does not fit the trial's model: {first}", where=where) from None


def head_state(core: LayerwiseClassifier) -> dict[str, torch.Tensor]:
    """The classifier's state without the encoder's keys: heads and norms (buffers too)."""
    return {
        k: v.detach().cpu().clone()
        for k, v in core.state_dict().items()
        if not k.startswith(ENCODER_PREFIX)
    }


def write_model_dir(
    tmp: Path, core: LayerwiseClassifier, config: TrialConfig, hierarchy: Hierarchy,
    synthetic: bool, final: dict[str, Any], experiment: str, trial_id: str, checkpoint: str,
) -> None:
    write_encoder(tmp, core, config)
    write_model_files(tmp, core, config, hierarchy, synthetic, final, experiment, trial_id,
                      checkpoint)


def write_encoder(tmp: Path, core: LayerwiseClassifier, config: TrialConfig) -> None:
    """The classifier's encoder (cut at its top used layer) and its tokenizer."""
    from transformers import AutoTokenizer

    encoder = core.encoder
    # the classifier dropped the layers above the top one in use: the config must say so
    encoder.config.num_hidden_layers = len(encoder.encoder.layer)
    encoder.save_pretrained(tmp / ENCODER_DIR)
    AutoTokenizer.from_pretrained(tokenizer_path(config.model)).save_pretrained(
        tmp / TOKENIZER_DIR
    )


def write_labels(tmp: Path, hierarchy: Hierarchy) -> None:
    """labels.json (each level's ids in the training column order, with descriptions) and
    hierarchy.json."""
    labels = [
        {"level": n, "ids": ids, "descriptions": [hierarchy.node(i).description for i in ids]}
        for n, ids in enumerate(hierarchy.label_index(), 1)
    ]
    atomic_write_json(tmp / LABELS_FILE, {"levels": labels})
    atomic_write_json(tmp / HIERARCHY_FILE, hierarchy.to_json())


def write_model_files(
    tmp: Path, core: LayerwiseClassifier, config: TrialConfig, hierarchy: Hierarchy,
    synthetic: bool, final: dict[str, Any], experiment: str, trial_id: str, checkpoint: str,
) -> None:
    """Everything of a model directory but its encoder and tokenizer: heads.pt, labels.json,
    hierarchy.json, model.json and the model card."""
    torch.save(head_state(core), tmp / HEADS_FILE)
    write_labels(tmp, hierarchy)
    model = _model_json(core, config, hierarchy, synthetic, final, experiment, trial_id,
                        checkpoint)
    atomic_write_json(tmp / MODEL_FILE, model)
    atomic_write_text(tmp / "README.md", model_card(model))


def _model_json(
    core: LayerwiseClassifier, config: TrialConfig, hierarchy: Hierarchy, synthetic: bool,
    final: dict[str, Any], experiment: str, trial_id: str, checkpoint: str,
) -> dict[str, Any]:
    return {
        "format": MODEL_FORMAT,
        "experiment": experiment,
        "trial_id": trial_id,
        "checkpoint": checkpoint,
        "assignment": core.assignment.to_string(),
        "variant": final.get(M.TRIAL_VARIANT),
        "head_options": {
            "pooling": config.pooling,
            "head_norm": config.head_norm,
            "head_hidden": config.head_hidden,
        },
        "encoder_layers": len(core.encoder.encoder.layer),
        "label_counts": core.label_counts,
        "max_length": config.max_length,
        "corpus": {
            "dir": config.corpus,
            "synthetic": synthetic,
            "hierarchy": hierarchy.name,
            "levels": list(config.levels) if config.levels is not None else None,
        },
        "config": config.to_json(),
        "metrics": final,
        # what `hiersearch predict` thresholds each level at by default
        "thresholds": M.f1_thresholds(final, len(core.label_counts)),
    }


def _number(value: Any) -> str:
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    return f"{value:.4f}" if ok else "n/a"


def model_card(model: dict[str, Any]) -> str:
    """README.md of a model directory: what it was trained on and how well it does."""
    corpus, heads, metrics = model["corpus"], model["head_options"], model["metrics"]
    levels = len(model["label_counts"])
    kind = "SYNTHETIC (stands in for a real corpus)" if corpus["synthetic"] else "real"
    names = [*((f"L{n}", f"rp_L{n}") for n in range(1, levels + 1)),
             ("micro", "rp_micro"), ("macro", "rp_macro")]
    rows = [f"| {name} | {_number(metrics.get(f'dev/{key}'))} | "
            f"{_number(metrics.get(f'test/{key}'))} |" for name, key in names]
    thresholds = model.get("thresholds")
    predict = "hiersearch predict . --input docs.jsonl --out predictions.jsonl"
    return "\n".join([
        f"# hiersearch model: trial {model['trial_id']} of {model['experiment']}",
        "",
        f"- corpus: {corpus['dir']} ({kind}; hierarchy {corpus['hierarchy']}, "
        f"{levels} levels, labels per level {model['label_counts']})",
        f"- variant: {model['variant'] or 'searched'}; assignment {model['assignment']}",
        f"- encoder: {model['config']['model']}, {model['encoder_layers']} layers kept; "
        f"max_length {model['max_length']}",
        f"- heads: pooling {heads['pooling']}, head_norm {heads['head_norm']}, "
        f"head_hidden {heads['head_hidden']}",
        "",
        "R-Precision of the exported weights (the trial's best epoch by dev loss):",
        "",
        "| level | dev | test |",
        "|---|---|---|",
        *rows,
        "",
        *_f1_card(metrics, levels, thresholds),
        "Label documents (JSON Lines or CSV with a `text` field, or `-` for standard input):",
        "",
        "```",
        predict if thresholds else f"{predict} --top-k 5",
        "```",
        "",
    ])


def _f1_card(metrics: dict[str, Any], levels: int, thresholds: list | None) -> list[str]:
    """The model card's F1 table, or why it has none."""
    if not thresholds:
        return ["No F1 thresholds (the trial was trained before hiersearch tuned them): "
                "`predict` needs `--top-k K` or `--threshold T`.", ""]
    rows = []
    for n in [*range(1, levels + 1), None]:
        cells = [_number(metrics.get(key(split, n))) for split in ("dev", "test")
                 for key in (M.f1_micro_key, M.f1_macro_key)]
        name, threshold = ("all", "") if n is None else (f"L{n}", f"{thresholds[n - 1]:.4g}")
        rows.append(f"| {name} | {threshold} | {' | '.join(cells)} |")
    return [
        "F1 of the label sets `predict` outputs by default, each level at its threshold tuned "
        "on dev (before the hierarchy rule):",
        "",
        "| level | threshold | dev micro | dev macro | test micro | test macro |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
