"""An experiment's ensemble (its `ensemble.json`) -> one model directory that `hiersearch
predict` serves like a trial's export (`hiersearch export EXP --ensemble`); the layout is in
`ensemble.py`.

Each trial member is read from its final checkpoint, as `export_trial` reads one; members whose
encoders hold the same weights (head-only trials on one frozen backbone) share one copy of it,
cut at the highest layer any of them reads, and one forward of it at prediction. The baseline
member's TF-IDF index is fitted on the corpus's training documents (as the search fitted it)
and saved inside; so is the dense k-NN member's, on the pooled vectors its fit read (the
feature cache of the backbone `dense_knn.json` names), and it rides the forward of the group
whose encoder holds its backbone's layers (head-only members), else gets the backbone cut at
its layer as its own. The ensemble's thresholds are tuned on dev for its own scores, and its dev
and test metrics measured, by scoring the corpus's dev and test documents with the exported
members (what `predict` will compute). A member of weight 0 at every level is not exported.
Bad input (no ensemble.json, a member's checkpoint missing or damaged) is an InputError naming
it; nothing is written then.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hiersearch import metrics as M
from hiersearch.data.corpus import Corpus, load_corpus_dir
from hiersearch.errors import InputError
from hiersearch.files import atomic_directory, atomic_write_json, atomic_write_text
from hiersearch.model.encoder import tokenizer_path
from hiersearch.report.baseline import TfidfKnnIndex, baseline_name, fit_index, gold_levels
from hiersearch.report.dense_knn import DENSE_FILE, DenseKnnIndex, dense_name, read_dense
from hiersearch.report.ensemble import (
    ENSEMBLE_FILE,
    KIND_BASELINE,
    KIND_DENSE,
    KIND_TRIAL,
    Ensemble,
    EnsembleMember,
    read_ensemble,
)
from hiersearch.report.experiment import read_meta
from hiersearch.serve.ensemble import (
    BASELINE_DIR,
    DENSE_DIR,
    ENCODERS_DIR,
    ENSEMBLE_FORMAT,
    MEMBERS_DIR,
    EnsembleModel,
)
from hiersearch.serve.export import (
    ENCODER_DIR,
    ENCODER_PREFIX,
    MODEL_FILE,
    TOKENIZER_DIR,
    TrialModel,
    check_new_dir,
    read_trial,
    write_encoder,
    write_labels,
    write_model_files,
)
from hiersearch.trial.config import TrialConfig


def export_ensemble(experiment: str, out: str) -> Path:
    """Export `experiment`'s ensemble to `out` (new or empty); returns the model directory."""
    target = check_new_dir(out)
    ensemble = _read_ensemble(experiment)
    kept = [i for i in range(len(ensemble.members))
            if any(level[i] != 0 for level in ensemble.weights)]
    trials = {i: _read_member(ensemble.members[i], experiment) for i in kept
              if ensemble.members[i].kind == KIND_TRIAL}
    corpus = _corpus(experiment, list(trials.values()))
    for i, trial in trials.items():
        if trial.hierarchy.label_index() != corpus.hierarchy.label_index():
            raise InputError(f"member {ensemble.members[i].trial_id} was trained on other labels "
                             f"than its corpus {trial.config.corpus}",
                             where=str(ensemble.members[i].checkpoint))
    index = None
    if any(ensemble.members[i].kind == KIND_BASELINE for i in kept):
        index = fit_index(corpus)
    dense = next((_dense_index(ensemble.members[i], corpus) for i in kept
                  if ensemble.members[i].kind == KIND_DENSE), None)
    with atomic_directory(target) as tmp:
        places = _write_members(tmp, ensemble, trials, index)
        if dense is not None:
            _write_dense(tmp, ensemble, trials, places, *dense)
        write_labels(tmp, corpus.hierarchy)
        atomic_write_json(tmp / ENSEMBLE_FILE, ensemble.to_json())
        info: dict[str, Any] = {
            "format": ENSEMBLE_FORMAT,
            "experiment": experiment,
            "members": places,
            "label_counts": corpus.hierarchy.label_counts(),
            "corpus": _corpus_info(corpus, list(trials.values())),
            "thresholds": None,  # tuned below, on the exported members' dev scores
            "metrics": {},
        }
        atomic_write_json(tmp / MODEL_FILE, info)
        info.update(_tuned(EnsembleModel.load(tmp), corpus))
        atomic_write_json(tmp / MODEL_FILE, info)
        atomic_write_text(tmp / "README.md", ensemble_card(info, ensemble))
    return target


