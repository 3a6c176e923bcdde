"""An exported ensemble (`hiersearch export EXP --ensemble`, written by `export_ensemble.py`)
loaded for prediction, with the interface of `ExportedModel` (`predict` serves either).

The directory:

    model.json     format ENSEMBLE_FORMAT, the experiment, where each member lives, label
                   counts, the corpus, `thresholds` (each level's F1 threshold tuned on dev for
                   the ensemble's own scores) and `metrics` (the ensemble's dev and test
                   R-Precision and F1, measured with the exported members)
    ensemble.json  the served ensemble (one `hiersearch.report.ensemble.Ensemble`, not the
                   experiment's file of both selections): members, weights per level, how it
                   was fitted
    encoders/<g>/  encoder/ and tokenizer/ of one shared encoder: every member whose encoder
                   weights equal a prefix of it (head-only members on one frozen backbone) reads
                   it, cut at the highest layer any of them reads
    members/<i>/   member i's heads.pt, model.json, labels.json, hierarchy.json, README.md (a
                   trial export without its encoder); a member of weight 0 at every level has
                   none
    baseline/      the TF-IDF k-NN member's index (`TfidfKnnIndex.save`)
    dense_knn/     the dense k-NN member's index (`DenseKnnIndex.save`); the member reads the
                   mean-pooled states of one layer of a shared encoder (model.json's place
                   names it: the head-only members' when they run the backbone, else its own)
    labels.json, hierarchy.json, README.md   as in a trial's export

Scoring: the members on one shared encoder run ONE forward per batch (tokenized once), up to
the highest layer their heads of the requested levels (and the dense k-NN's layer) read
(early exit by level); a member whose weight is 0 at every requested level is not run (its
scores are zeros, which weigh nothing); the scores combine as
`hiersearch.report.ensemble.combine` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hiersearch.data.hierarchy import read_json_object
from hiersearch.errors import InputError
from hiersearch.model.classifier import pool_views
from hiersearch.report.baseline import TfidfKnnIndex
from hiersearch.report.dense_knn import DenseKnnIndex
from hiersearch.report.ensemble import (
    ENSEMBLE_FILE,
    KIND_DENSE,
    KIND_TRIAL,
    Ensemble,
    combine,
)
from hiersearch.serve.export import LABELS_FILE, MODEL_FILE, TOKENIZER_DIR
from hiersearch.serve.model import (
    ExportedModel,
    LevelsOfLabels,
    _labels,
    _load_encoder,
    _read_model_file,
    _thresholds,
    shared_scores,
)
from hiersearch.trial.precision import Precision

# model.json's "format" of an exported ensemble
ENSEMBLE_FORMAT = "hiersearch.ensemble_model/1"
MEMBERS_DIR, ENCODERS_DIR, BASELINE_DIR = "members", "encoders", "baseline"
DENSE_DIR = "dense_knn"


class _Captured:
    """The dense k-NN member's side of a shared forward: the encoder, and the states its hook
    keeps (`shared_logits` clears and reads `_captured` as it does a classifier's)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self._captured: dict[int, torch.Tensor] = {}


@dataclass
class DenseKnnModel:
    """The dense k-NN member on an encoder loaded already (shared with head-only members, or
    its own): a hook keeps the states of its layer in the group's one forward, and its index
    scores their mean over the real tokens. It offers what `shared_scores` asks of an
    `ExportedModel`."""

    directory: Path
    index: DenseKnnIndex
    core: _Captured
    tokenizer: Any
    max_length: int
    precision: Precision
    label_index: list[list[str]]
    device: torch.device

    # the tokenization of the backbone's exports: padded batches, documents by length
    tokenize = ExportedModel.tokenize
    _length_order = ExportedModel._length_order

    @classmethod
    def on_encoder(cls, directory: Path, encoder: Any, tokenizer: Any, place: dict[str, Any],
                   label_index: list[list[str]], device: str) -> DenseKnnModel:
        index = DenseKnnIndex.load(directory)
        if index.layer > len(encoder.encoder.layer):
            raise InputError(f"reads layer {index.layer}; its encoder has "
                             f"{len(encoder.encoder.layer)}", where=str(directory))
        core = _Captured(encoder)

        def keep(_module: Any, _inputs: Any, output: Any) -> None:
            core._captured[index.layer] = output[0] if isinstance(output, tuple) else output

        encoder.encoder.layer[index.layer - 1].register_forward_hook(keep)
        torch_device = torch.device(device)
        precision = Precision.of(str(place.get("precision", "fp32")), torch_device)
        return cls(directory, index, core, tokenizer, int(place["max_length"]), precision,
                   label_index, torch_device)

    def layers_needed(self, levels: Sequence[int]) -> int:
        return self.index.layer

    def level_logits(self, captured: dict[int, torch.Tensor], attention_mask: torch.Tensor,
                     levels: Sequence[int]) -> torch.Tensor:
        """The requested levels' k-NN votes (not logits: `activate` keeps them)."""
        _, mean = pool_views(captured[self.index.layer], attention_mask)
        every = self.index.level_scores(mean.float().cpu().numpy())
        return torch.from_numpy(np.concatenate([every[n - 1] for n in levels], axis=1))

    def activate(self, scores: torch.Tensor) -> torch.Tensor:
        return scores


@dataclass
class EnsembleModel(LevelsOfLabels):
    """An exported ensemble, ready to score documents (`ExportedModel`'s interface)."""

    directory: Path
    ensemble: Ensemble
    label_index: list[list[str]]
    descriptions: list[list[str]]
    # per shared encoder, its members: (member index in the ensemble, the member's model)
    groups: list[list[tuple[int, ExportedModel | DenseKnnModel]]] = field(repr=False)
    baseline: tuple[int, TfidfKnnIndex] | None = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict, repr=False)
    # per level, the F1 threshold tuned on dev for the ensemble's scores; None before tuning
    thresholds: list[float] | None = None

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> EnsembleModel:
        """Load from an ensemble's model directory; a missing or damaged file is an InputError
        naming it."""
        directory = Path(directory)
        info = _read_model_file(directory / MODEL_FILE, directory)
        if info.get("format") != ENSEMBLE_FORMAT:
            raise InputError(f"format {info.get('format')!r} is not {ENSEMBLE_FORMAT!r}",
                             where=str(directory / MODEL_FILE))
        path = directory / ENSEMBLE_FILE
        ensemble = Ensemble.from_json(_read_model_file(path, directory), str(path))
        counts = [int(c) for c in info["label_counts"]]
        labels, descriptions = _labels(
            _read_model_file(directory / LABELS_FILE, directory), directory / LABELS_FILE, counts
        )
        places = info["members"]
        if len(places) != len(ensemble.members):
            raise InputError(f"{len(places)} members for the {len(ensemble.members)} of "
                             f"{ENSEMBLE_FILE}", where=str(directory / MODEL_FILE))
        groups = _load_groups(directory, places, labels, device)
        baseline = next(
            ((i, TfidfKnnIndex.load(directory / p["dir"])) for i, p in enumerate(places)
             if p["kind"] == "baseline" and p.get("dir")), None,
        )
        for _, model in (m for group in groups for m in group):
            if model.label_index != labels:
                raise InputError("its labels differ from the ensemble's",
                                 where=str(model.directory / LABELS_FILE))
        if baseline is not None and baseline[1].label_counts != counts:
            raise InputError(f"its label counts differ from the ensemble's {counts}",
                             where=str(directory / BASELINE_DIR))
        thresholds = _thresholds(info, directory / MODEL_FILE, len(counts))
        return cls(directory, ensemble, labels, descriptions, groups, baseline, info,
                   thresholds)

    def _weighs(self, member: int, levels: Sequence[int]) -> bool:
        return any(self.ensemble.weights[n - 1][member] != 0 for n in levels)

    def member_scores(
        self, texts: Sequence[str], levels: Sequence[int] | None = None, batch_size: int = 32
    ) -> list[list[np.ndarray]]:
        """[member][requested level] each member's own scores (trials: sigmoid probabilities;
        the baseline: its k-NN vote); zeros where a member weighs 0 (its heads of that level
        not run; a member of weight 0 at every requested level not run at all)."""
        chosen = self._check_levels(levels)
        if batch_size < 1:
            raise InputError(f"must be >= 1 (got {batch_size})", where="--batch-size")
        out: list[list[np.ndarray] | None] = [None] * len(self.ensemble.members)
        for group in self.groups:
            weighed = [(i, m, [n for n in chosen if self._weighs(i, [n])]) for i, m in group]
            active = [(i, m, own) for i, m, own in weighed if own]
            if not active:
                continue
            # the active members' levels decide how many layers run
            scores = shared_scores([m for _, m, _ in active], texts, chosen, batch_size,
                                   own_levels=[own for *_, own in active])
            for (i, *_), member in zip(active, scores, strict=True):
                out[i] = member
            for _, model in group:  # what the others' hooks captured in the last forward
                model.core._captured = {}
        if self.baseline is not None and self._weighs(self.baseline[0], chosen):
            every = self.baseline[1].level_scores(texts)
            out[self.baseline[0]] = [every[n - 1] for n in chosen]
        widths = [len(self.label_index[n - 1]) for n in chosen]
        zeros = [np.zeros((len(texts), w), np.float32) for w in widths]
        return [zeros if s is None else s for s in out]

    def scores(
        self, texts: Sequence[str], levels: Sequence[int] | None = None, batch_size: int = 32
    ) -> list[np.ndarray]:
        """Per requested level (all if None): the ensemble's scores [docs, labels], each
        member's normalized scores weighted and summed (`combine`), in [0, 1]."""
        chosen = self._check_levels(levels)
        members = self.member_scores(texts, chosen, batch_size)
        weights = tuple(self.ensemble.weights[n - 1] for n in chosen)
        return combine(members, dataclasses.replace(self.ensemble, weights=weights))


