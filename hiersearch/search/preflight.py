"""Everything a search settles before Ray starts: bad input fails the command (exit 2), not each
trial after minutes. No Ray here: what a space file accepts but a search would ignore, every
fixed trial resolved against the model depth and the corpus levels, the settings a resumed
experiment keeps, and the corpus every trial shares.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from hiersearch.data.prepare import PreparedData, encode_corpus, find_corpus
from hiersearch.errors import InputError
from hiersearch.model.encoder import encoder_depth, tokenizer_path
from hiersearch.report.experiment import meta_location, read_meta
from hiersearch.search.space import SpaceFile, assignment_of, parse_space, trial_config
from hiersearch.trial.config import TrialConfig

# TrialConfig fields that shape the encoded corpus: it is encoded once per experiment (with
# the trial section's values), so searching them would change nothing.
PER_EXPERIMENT_FIELDS = ("corpus", "levels", "max_length", "cache_dir")


def prepare_data(
    space: SpaceFile, base: TrialConfig, data_dir: str | None, data_root: str
) -> PreparedData:
    """Find or synthesize the experiment's corpus (`--data`, else the space's, else the base
    config's; a synthetic one under `data_root`), then encode it once for every trial."""
    corpus, corpus_dir = find_corpus(
        replace(space.data, corpus=data_dir or space.data.corpus or base.corpus or None),
        data_root,
        base.levels,
    )
    # The model's config before its tokenizer: a missing model is then an InputError naming
    # it (the tokenizer loader would raise a bare OSError for a hub name when offline).
    num_layers = encoder_depth(base.model)
    return encode_corpus(
        corpus,
        corpus_dir,
        tokenizer=tokenizer_path(base.model),
        num_layers=num_layers,
        max_length=base.max_length,
        cache_dir=base.cache_dir,
    )


def data_root(storage: str) -> str:
    """Where synthetic corpora are written: $HIERSEARCH_DATA, else beside the experiments
    (under runs/ when the experiments go to a bucket)."""
    return os.environ.get("HIERSEARCH_DATA") or (
        "runs/_data" if "://" in storage else str(Path(storage) / "_data")
    )


def check_space(space: SpaceFile) -> None:
    """What `parse_space` accepts but a search would silently ignore."""
    if "assignment" in space.trial:
        raise InputError(
            "not used: each trial's assignment comes from the assignment section "
            "(space: variants or monotone; variants: [...])",
            where=f"{space.path}: trial: assignment",
        )
    if "launcher" in space.search:
        raise InputError(
            "cannot be searched: it decides how every trial of the experiment runs",
            where=f"{space.path}: search: launcher",
        )
    if "gpus_per_worker" in space.search:
        raise InputError(
            "cannot be searched: it decides how many trials share the GPUs at once; set it in "
            "the trial section",
            where=f"{space.path}: search: gpus_per_worker",
        )
    for key in PER_EXPERIMENT_FIELDS:
        if key in space.search:
            raise InputError(
                "cannot be searched: the corpus is encoded once per experiment; set it in "
                "the trial section (or run one experiment per value)",
                where=f"{space.path}: search: {key}",
            )


def check_trials(
    space: SpaceFile, base: TrialConfig, data: PreparedData, points: list[dict[str, Any]]
) -> None:
    """Resolve every fixed trial as its driver will, and every searched backbone, against the
    model depth and the corpus levels: an InputError here costs no Ray start."""
    from hiersearch.trial.recipe import resolve_assignment

    for point in points:
        assignment = assignment_of(point, data.num_layers, data.label_counts, space)
        config = trial_config(base, point, assignment)
        resolve_assignment(config.assignment, data.num_layers, data.label_counts)
    model_dist = space.search.get("model") or {}
    for choice in model_dist.get("choices") or []:
        _check_backbone(str(choice), base, data.num_layers, f"{space.path}: search: model")


def _check_backbone(choice: str, base: TrialConfig, num_layers: int, where: str) -> None:
    depth = encoder_depth(choice)
    if depth != num_layers:  # assignments are drawn for one depth
        raise InputError(
            f"model {choice!r} has {depth} layers, the experiment's base model "
            f"{base.model!r} has {num_layers}",
            where=where,
        )
    if tokenizer_path(choice) != tokenizer_path(base.model):
        raise InputError(
            f"model {choice!r} has another tokenizer than the base model {base.model!r}, "
            "whose tokens the corpus is encoded with",
            where=where,
        )


def resume_settings(
    path: str, space: SpaceFile, model: str | None, data_dir: str | None
) -> tuple[SpaceFile, TrialConfig, str | None]:
    """The space, base config and corpus the experiment at `path` was started with, so that
    its remaining trials run exactly like its finished ones whatever the resuming command
    line says; a --model or --data that contradicts them is an InputError."""
    meta = read_meta(path)
    if meta is None:  # an experiment from before hiersearch.json: trust the command line
        return space, space.base_config(model=model), data_dir
    where = meta_location(path)
    try:
        stored = parse_space(meta["space"], str(meta.get("space_file") or where))
        base = TrialConfig.from_dict(meta["base_config"], where=f"{where}: base_config")
        corpus = str(meta["corpus"])
    except (KeyError, TypeError) as exc:
        raise InputError(f"missing or malformed key {exc}", where=where) from None
    if model is not None and model != base.model:
        raise InputError(
            f"the experiment being resumed uses model {base.model!r}; drop --model or start "
            "a new experiment (--name)",
            where="--model",
        )
    if data_dir is not None and Path(data_dir).resolve() != Path(corpus).resolve():
        raise InputError(
            f"the experiment being resumed uses the corpus {corpus}; drop --data or start a "
            "new experiment (--name)",
            where="--data",
        )
    return stored, base, corpus


def with_seeds(space: SpaceFile, seeds: int) -> SpaceFile:
    """The space with `seeds` seeds per configuration (`--seeds`)."""
    if seeds < 1:
        raise InputError("must be >= 1", where="--seeds")
    return replace(space, tune=replace(space.tune, seeds=seeds))