def _read_ensemble(experiment: str) -> Ensemble:
    ensemble = read_ensemble(experiment)
    where = f"{experiment.rstrip('/')}/{ENSEMBLE_FILE}"
    if ensemble is None:
        raise InputError("no ensemble fitted (fit one: hiersearch leaderboard EXP --ensemble)",
                         where=where)
    bad = [n for n, level in enumerate(ensemble.weights, 1)
           if len(level) != len(ensemble.members)]
    if bad or not ensemble.weights:
        raise InputError(f"levels {bad} do not weigh each of the {len(ensemble.members)} "
                         "members", where=where)
    return ensemble


def _read_member(member: EnsembleMember, experiment: str) -> TrialModel:
    """A trial member's model; a missing or damaged checkpoint names the member and file."""
    name = f"member trial {member.trial_id}"
    if not member.checkpoint:
        raise InputError(f"{name} has no checkpoint",
                         where=f"{experiment.rstrip('/')}/{ENSEMBLE_FILE}")
    if "://" not in member.checkpoint and not Path(member.checkpoint).is_dir():
        raise InputError(f"{name}: its checkpoint is missing", where=member.checkpoint)
    try:
        return read_trial(member.checkpoint)
    except InputError as err:
        raise InputError(f"{name}: {err.message}", where=err.where) from None


def _corpus(experiment: str, trials: Sequence[TrialModel]) -> Corpus:
    """The corpus the members trained on (cut to their levels), as the search read it; with
    the baseline alone, the experiment's."""
    if trials:
        config = trials[0].config
        others = {(t.config.corpus, t.config.levels) for t in trials}
        if len(others) > 1:
            raise InputError(f"members trained on different corpora or levels: {sorted(others)}",
                             where=f"{experiment.rstrip('/')}/{ENSEMBLE_FILE}")
        corpus = load_corpus_dir(config.corpus)
        return corpus.truncate(*config.levels) if config.levels is not None else corpus
    meta = read_meta(experiment) or {}
    if not isinstance(meta.get("corpus"), str):
        raise InputError("names no corpus", where=f"{experiment.rstrip('/')}/hiersearch.json")
    return load_corpus_dir(meta["corpus"])


def _corpus_info(corpus: Corpus, trials: Sequence[TrialModel]) -> dict[str, Any]:
    config = trials[0].config if trials else None
    return {
        "dir": config.corpus if config else None,
        "synthetic": corpus.synthetic,
        "hierarchy": corpus.hierarchy.name,
        "levels": list(config.levels) if config and config.levels is not None else None,
    }


def _encoder_state(trial: TrialModel) -> dict[str, torch.Tensor]:
    return {k: v for k, v in trial.core.state_dict().items() if k.startswith(ENCODER_PREFIX)}


def _shares(trial: TrialModel, deepest: TrialModel) -> bool:
    """Whether `trial` reads the encoder `deepest` holds: the same backbone, tokenization and
    precision, and each of its encoder weights equal to `deepest`'s (a prefix of its layers:
    true of head-only trials on one frozen backbone)."""
    a, b = trial.config, deepest.config
    if (a.model, a.max_length, a.precision) != (b.model, b.max_length, b.precision):
        return False
    mine, theirs = _encoder_state(trial), _encoder_state(deepest)
    return all(k in theirs and torch.equal(v, theirs[k]) for k, v in mine.items())


def share_encoders(trials: dict[int, TrialModel]) -> list[list[int]]:
    """The trial members grouped by the encoder they can share, the deepest first in each."""
    depth = {i: len(t.core.encoder.encoder.layer) for i, t in trials.items()}
    groups: list[list[int]] = []
    for i in sorted(trials, key=lambda i: (-depth[i], i)):
        group = next((g for g in groups if _shares(trials[i], trials[g[0]])), None)
        if group is None:
            groups.append([i])
        else:
            group.append(i)
    return groups


