"""Everything a search settles before Ray starts: bad input fails the command (exit 2), not each
trial after minutes. No Ray here: what a space file accepts but a search would ignore, every
fixed trial resolved against the model depth and the corpus levels, the settings a resumed
experiment keeps, and the corpus every trial shares.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hiersearch.data.encode import encoded_path, is_encoded, tokenizer_fingerprint
from hiersearch.data.prepare import (
    CorpusPlan,
    PreparedData,
    encode_corpus,
    plan_corpus,
    write_planned,
)
from hiersearch.errors import InputError
from hiersearch.files import check_writable_dir
from hiersearch.model.encoder import encoder_depth, tokenizer_path
from hiersearch.report.experiment import meta_location, read_meta
from hiersearch.search.space import SpaceFile, assignment_of, parse_space, trial_config
from hiersearch.trial.config import TrialConfig

# TrialConfig fields that shape the encoded corpus: it is encoded once per experiment (with
# the trial section's values), so searching them would change nothing.
PER_EXPERIMENT_FIELDS = ("corpus", "levels", "max_length", "cache_dir")


@dataclass(frozen=True)
class DataPlan:
    """An experiment's data, settled and checked but not yet written: the corpus (in memory
    when it is a new synthetic one), the model's depth and its tokenizer."""

    corpus: CorpusPlan
    num_layers: int
    tokenizer: str

    @property
    def label_counts(self) -> list[int]:
        return self.corpus.label_counts


def plan_data(space: SpaceFile, base: TrialConfig, data_dir: str | None, root: str) -> DataPlan:
    """Find or synthesize (in memory) the experiment's corpus (`--data`, else the space's,
    else the base config's; a synthetic one under `root`), and check the model and every
    place the data will be written. Nothing is written."""
    spec = replace(space.data, corpus=data_dir or space.data.corpus or base.corpus or None)
    corpus = plan_corpus(spec, root, base.levels)
    # The model's config before its tokenizer: a missing model is then an InputError naming
    # it (the tokenizer loader would raise a bare OSError for a hub name when offline).
    num_layers = encoder_depth(base.model)
    tokenizer = tokenizer_path(base.model)
    tokenizer_fingerprint(tokenizer)  # a model directory without tokenizer files
    where = _corpus_where(space, base, data_dir)
    if corpus.to_write is not None:
        _check_writable(corpus.corpus_dir, where)
    cache = base.cache_dir or str(Path(corpus.corpus_dir) / ".hiersearch-cache")
    if not is_encoded(encoded_path(corpus.corpus, tokenizer, base.max_length, cache)):
        _check_writable(cache, f"{space.path}: trial: cache_dir" if base.cache_dir else where)
    return DataPlan(corpus, num_layers, tokenizer)


def _corpus_where(space: SpaceFile, base: TrialConfig, data_dir: str | None) -> str:
    """Where the user named the experiment's corpus, or the place of a synthetic one."""
    if data_dir:
        return "--data"
    if space.data.corpus:
        return f"{space.path}: data: corpus"
    if base.corpus:
        return f"{space.path}: trial: corpus"
    return "HIERSEARCH_DATA" if os.environ.get("HIERSEARCH_DATA") else "--storage"


def prepare_data(
    space: SpaceFile,
    base: TrialConfig,
    data_dir: str | None,
    root: str,
    plan: DataPlan | None = None,
) -> PreparedData:
    """The experiment's data written: a new synthetic corpus, then its encoding, once for
    every trial (`plan`: what `plan_data` settled, else settled here)."""
    plan = plan or plan_data(space, base, data_dir, root)
    write_planned(plan.corpus)
    return encode_corpus(
        plan.corpus.corpus,
        plan.corpus.corpus_dir,
        tokenizer=plan.tokenizer,
        num_layers=plan.num_layers,
        max_length=base.max_length,
        cache_dir=base.cache_dir,
    )


def _check_writable(path: str, where: str) -> None:
    try:
        check_writable_dir(path)
    except OSError as exc:
        raise InputError.from_os_error(exc, where) from None


