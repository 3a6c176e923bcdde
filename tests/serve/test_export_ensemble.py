"""`hiersearch export EXP --ensemble` and serving the ensemble: the export's scores are
`combine` of the members' own scores, head-only members share one encoder forward, bad members
are named, `predict` serves the directory like a trial's.

Three tiny trials are trained in-process (no Ray) and laid out as Ray Tune lays out an
experiment (as test_export.py does): two head-only trials on one frozen random-init encoder
(a layer-wise one reading layers 2, 4, 6 and a FLAT one reading layer 12) and one fine-tuned;
the experiment's ensemble.json is written by hand (the fit is `report/ensemble.py`'s).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from refusals import _error

from hiersearch import metrics as M
from hiersearch.cli import main
from hiersearch.data.corpus import load_corpus_dir, write_corpus
from hiersearch.data.encode import encode
from hiersearch.data.synth import SynthConfig, synthesize
from hiersearch.data.vocabularies import eurovoc_hierarchy
from hiersearch.model.encoder import tokenizer_path
from hiersearch.report.baseline import fit_index, gold_levels
from hiersearch.report.ensemble import ENSEMBLE_FILE, Ensemble, EnsembleMember, combine
from hiersearch.serve.ensemble import EnsembleModel
from hiersearch.serve.export import export_trial
from hiersearch.serve.export_ensemble import export_ensemble
from hiersearch.serve.model import ExportedModel
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.recipe import fit
from hiersearch.trial.session import LocalSession

LAYERWISE, FLAT, TUNED, UNUSED = "aa000_00000", "aa000_00001", "aa000_00002", "aa000_00003"
# [level][member]: LAYERWISE, FLAT, TUNED, UNUSED, the baseline; UNUSED weighs nothing
WEIGHTS = ((0.5, 0.2, 0.1, 0.0, 0.2), (0.0, 0.6, 0.2, 0.0, 0.2), (0.3, 0.0, 0.3, 0.0, 0.4))


@dataclass
class Experiment:
    path: Path
    corpus_dir: Path
    checkpoints: dict[str, Path]
    ensemble: Ensemble


def _train(root: Path, experiment: Path, trial_id: str, encoded: object, config: TrialConfig
           ) -> Path:
    """One trial trained and laid out as a Tune trial directory (as test_export.py does);
    its final checkpoint."""
    session = LocalSession(checkpoint_root=root / f"session-{trial_id}")
    (root / f"session-{trial_id}").mkdir()
    fit(config, encoded, session)  # type: ignore[arg-type]
    trial_dir = experiment / f"trainable_{trial_id}_0_seed=0_2026-12-07_00-00-00"
    trial_dir.mkdir(parents=True)
    lines = [json.dumps({**r, "trial_id": trial_id}) for r in session.reports]
    (trial_dir / "result.json").write_text("\n".join(lines) + "\n")
    (trial_dir / "params.json").write_text(json.dumps({"seed": config.seed}))
    for checkpoint in session.checkpoints:
        shutil.copytree(checkpoint, trial_dir / checkpoint.name)
    return trial_dir / session.checkpoints[-1].name


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Experiment:
    root = tmp_path_factory.mktemp("ensemble")
    corpus_dir = root / "corpus"
    write_corpus(synthesize(eurovoc_hierarchy(), SynthConfig(docs=60, seed=1, max_leaves=12)),
                 corpus_dir)
    encoded = encode(load_corpus_dir(corpus_dir), tokenizer_path("minilm"), 48, root / "cache")
    base = TrialConfig(corpus=str(corpus_dir), model="tiny:12x32", epochs=2, batch_size=8,
                       lr=1e-3, max_length=48, util_docs=0, eval_batch_size=16, pooling="mean",
                       head_norm="batchnorm", freeze_layers="all")
    configs = {
        LAYERWISE: replace(base, assignment="L1:2|L2:4|L3:6"),
        FLAT: replace(base, assignment="FLAT", pooling="cls_mean", head_norm="layernorm"),
        TUNED: replace(base, assignment="L1:1|L2:2|L3:3", freeze_layers=0),
        UNUSED: replace(base, assignment="L1:1|L2:1|L3:1", seed=5),
    }
    path = root / "exp"
    checkpoints = {t: _train(root, path, t, encoded, c) for t, c in configs.items()}
    (path / "hiersearch.json").write_text(json.dumps(
        {"name": "fake", "metric": M.rp_macro_key("dev"), "mode": "max",
         "corpus": str(corpus_dir)}))
    members = tuple(EnsembleMember("trial", t, str(path), str(c)) for t, c in checkpoints.items())
    ensemble = Ensemble(members + (EnsembleMember("baseline", None, str(path), None),), WEIGHTS,
                        "per_level", 20, 0, M.rp_macro_key("dev"), {})
    _write_ensemble(path, ensemble)
    return Experiment(path, corpus_dir, checkpoints, ensemble)


def _write_ensemble(experiment: Path, ensemble: Ensemble) -> None:
    """The experiment's ensemble.json as the fit writes it: its selections by mode, the one
    served named."""
    (experiment / ENSEMBLE_FILE).write_text(json.dumps({
        "schema": "hiersearch.ensemble/1", "served": ensemble.mode,
        "ensembles": {ensemble.mode: ensemble.to_json()}}))


@pytest.fixture(scope="module")
def exported(experiment: Experiment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_ensemble(str(experiment.path), str(tmp_path_factory.mktemp("m") / "ens"))


def _texts(experiment: Experiment, split: str) -> list[str]:
    return [d.text for d in load_corpus_dir(experiment.corpus_dir).splits[split]]


def test_the_ensemble_export_holds_one_encoder_per_shared_backbone(
    experiment: Experiment, exported: Path
) -> None:
    info = json.loads((exported / "model.json").read_text())
    places = info["members"]
    # the two head-only trials share encoders/0 (cut at FLAT's layer 12), the tuned has its own
    assert places[0]["encoder"] == places[1]["encoder"] != places[2]["encoder"]
    shared = json.loads((exported / places[1]["encoder"] / "encoder" / "config.json").read_text())
    assert shared["num_hidden_layers"] == 12
    assert sorted(p.name for p in (exported / "encoders").iterdir()) == ["0", "1"]
    assert places[3]["dir"] is None and not (exported / "members" / "3").exists()  # weight 0
    assert places[4] == {"kind": "baseline", "trial_id": None, "dir": "baseline",
                         "name": "TF-IDF 20-NN"}
    assert not any((exported / "members" / str(i) / "encoder").exists() for i in range(3))
    assert json.loads((exported / ENSEMBLE_FILE).read_text())["weights"] == [
        list(w) for w in WEIGHTS]
    card = (exported / "README.md").read_text()
    assert LAYERWISE in card and "TF-IDF 20-NN" in card and "0.600" in card
    assert not list(exported.parent.glob(".ens.*"))  # written atomically


def test_ensemble_scores_are_combine_of_the_members_own_scores(
    experiment: Experiment, exported: Path, tmp_path: Path
) -> None:
    """Each trial member exported on its own and scored, the baseline refitted: `combine` of
    their scores is the ensemble export's, to the last bit."""
    texts = _texts(experiment, "test")
    own = []
    for trial_id in (LAYERWISE, FLAT, TUNED, UNUSED):
        path = export_trial(str(experiment.path), str(tmp_path / trial_id), trial=trial_id)
        own.append(ExportedModel.load(path).scores(texts, batch_size=8))
    own.append(fit_index(load_corpus_dir(experiment.corpus_dir)).level_scores(texts))
    expected = combine(own, experiment.ensemble)
    model = EnsembleModel.load(exported)
    got = model.scores(texts, batch_size=8)
    for level, (a, b) in enumerate(zip(got, expected, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"level {level + 1}")
    # levels asked alone are those levels' scores
    (level2,) = model.scores(texts, levels=[2], batch_size=8)
    np.testing.assert_array_equal(level2, expected[1])


def test_the_exports_metrics_and_thresholds_are_its_own_on_dev_and_test(
    experiment: Experiment, exported: Path
) -> None:
    info = json.loads((exported / "model.json").read_text())
    corpus = load_corpus_dir(experiment.corpus_dir)
    model = EnsembleModel.load(exported)
    index = corpus.hierarchy.label_index()
    dev = corpus.splits["dev"]
    golds = gold_levels([d.labels for d in dev], index)
    scores = model.scores([d.text for d in dev])
    assert info["thresholds"] == M.tune_thresholds(golds, scores) == model.thresholds
    assert info["metrics"][M.rp_macro_key("dev")] == M.evaluate(golds, scores, "dev")[
        M.rp_macro_key("dev")]
    assert np.isfinite(info["metrics"][M.rp_macro_key("test")])
    assert M.f1_macro_key("test") in info["metrics"]


def test_head_only_members_run_one_encoder_forward_per_batch(
    experiment: Experiment, exported: Path
) -> None:
    model = EnsembleModel.load(exported)
    calls: dict[int, int] = {}
    encoders = {id(m.core.encoder): m.core.encoder for g in model.groups for _, m in g}
    assert len(encoders) == 2  # shared + the fine-tuned member's
    for key, encoder in encoders.items():
        encoder.register_forward_hook(
            lambda *_, key=key: calls.__setitem__(key, calls.get(key, 0) + 1))
    texts = _texts(experiment, "dev")[:10]
    model.scores(texts, batch_size=4)  # 3 batches
    assert sorted(calls.values()) == [3, 3]
    # level 2 weighs the FLAT and tuned members only: the shared encoder still runs once per
    # batch, and a level whose members are not run costs nothing
    calls.clear()
    model.scores(texts, levels=[2], batch_size=4)
    assert sorted(calls.values()) == [3, 3]


def test_a_members_heads_of_a_level_it_weighs_nothing_at_are_not_run(
    experiment: Experiment, exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layer-wise member weighs 0 at level 2: its level-2 head is not run, and the
    ensemble's scores are still `combine` of the members' full scores (the served test)."""
    model = EnsembleModel.load(exported)
    layerwise = next(m for g in model.groups for i, m in g if i == 0)
    heads: list[int] = []
    real = layerwise.core.head_logits
    monkeypatch.setattr(layerwise.core, "head_logits",
                        lambda head, pooled: heads.append(head) or real(head, pooled))
    texts = _texts(experiment, "dev")[:6]
    model.scores(texts, batch_size=8)
    assert sorted(set(heads)) == [0, 2]
    heads.clear()
    assert not model.member_scores(texts, levels=[2])[0][0].any()
    assert heads == []


def test_predict_serves_an_ensemble_directory(
    experiment: Experiment, exported: Path, tmp_path: Path
) -> None:
    dev = load_corpus_dir(experiment.corpus_dir).splits["dev"][:8]
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in dev))
    assert main(["predict", str(exported), "--input", str(docs), "--out",
                 str(tmp_path / "ranked.jsonl"), "--top-k", "3"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "ranked.jsonl").read_text().splitlines()]
    scores = EnsembleModel.load(exported).scores([d.text for d in dev])
    assert [r["id"] for r in rows] == [d.id for d in dev]
    assert rows[0]["levels"][0]["labels"][0]["score"] == float(scores[0][0].max())
    assert main(["predict", str(exported), "--input", str(docs), "--out",
                 str(tmp_path / "sets.jsonl")]) == 0  # label sets at the tuned thresholds
    hierarchy = EnsembleModel.load(exported).hierarchy()
    for row in map(json.loads, (tmp_path / "sets.jsonl").read_text().splitlines()):
        chosen = {lab["id"] for lv in row["levels"] for lab in lv["labels"]}
        assert all(not hierarchy.node(x).parents or set(hierarchy.node(x).parents) & chosen
                   for x in chosen)


def test_export_without_an_ensemble_names_the_missing_file(
    experiment: Experiment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = shutil.copytree(experiment.path, tmp_path / "exp")
    (path / ENSEMBLE_FILE).unlink()
    err = _error(capsys, ["export", str(path), "--ensemble", "--out", str(tmp_path / "m")])
    assert f"{path}/{ENSEMBLE_FILE}" in err and "no ensemble" in err
    assert not (tmp_path / "m").exists()
    with pytest.raises(SystemExit):  # one model: a trial or the ensemble
        main(["export", str(path), "--ensemble", "--trial", LAYERWISE, "--out", "x"])


def test_a_damaged_or_missing_member_checkpoint_is_named_not_skipped(
    experiment: Experiment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = shutil.copytree(experiment.path, tmp_path / "exp")
    moved = {t: path / c.relative_to(experiment.path) for t, c in experiment.checkpoints.items()}
    members = tuple(EnsembleMember("trial", t, str(path), str(c)) for t, c in moved.items())
    ensemble = replace(experiment.ensemble, members=members + experiment.ensemble.members[4:])
    _write_ensemble(path, ensemble)
    (moved[FLAT] / "model.pt").write_bytes(b"cut short")
    err = _error(capsys, ["export", str(path), "--ensemble", "--out", str(tmp_path / "m")])
    assert f"member trial {FLAT}" in err and str(moved[FLAT] / "model.pt") in err
    shutil.copy(experiment.checkpoints[FLAT] / "model.pt", moved[FLAT] / "model.pt")
    shutil.rmtree(moved[TUNED])
    err = _error(capsys, ["export", str(path), "--ensemble", "--out", str(tmp_path / "m")])
    assert f"member trial {TUNED}" in err and str(moved[TUNED]) in err and "missing" in err
    assert not (tmp_path / "m").exists()


def test_a_damaged_ensemble_export_names_its_file(exported: Path, tmp_path: Path) -> None:
    from hiersearch.errors import InputError

    copy = shutil.copytree(exported, tmp_path / "copy")
    (copy / "baseline" / "idf.npy").write_bytes(b"not numpy")
    with pytest.raises(InputError, match=str(copy / "baseline" / "idf.npy")):
        EnsembleModel.load(copy)
    shutil.rmtree(copy / "encoders" / "0")
    with pytest.raises(InputError, match=str(copy / "encoders" / "0")):
        EnsembleModel.load(copy)


def test_shared_encoder_forward_equals_each_members_own(exported: Path) -> None:
    """Building the members on the shared encoder leaves it whole (12 layers), each member
    reading its own layers (the scores' equality is tested above)."""
    model = EnsembleModel.load(exported)
    (shared,) = [g for g in model.groups if len(g) == 2]
    encoder = shared[0][1].core.encoder
    assert len(encoder.encoder.layer) == 12 and encoder.config.num_hidden_layers == 12
    assert {m.layers_needed([1, 2, 3]) for _, m in shared} == {6, 12}


def test_a_member_reading_more_layers_than_its_encoder_holds_is_refused(exported: Path) -> None:
    from hiersearch.errors import InputError

    model = EnsembleModel.load(exported)
    (tuned,) = [m for g in model.groups for i, m in g if i == 2]  # its own 3-layer encoder
    with pytest.raises(InputError, match="reads 6 encoder layers; its encoder has 3"):
        ExportedModel.on_encoder(exported / "members" / "0", tuned.core.encoder, tuned.tokenizer)
    assert len(tuned.core.encoder.encoder.layer) == 3  # left as it was