def _write_members(
    tmp: Path, ensemble: Ensemble, trials: dict[int, TrialModel], index: TfidfKnnIndex | None
) -> list[dict[str, Any]]:
    """encoders/, members/ and baseline/; model.json's `members` (where each one lives)."""
    places: list[dict[str, Any]] = [
        {"kind": m.kind, "trial_id": m.trial_id, "dir": None} for m in ensemble.members
    ]
    for g, group in enumerate(share_encoders(trials)):
        encoder = f"{ENCODERS_DIR}/{g}"
        deepest = trials[group[0]]
        (tmp / encoder).mkdir(parents=True)
        write_encoder(tmp / encoder, deepest.core, deepest.config)
        for i in group:
            trial, member = trials[i], ensemble.members[i]
            place = f"{MEMBERS_DIR}/{i}"
            (tmp / place).mkdir(parents=True)
            write_model_files(tmp / place, trial.core, trial.config, trial.hierarchy,
                              trial.synthetic, trial.final, member.experiment,
                              str(member.trial_id), str(member.checkpoint))
            places[i].update({"dir": place, "encoder": encoder})
    if index is not None:
        (tmp / BASELINE_DIR).mkdir()
        index.save(tmp / BASELINE_DIR)
        for i, member in enumerate(ensemble.members):
            if member.kind == KIND_BASELINE:
                places[i].update({"dir": BASELINE_DIR, "name": baseline_name(index.k)})
    return places


def _dense_index(member: EnsembleMember, corpus: Corpus) -> tuple[DenseKnnIndex, TrialConfig]:
    """The dense k-NN member's index, fitted on the pooled training vectors of the backbone
    its `dense_knn.json` names (the feature cache its fit read), with its k; and that
    backbone as a config."""
    from hiersearch.trial.features import backbone_vectors

    info = read_dense(member.experiment)
    where = f"{member.experiment.rstrip('/')}/{DENSE_FILE}"
    if info is None:
        raise InputError("the dense k-NN member's file is gone: refit the ensemble",
                         where=where)
    meta = read_meta(member.experiment) or {}
    config = TrialConfig.from_dict({**info["backbone"], "corpus": str(meta.get("corpus", ""))},
                                   where=where)
    layer, vectors = backbone_vectors(config, corpus)
    if layer != int(info["layer"]):
        raise InputError(f"its backbone has {layer} layers, not the fit's {info['layer']}",
                         where=where)
    targets = gold_levels([d.labels for d in corpus.splits["train"]],
                          corpus.hierarchy.label_index())
    return DenseKnnIndex.fit(vectors["train"], targets, layer, int(info["k"])), config


def _backbone_in(trial: TrialModel, config: TrialConfig, backbone: Any, layer: int) -> bool:
    """Whether `trial`'s encoder holds `backbone`'s first `layer` layers (and embeddings)
    with the same tokenization: a head-only trial on it does."""
    a = trial.config
    if (a.model, a.max_length) != (config.model, config.max_length):
        return False
    theirs = _encoder_state(trial)
    wanted = {k: v for k, v in backbone.state_dict().items()
              if not k.startswith("encoder.layer.") or int(k.split(".")[2]) < layer}
    return all(f"{ENCODER_PREFIX}{k}" in theirs and torch.equal(v, theirs[f"{ENCODER_PREFIX}{k}"])
               for k, v in wanted.items())


def _write_dense(
    tmp: Path, ensemble: Ensemble, trials: dict[int, TrialModel], places: list[dict[str, Any]],
    index: DenseKnnIndex, config: TrialConfig,
) -> None:
    """dense_knn/ and its place: on the encoder of a group whose deepest trial (what the
    group's encoder was written from) holds its backbone's layers, else on a copy of its
    own."""
    from hiersearch.model.encoder import load_encoder

    backbone = load_encoder(config.model, seed=config.seed)
    groups = share_encoders(trials)  # as `_write_members` wrote them: encoders/<g>
    encoder = next((f"{ENCODERS_DIR}/{g}" for g, group in enumerate(groups)
                    if _backbone_in(trials[group[0]], config, backbone, index.layer)), None)
    if encoder is None:
        encoder = f"{ENCODERS_DIR}/{len(groups)}"
        _write_backbone(tmp / encoder, backbone, config, index.layer)
    (tmp / DENSE_DIR).mkdir()
    index.save(tmp / DENSE_DIR)
    for i, member in enumerate(ensemble.members):
        if member.kind == KIND_DENSE:
            places[i].update({"dir": DENSE_DIR, "encoder": encoder, "name": dense_name(index.k),
                              "max_length": config.max_length, "precision": config.precision})