def check_destination(storage: str, name: str, name_where: str) -> None:
    """The experiment lands in `storage`/`name`: a name is one directory name (no "/", no
    "..": the experiment would land outside the storage), and a local storage must be a
    directory (or creatable as one) that can be written. Nothing is written."""
    bad = not name or name in (".", "..") or "\0" in name
    if bad or any(sep in name for sep in ("/", "\\", os.sep)):
        raise InputError(
            f"{name!r} is not a directory name: the experiment lands in <storage>/<name> "
            "(no '/', no '..')",
            where=name_where,
        )
    if "://" not in storage:  # a bucket is checked by its first write
        _check_writable(str(Path(storage).expanduser() / name), "--storage")


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


def check_gpus(space: SpaceFile, base: TrialConfig, *, local: bool) -> None:
    """GPU trials need a torch that can use a GPU where they run. The driver sees its own
    torch only: a CPU build is refused when the trials would run on this machine (a local
    Ray), and so is a machine with no GPU; on a cluster the nodes may differ from this one
    (a CPU head node of a GPU cluster is usual), so a CPU build here is a note, and a
    worker without CUDA fails its trial at once (`trial/session.py`, `check_cuda`)."""
    import torch

    searched = space.search.get("use_gpu")
    if not base.use_gpu and (searched is None or True not in searched.choices):
        return
    where = f"{space.path}: {'trial' if base.use_gpu else 'search'}: use_gpu"
    cpu_build = torch.version.cuda is None and getattr(torch.version, "hip", None) is None
    if cpu_build and local:
        raise InputError(
            f"torch {torch.__version__} is a CPU build: install a CUDA build of torch before "
            "hiersearch (README: Running on GPUs), or set use_gpu: false",
            where=where,
        )
    if local and torch.cuda.device_count() == 0:
        raise InputError(
            "this machine has no GPU (torch sees none) and no cluster is named (--address, "
            "RAY_ADDRESS): the trials would wait for a GPU forever; set use_gpu: false",
            where=where,
        )
    if cpu_build:
        print(f"note: {where}: this driver's torch {torch.__version__} is a CPU build; the "
              "cluster's GPU nodes need a CUDA build (a trial on a node without one fails "
              "at once)", file=sys.stderr)


def check_trials(
    space: SpaceFile,
    base: TrialConfig,
    data: PreparedData | DataPlan,
    points: list[dict[str, Any]],
) -> None:
    """Resolve every fixed trial as the trial will (search/trainable.py), and every searched
    backbone, against the model depth and the corpus levels: an InputError here costs no Ray
    start."""
    from hiersearch.model.assignment import resolve_assignment
    from hiersearch.model.classifier import frozen_count

    for point in points:
        assignment = assignment_of(point, data.num_layers, data.label_counts, space)
        config = trial_config(base, point, assignment, space.heads_from)
        layers = resolve_assignment(config.assignment, data.num_layers, data.label_counts)
        frozen = frozen_count(config.freeze_layers, data.num_layers)
        try:
            config.check_smart(frozen >= max(layers.layers_used(data.num_layers)))
        except InputError as exc:
            section = "search" if exc.where in space.search else "trial"
            raise InputError(exc.message, where=f"{space.path}: {section}: {exc.where}") from None
    _check_heads(space, base)
    searched = space.search.get("model")
    for choice in searched.choices if searched else ():
        _check_backbone(str(choice), base, data.num_layers, f"{space.path}: search: model")


def _check_heads(space: SpaceFile, base: TrialConfig) -> None:
    """Every trained heads' checkpoint a trial would start from (`heads_from:`, the trial
    section's `init_heads_from`) is a trial's checkpoint; a local one is looked at (a bucket's
    is read by the trial). Heads of other options than a trial's are no error: that trial
    starts with new heads and says why (trial/warm_start.py)."""
    from hiersearch.trial.checkpoint import CONFIG_FILE, MODEL_FILE

    named = {f"{space.path}: heads_from: {k}": v for k, v in space.heads_from.items()}
    if base.init_heads_from is not None:
        named[f"{space.path}: trial: init_heads_from"] = base.init_heads_from
    for where, location in named.items():
        if "://" in location:
            continue
        missing = [f for f in (CONFIG_FILE, MODEL_FILE) if not (Path(location) / f).is_file()]
        if missing:
            raise InputError(
                f"{location} is not a trial's checkpoint (no {', '.join(missing)})", where=where
            )


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