def _load_groups(
    directory: Path, places: list[dict[str, Any]], labels: list[list[str]], device: str
) -> list[list[tuple[int, ExportedModel | DenseKnnModel]]]:
    """Each shared encoder loaded once, and its members built on it: the trials' heads, then
    the dense k-NN's hook."""
    from transformers import AutoTokenizer

    by_encoder: dict[str, list[tuple[int, ExportedModel | DenseKnnModel]]] = {}
    encoders: dict[str, tuple[Any, Any]] = {}
    order = sorted(range(len(places)), key=lambda i: places[i]["kind"] == KIND_DENSE)
    for i in order:
        place = places[i]
        if place["kind"] not in (KIND_TRIAL, KIND_DENSE) or not place.get("dir"):
            continue
        name = str(place["encoder"])
        if name not in encoders:
            where = directory / name
            if not where.is_dir():
                raise InputError("missing shared encoder", where=str(where))
            encoders[name] = (_load_encoder(where),
                              AutoTokenizer.from_pretrained(where / TOKENIZER_DIR))
        encoder, tokenizer = encoders[name]
        member_dir = directory / str(place["dir"])
        if not member_dir.is_dir():
            raise InputError("missing member directory", where=str(member_dir))
        model: ExportedModel | DenseKnnModel
        if place["kind"] == KIND_DENSE:
            model = DenseKnnModel.on_encoder(member_dir, encoder, tokenizer, place, labels,
                                             device)
        else:
            model = ExportedModel.on_encoder(member_dir, encoder, tokenizer, device)
        by_encoder.setdefault(name, []).append((i, model))
    return list(by_encoder.values())


def is_ensemble(directory: str | Path) -> bool:
    """Whether `directory` holds an exported ensemble (its model.json says so)."""
    path = Path(directory) / MODEL_FILE
    if not path.is_file():
        return False
    try:
        return read_json_object(path).get("format") == ENSEMBLE_FORMAT
    except InputError:
        return False