def _write_backbone(where: Path, backbone: Any, config: TrialConfig, layers: int) -> None:
    """The backbone cut at `layers` and its tokenizer, as `write_encoder` writes a trial's."""
    from transformers import AutoTokenizer

    where.mkdir(parents=True)
    backbone.encoder.layer = torch.nn.ModuleList(list(backbone.encoder.layer)[:layers])
    backbone.config.num_hidden_layers = layers
    backbone.save_pretrained(where / ENCODER_DIR)
    AutoTokenizer.from_pretrained(tokenizer_path(config.model)).save_pretrained(
        where / TOKENIZER_DIR)


def _tuned(model: EnsembleModel, corpus: Corpus) -> dict[str, Any]:
    """The ensemble's thresholds tuned on dev for its own scores, and its dev and test
    R-Precision and F1 (test at dev's thresholds)."""
    label_index = corpus.hierarchy.label_index()
    metrics: dict[str, float] = {}
    scored = {}
    for split in ("dev", "test"):
        docs = corpus.splits[split]
        golds = gold_levels([d.labels for d in docs], label_index)
        scores = model.scores([d.text for d in docs])
        metrics.update(M.evaluate(golds, scores, split))
        scored[split] = (golds, scores)
    metrics.update(M.tuned_f1(*scored["dev"], "dev"))
    thresholds = M.f1_thresholds(metrics, len(label_index))
    if thresholds is not None:
        metrics.update(M.f1_at_thresholds(*scored["test"], thresholds, "test"))
    return {"thresholds": thresholds, "metrics": metrics}


def _number(value: Any) -> str:
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    return f"{value:.4f}" if ok else "n/a"


def ensemble_card(info: dict[str, Any], ensemble: Ensemble) -> str:
    """README.md of an exported ensemble: its members and weights, and how well it does."""
    corpus, metrics = info["corpus"], info["metrics"]
    levels = len(info["label_counts"])
    kind = "SYNTHETIC (stands in for a real corpus)" if corpus["synthetic"] else "real"
    members = []
    for i, (member, place) in enumerate(zip(ensemble.members, info["members"], strict=True)):
        name = place.get("name") or f"trial {member.trial_id}"
        weights = " | ".join(f"{level[i]:.3f}" for level in ensemble.weights)
        where = place["dir"] or "not exported (weight 0)"
        members.append(f"| {name} | {weights} | {where} |")
    names = [*((f"L{n}", f"rp_L{n}") for n in range(1, levels + 1)),
             ("micro", "rp_micro"), ("macro", "rp_macro")]
    rows = [f"| {name} | {_number(metrics.get(f'dev/{key}'))} | "
            f"{_number(metrics.get(f'test/{key}'))} |" for name, key in names]
    return "\n".join([
        f"# hiersearch model: the ensemble of {info['experiment']}",
        "",
        f"- corpus: {corpus['dir']} ({kind}; hierarchy {corpus['hierarchy']}, {levels} levels, "
        f"labels per level {info['label_counts']})",
        f"- ensemble selection: {ensemble.mode}, {ensemble.steps} steps, seed {ensemble.seed}, "
        f"on {ensemble.metric}; each member's scores min-max normalized per document, "
        "weighted per level",
        "",
        "| member | " + " | ".join(f"w L{n}" for n in range(1, levels + 1)) + " | in |",
        "|---|" + "---|" * levels + "---|",
        *members,
        "",
        "R-Precision of the exported ensemble:",
        "",
        "| level | dev | test |",
        "|---|---|---|",
        *rows,
        "",
        "Label documents (label sets at the thresholds tuned on dev for the ensemble's scores):",
        "",
        "```",
        "hiersearch predict . --input docs.jsonl --out predictions.jsonl",
        "```",
        "",
    ])
