"""An experiment's ensemble (report/ensemble.py) fitted over what its search left behind: the
best `top` finished trials by the search metric (over both stages of a two-stage search) and
the TF-IDF baseline, their dev and test scores read from each final checkpoint's `scores.npz`
and the experiment's `baseline_scores.npz`, both selections (per level and global) fitted and
kept as `ensemble.json` in the experiment directory.

A trial from before checkpoints kept scores has them recomputed from its checkpoint (its
weights on its encoded corpus and, head-only, on the feature cache: a second or so; a
fine-tuned trial runs its encoder over dev and test) and written back beside them, once;
likewise the baseline's. A trial that was told not to keep them (`keep_scores: false`: their
disk at a large label set) is not rescored, which would write them after all: it is skipped,
and one line names every such trial. A member whose checkpoint cannot be read (a damaged
`scores.npz` or `model.pt`), or that sits in a bucket without scores, is skipped and REPORTED:
on stderr, in `ensemble.json`'s `skipped`, in the fit's result. No Ray here: it runs after a
search, or from `hiersearch leaderboard --ensemble` on any machine that can read the
experiment.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hiersearch import metrics as M
from hiersearch.data.corpus import Corpus, load_corpus_dir
from hiersearch.errors import InputError
from hiersearch.report.baseline import (
    BASELINE_SCORES_FILE,
    baseline_with_scores,
    gold_levels,
    read_baseline,
    read_baseline_scores,
    write_baseline_scores,
)
from hiersearch.report.dense_knn import (
    DENSE_BACKBONE,
    DENSE_SCORES_FILE,
    fit_on_dev,
    read_dense,
    write_dense,
)
from hiersearch.report.ensemble import (
    KIND_BASELINE,
    KIND_DENSE,
    KIND_TRIAL,
    MODES,
    SEED,
    STEPS,
    TOP,
    Ensemble,
    EnsembleFile,
    EnsembleMember,
    choose_served,
    combine,
    fit_ensemble,
    write_ensemble,
)
from hiersearch.report.experiment import read_meta
from hiersearch.report.results import STATUS_TERMINATED, experiment_locations, load_experiments

if TYPE_CHECKING:
    from hiersearch.trial.config import TrialConfig

__all__ = [
    "Candidate",
    "ensemble_scores",
    "experiment_golds",
    "fit_experiment_ensemble",
    "member_candidates",
]

SPLITS = ("dev", "test")
# Why a trial run with `keep_scores: false` is not a member (ensemble.json's `skipped`).
NOT_KEPT = "kept no scores (keep_scores: false)"


class ScoresNotKept(InputError):
    """A trial that was told not to keep its scores (`TrialConfig.keep_scores`)."""


@dataclass(frozen=True)
class Candidate:
    """A member the ensemble may take, and its metric value (the search's) for the ranking."""

    member: EnsembleMember
    value: float


def member_candidates(experiment: str, top: int = TOP) -> tuple[list[Candidate], str, str]:
    """The experiment's best `top` finished trials with a checkpoint by its search metric,
    over every experiment in it (a two-stage search's stages), best first; and the metric and
    its mode."""
    locations = experiment_locations(experiment)
    meta = read_meta(locations[0]) or {}
    metric = str(meta.get("metric") or M.DEFAULT_METRIC)
    mode = meta.get("mode") if meta.get("mode") in ("max", "min") else M.DEFAULT_MODE
    found: list[Candidate] = []
    for location in locations:
        table = load_experiments([location])
        done = table[(table["status"] == STATUS_TERMINATED) & table["checkpoint"].notna()]
        for _, row in done.iterrows():
            value = float(row[metric]) if metric in row and row[metric] is not None else math.nan
            if math.isnan(value):
                continue
            member = EnsembleMember(KIND_TRIAL, str(row["trial_id"]), location,
                                    str(row["checkpoint"]))
            found.append(Candidate(member, value))
    found.sort(key=lambda c: -c.value if mode == "max" else c.value)
    return found[:top], metric, mode


def fit_experiment_ensemble(
    experiment: str,
    top: int = TOP,
    *,
    steps: int = STEPS,
    seed: int = SEED,
    baseline: bool = True,
    dense: bool = True,
) -> EnsembleFile:
    """Fit both selections over the experiment's best `top` trials, its baseline and its
    dense k-NN (report/dense_knn.py; computed once, on the best trial's backbone) and write
    `ensemble.json` into `experiment`; returns what it wrote. An experiment without a
    finished trial or baseline to fit on is an InputError."""
    if top < 1:
        raise InputError("must be >= 1", where="--ensemble-members")
    candidates, metric, _ = member_candidates(experiment, top)
    corpus = _experiment_corpus(experiment)
    golds = _golds(corpus)
    members: list[EnsembleMember] = []
    scores: dict[str, list[list[np.ndarray]]] = {s: [] for s in SPLITS}
    skipped = _trial_members(candidates, corpus, members, scores)
    if baseline and (found := _baseline_scores(experiment, corpus)) is not None:
        _add(members, scores, *found)
    if dense and candidates:
        try:
            _add(members, scores, *_dense_member(experiment, corpus, candidates, golds))
        except InputError as exc:
            skipped.append((KIND_DENSE, f"{exc.where}: {exc.message}"))
            print(f"[hiersearch] ensemble: no dense k-NN member: {exc.where}: {exc.message}",
                  file=sys.stderr, flush=True)
    if not members:
        raise InputError(_none_left(candidates, skipped), where=experiment)
    started = time.perf_counter()
    ensembles = {
        mode: fit_ensemble(members, scores, golds, mode=mode, steps=steps, seed=seed,
                           metric=metric)
        for mode in MODES
    }
    seconds = time.perf_counter() - started
    fitted = EnsembleFile(ensembles, choose_served(ensembles), tuple(skipped), seconds, top)
    write_ensemble(experiment, fitted)
    return fitted


def _trial_members(
    candidates: list[Candidate], corpus: Corpus, members: list[EnsembleMember],
    scores: dict[str, list[list[np.ndarray]]],
) -> list[tuple[str, str]]:
    """The candidates' scores added to `members` and `scores`; the ones skipped (member,
    why), each said on stderr (those that kept no scores in one line)."""
    skipped: list[tuple[str, str]] = []
    not_kept: list[str] = []
    for candidate in candidates:
        try:
            levels = _trial_scores(candidate.member, corpus)
        except ScoresNotKept:
            not_kept.append(candidate.member.name)
            skipped.append((candidate.member.name, NOT_KEPT))
            continue
        except InputError as exc:
            skipped.append((candidate.member.name, f"{exc.where}: {exc.message}"))
            print(f"[hiersearch] ensemble: trial {candidate.member.name} skipped: "
                  f"{exc.where}: {exc.message}", file=sys.stderr, flush=True)
            continue
        _add(members, scores, candidate.member, levels)
    if not_kept:
        print(f"[hiersearch] ensemble: {len(not_kept)} of the {len(candidates)} best trials "
              f"{NOT_KEPT}, not members: {', '.join(not_kept)}", file=sys.stderr, flush=True)
    return skipped


def _none_left(candidates: list[Candidate], skipped: list[tuple[str, str]]) -> str:
    """Why there is no member: no trial at all, or every one skipped (and no baseline)."""
    if not candidates:
        return "no finished trial or baseline to fit an ensemble on"
    not_kept = sum(reason == NOT_KEPT for _, reason in skipped)
    unreadable = sum(member != KIND_DENSE for member, _ in skipped) - not_kept
    why = [f"{not_kept} {NOT_KEPT}"] if not_kept else []
    if unreadable:
        why.append(f"{unreadable} unreadable")
    return (f"no member left to fit an ensemble on: the {len(candidates)} best trials were "
            f"skipped ({', '.join(why)}) and there is no baseline")


def ensemble_scores(experiment: str, ensemble: Ensemble) -> dict[str, list[np.ndarray]]:
    """The fitted `ensemble`'s own scores per split ("dev", "test") and level, from its
    members' kept scores (members of weight 0 are not read): what its metrics came from, and
    what an export tunes its thresholds on (dev) and predict reproduces (test)."""
    corpus = _experiment_corpus(experiment)
    used = set(ensemble.used())
    found: list[dict[str, list[np.ndarray]] | None] = []
    for index, member in enumerate(ensemble.members):
        if index not in used:
            found.append(None)
        elif member.kind in (KIND_BASELINE, KIND_DENSE):
            name = BASELINE_SCORES_FILE if member.kind == KIND_BASELINE else DENSE_SCORES_FILE
            scores = read_baseline_scores(member.experiment, name)
            if scores is None:
                raise InputError(f"the {member.name} member's scores are gone ({name}): refit "
                                 "the ensemble", where=member.experiment)
            found.append(scores)
        else:
            found.append(_trial_scores(member, corpus))
    return {
        split: combine([None if f is None else f[split] for f in found], ensemble)
        for split in SPLITS
    }


def experiment_golds(experiment: str) -> dict[str, list[np.ndarray]]:
    """Per split ("dev", "test") and level, the gold multi-hot [docs, labels of the level] of
    the experiment's corpus, in the order of the members' scores."""
    return _golds(_experiment_corpus(experiment))


def _golds(corpus: Corpus) -> dict[str, list[np.ndarray]]:
    return {s: gold_levels([d.labels for d in corpus.splits[s]], _label_index(corpus))
            for s in SPLITS}


def _add(members: list, scores: dict, member: EnsembleMember, levels: dict) -> None:
    members.append(member)
    for split in SPLITS:
        scores[split].append(levels[split])


def _experiment_corpus(experiment: str) -> Corpus:
    """The corpus the experiment's trials saw (its hiersearch.json's, cut to their levels);
    experiments on different corpora (a storage root of several) are an InputError."""
    metas = [read_meta(location) or {} for location in experiment_locations(experiment)]
    meta = metas[0]
    corpus_dir = meta.get("corpus")
    if not isinstance(corpus_dir, str):
        raise InputError("hiersearch.json names no corpus: cannot fit an ensemble",
                         where=experiment)
    if len({(str(m.get("corpus")), str((m.get("base_config") or {}).get("levels")))
            for m in metas}) > 1:
        raise InputError("holds experiments on different corpora: an ensemble is fitted over "
                         "one experiment (or the stages of one)", where=experiment)
    corpus = load_corpus_dir(corpus_dir)
    levels = (meta.get("base_config") or {}).get("levels")
    return corpus.truncate(*levels) if levels else corpus


def _label_index(corpus: Corpus) -> list[list[str]]:
    return corpus.hierarchy.label_index()


def _baseline_scores(
    experiment: str, corpus: Corpus
) -> tuple[EnsembleMember, dict[str, list[np.ndarray]]] | None:
    """The baseline member and its scores per split and level, from the first experiment
    in `experiment` that has a baseline (a two-stage search's stages share one corpus);
    computed and written beside its `baseline.json` when missing (seconds)."""
    for location in experiment_locations(experiment):
        if read_baseline(location) is None:
            continue
        scores = read_baseline_scores(location)
        if scores is None:
            _, scores = baseline_with_scores(corpus)
            write_baseline_scores(location, scores)
        return EnsembleMember(KIND_BASELINE, None, location, None), scores
    return None


def _dense_member(
    experiment: str, corpus: Corpus, candidates: list[Candidate],
    golds: dict[str, list[np.ndarray]],
) -> tuple[EnsembleMember, dict[str, list[np.ndarray]]]:
    """The dense k-NN member and its scores per split and level, kept in the (first)
    experiment directory beside `baseline.json`; computed first when missing: the top layer's
    mean-pooled vectors of the best trial's backbone (its feature cache, built if missing:
    one encoder pass over the corpus), k chosen on dev (report/dense_knn.py)."""
    from hiersearch.trial.features import backbone_vectors

    location = experiment_locations(experiment)[0]
    info = read_dense(location)
    scores = read_baseline_scores(location, DENSE_SCORES_FILE) if info else None
    if scores is None:
        config = _trial_config(candidates[0].member)
        layer, vectors = backbone_vectors(config, corpus)
        targets = gold_levels([d.labels for d in corpus.splits["train"]], _label_index(corpus))
        _, info, scores = fit_on_dev(vectors, targets, golds, layer)
        info["backbone"] = {k: getattr(config, k) for k in DENSE_BACKBONE}
        write_baseline_scores(location, scores, DENSE_SCORES_FILE)
        write_dense(location, info)
        dev, test = (info["metrics"].get(M.rp_macro_key(s), math.nan) for s in SPLITS)
        print(f"[hiersearch] ensemble: member {info['name']} on {config.model}'s layer {layer} "
              f"(mean-pooled, k chosen on dev): dev macro R-Precision {dev:.3f}, test "
              f"{test:.3f} ({info['seconds']:.1f}s)", file=sys.stderr, flush=True)
    return EnsembleMember(KIND_DENSE, None, location, None), scores


def _trial_config(member: EnsembleMember) -> TrialConfig:
    """The resolved config a trial member's checkpoint keeps."""
    from hiersearch.data.hierarchy import read_json_object
    from hiersearch.trial import checkpoint
    from hiersearch.trial.config import TrialConfig

    location = str(member.checkpoint)
    if "://" in location and not location.startswith("file://"):
        raise InputError("a checkpoint in a bucket: its backbone is not read", where=location)
    path = checkpoint.config_path(Path(location.removeprefix("file://")))
    return TrialConfig.from_dict(read_json_object(path), where=str(path))


def _trial_scores(member: EnsembleMember, corpus: Corpus) -> dict[str, list[np.ndarray]]:
    """A trial's dev and test scores per level, as `hiersearch predict` scores them: sigmoid
    probabilities of its logits (trial/evaluation.probabilities)."""
    from hiersearch.trial import checkpoint
    from hiersearch.trial.evaluation import probabilities

    location = str(member.checkpoint)
    if "://" in location and not location.startswith("file://"):
        directory = None
    else:
        directory = Path(location.removeprefix("file://"))
    logits = checkpoint.read_scores(directory) if directory is not None else None
    if logits is None and directory is None:
        raise InputError("no scores kept, and a checkpoint in a bucket is not rescored",
                         where=location)
    if logits is None and _told_not_to_keep(directory):
        raise ScoresNotKept(NOT_KEPT, where=location)
    if logits is None:
        logits = _rescore(directory, corpus)
        checkpoint.write_scores(directory, logits)
    counts = corpus.hierarchy.label_counts()
    slices = _level_slices(counts)
    out = {}
    for split in SPLITS:
        expected = (len(corpus.splits[split]), sum(counts))
        if logits[split].shape != expected:
            raise InputError(f"{split} scores of shape {logits[split].shape}, not the "
                             f"corpus's {expected}", where=location)
        out[split] = probabilities(logits[split], slices)
    return out


def _told_not_to_keep(directory: Path) -> bool:
    """Whether the checkpoint's trial ran with `keep_scores: false` (its config.json says
    so; one from before the option kept none because there was none: it is rescored)."""
    from hiersearch.data.hierarchy import read_json_object
    from hiersearch.trial import checkpoint

    path = checkpoint.config_path(directory)
    return path.is_file() and read_json_object(path).get("keep_scores") is False


def _level_slices(counts: list[int]) -> list[slice]:
    edges = np.cumsum([0, *counts])
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _rescore(directory: Path, corpus: Corpus) -> dict[str, np.ndarray]:
    """A checkpoint's dev and test logits recomputed from its weights: its model on its
    encoded corpus (the feature cache for frozen layers), in-process."""
    import tempfile

    import torch

    from hiersearch.data.hierarchy import read_json_object
    from hiersearch.data.prepare import encode_corpus
    from hiersearch.model.encoder import encoder_depth, tokenizer_path
    from hiersearch.trial import checkpoint
    from hiersearch.trial.config import TrialConfig
    from hiersearch.trial.evaluation import evaluate_split
    from hiersearch.trial.recipe import TrialRecipe
    from hiersearch.trial.session import LocalSession

    path = checkpoint.config_path(directory)
    config = TrialConfig.from_dict(read_json_object(path), where=str(path))
    print(f"[hiersearch] ensemble: rescoring {directory} (no scores kept)", file=sys.stderr,
          flush=True)
    data = encode_corpus(corpus, config.corpus, tokenizer=tokenizer_path(config.model),
                         num_layers=encoder_depth(config.model), max_length=config.max_length,
                         cache_dir=config.cache_dir)
    device = torch.device("cuda" if config.use_gpu and torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="hiersearch-rescore-") as root:
        recipe = TrialRecipe(config, LocalSession(Path(root), device=device))
        recipe.setup(data.encoded_path)
        recipe.core.load_state_dict(checkpoint.read_weights(directory, device))
        out: dict[str, Any] = {}
        for split in SPLITS:
            result = evaluate_split(recipe.model, recipe.sources[split], recipe.num_labels,
                                    recipe.session, config.eval_batch_size, recipe.autocast)
            out[split] = result[0] if result is not None else None
    return out

