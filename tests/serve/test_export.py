"""`hiersearch export`: the checkpoint column, the model directory, refusals of bad options.

The fast tests train one tiny trial in-process (no Ray) and lay its files out as a Ray Tune trial
directory (result.json, params.json, checkpoint_*); the slow test exports a trial of a real
smoke search. The exported model itself is tested in test_model.py.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from refusals import _error

from hiersearch import metrics as M
from hiersearch.cli import main
from hiersearch.cli.runs import print_export_hint
from hiersearch.data.corpus import load_corpus_dir, write_corpus
from hiersearch.data.encode import EncodedCorpus, encode, multi_hot
from hiersearch.data.synth import SynthConfig, synthesize
from hiersearch.data.vocabularies import eurovoc_hierarchy
from hiersearch.errors import InputError
from hiersearch.model.encoder import tokenizer_path
from hiersearch.report.results import load_experiments
from hiersearch.serve.export import export_trial
from hiersearch.serve.model import ExportedModel
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.recipe import build_classifier, fit
from hiersearch.trial.session import LocalSession

# Levels 1-3 on layers 2, 4 and 6 of 12: the export keeps 6 layers, levels 1-2 need 4.
ASSIGNMENT = "L1:2|L2:4|L3:6"
FINISHED, UNFINISHED = "ab12c_00000", "ab12c_00001"


@dataclass
class Trained:
    experiment: Path
    checkpoint: Path  # the trial's final checkpoint in the experiment
    corpus_dir: Path
    encoded: EncodedCorpus
    config: TrialConfig
    final: dict


def _trial_dir(experiment: Path, trial_id: str) -> Path:
    path = experiment / f"trainable_{trial_id}_0_seed=0_2026-11-30_00-00-00"
    path.mkdir(parents=True)
    return path


def _write_results(trial_dir: Path, reports: list[dict], params: dict) -> None:
    lines = [json.dumps({**r, "trial_id": trial_dir.name.split("_")[1] + "_"
                         + trial_dir.name.split("_")[2]}) for r in reports]
    (trial_dir / "result.json").write_text("\n".join(lines) + "\n")
    (trial_dir / "params.json").write_text(json.dumps(params))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One finished trial (mean pooling, batchnorm: heads.pt has buffers) and one unfinished,
    laid out as Ray Tune lays out an experiment."""
    root = tmp_path_factory.mktemp("export")
    corpus_dir = root / "corpus"
    write_corpus(synthesize(eurovoc_hierarchy(), SynthConfig(docs=60, seed=1, max_leaves=12)),
                 corpus_dir)
    encoded = encode(load_corpus_dir(corpus_dir), tokenizer_path("minilm"), 48, root / "cache")
    config = TrialConfig(
        corpus=str(corpus_dir), model="tiny:12x32", assignment=ASSIGNMENT, epochs=3,
        batch_size=8, lr=1e-3, max_length=48, util_docs=0, eval_batch_size=16,
        pooling="mean", head_norm="batchnorm",
    )
    session = LocalSession(checkpoint_root=root / "session")
    (root / "session").mkdir()
    final = fit(config, encoded, session)
    experiment = root / "exp"
    trial_dir = _trial_dir(experiment, FINISHED)
    _write_results(trial_dir, session.reports, {"seed": 0})
    for checkpoint in session.checkpoints:
        shutil.copytree(checkpoint, trial_dir / checkpoint.name)
    (trial_dir / "config.json").write_text(config.dumps())
    _write_results(_trial_dir(experiment, UNFINISHED), session.reports[:1], {"seed": 1})
    (experiment / "hiersearch.json").write_text(
        json.dumps({"name": "fake", "metric": M.rp_macro_key("dev"), "mode": "max"})
    )
    checkpoint = trial_dir / session.checkpoints[-1].name
    return Trained(experiment, checkpoint, corpus_dir, encoded, config, final)


@pytest.fixture(scope="module")
def exported(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_trial(str(trained.experiment), str(tmp_path_factory.mktemp("models") / "best"))


def test_leaderboard_shows_each_finished_trials_final_checkpoint(trained: Trained) -> None:
    table = load_experiments([str(trained.experiment)]).set_index("trial_id")
    assert table.loc[FINISHED, "checkpoint"] == str(trained.checkpoint)
    assert (trained.checkpoint / "final_metrics.json").is_file()
    assert pd.isna(table.loc[UNFINISHED, "checkpoint"])


def test_export_writes_a_self_contained_model_directory(trained: Trained, exported: Path) -> None:
    names = {p.name for p in exported.iterdir()}
    assert names == {"encoder", "tokenizer", "heads.pt", "model.json", "labels.json",
                     "hierarchy.json", "README.md"}
    encoder_config = json.loads((exported / "encoder" / "config.json").read_text())
    assert encoder_config["num_hidden_layers"] == 6  # cut at the top layer in use
    heads = torch.load(exported / "heads.pt")
    assert not any(k.startswith("encoder.") for k in heads)
    assert {"norms.0.running_mean", "norms.2.running_var", "heads.1.weight"} <= set(heads)
    labels = json.loads((exported / "labels.json").read_text())["levels"]
    assert [level["ids"] for level in labels] == trained.encoded.label_index
    assert all(all(d for d in level["descriptions"]) for level in labels)
    model = json.loads((exported / "model.json").read_text())
    assert model["trial_id"] == FINISHED and model["assignment"] == ASSIGNMENT
    assert model["metrics"][M.rp_macro_key("dev")] == trained.final[M.rp_macro_key("dev")]
    card = (exported / "README.md").read_text()
    assert "SYNTHETIC" in card and "hiersearch predict" in card and ASSIGNMENT in card
    assert not list(exported.parent.glob(".best.*"))  # no temporary left beside it


def test_exported_dev_scores_reproduce_the_leaderboards_dev_r_precision(
    trained: Trained, exported: Path
) -> None:
    """Consistency: the dev R-Precision recomputed from `scores` is the leaderboard's."""
    row = load_experiments([str(trained.experiment)]).set_index("trial_id").loc[FINISHED]
    model = ExportedModel.load(exported)
    dev = load_corpus_dir(trained.corpus_dir).splits["dev"]
    scores = model.scores([d.text for d in dev], batch_size=16)
    from hiersearch.data.encode import Split

    split = Split.from_table(trained.encoded.splits["dev"])
    gold = multi_hot(split.label_ids, trained.encoded.num_labels).numpy()
    golds = [gold[:, s] for s in trained.encoded.level_slices]
    recomputed = M.evaluate(golds, scores, "dev")
    keys = [*M.rp_level_keys("dev", 3), M.rp_micro_key("dev"), M.rp_macro_key("dev")]
    for key in keys:
        assert recomputed[key] == row[key], key


def test_export_carries_the_trials_dev_thresholds_and_they_reproduce_its_dev_f1(
    trained: Trained, exported: Path
) -> None:
    """The thresholds `predict` uses by default are the trial's, and the exported model's dev
    scores at them give the leaderboard's dev F1."""
    from hiersearch.data.encode import Split

    row = load_experiments([str(trained.experiment)]).set_index("trial_id").loc[FINISHED]
    model = ExportedModel.load(exported)
    tuned = [trained.final[M.f1_threshold_key("dev", n)] for n in (1, 2, 3)]
    assert model.thresholds == tuned
    assert json.loads((exported / "model.json").read_text())["thresholds"] == tuned
    dev = load_corpus_dir(trained.corpus_dir).splits["dev"]
    scores = model.scores([d.text for d in dev], batch_size=16)
    split = Split.from_table(trained.encoded.splits["dev"])
    gold = multi_hot(split.label_ids, trained.encoded.num_labels).numpy()
    golds = [gold[:, s] for s in trained.encoded.level_slices]
    recomputed = M.f1_at_thresholds(golds, scores, tuned, "dev")
    assert recomputed and all(recomputed[key] == row[key] for key in recomputed), recomputed
    card = (exported / "README.md").read_text()
    assert "| level | threshold | dev micro | dev macro | test micro | test macro |" in card
    assert "--top-k" not in card  # label sets by default


def test_predict_by_default_gives_label_sets_where_every_label_has_a_parent(
    trained: Trained, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = load_corpus_dir(trained.corpus_dir).splits["dev"]
    docs = tmp_path / "dev.jsonl"
    docs.write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in dev))
    assert main(["predict", str(exported), "--input", str(docs), "--out",
                 str(tmp_path / "p.jsonl")]) == 0
    hierarchy = ExportedModel.load(exported).hierarchy()
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == len(dev) and any(lv["labels"] for r in rows for lv in r["levels"][1:])
    for row in rows:
        chosen = {lab["id"] for lv in row["levels"] for lab in lv["labels"]}
        for label in chosen:
            parents = hierarchy.node(label).parents
            assert not parents or set(parents) & chosen, (row["id"], label)
    # an export of an older trial (no thresholds) says what to give instead
    info = json.loads((exported / "model.json").read_text())
    old = tmp_path / "old"
    shutil.copytree(exported, old)
    (old / "model.json").write_text(json.dumps({**info, "thresholds": None}))
    err = _error(capsys, ["predict", str(old), "--input", str(docs)])
    assert "model.json: has no F1 thresholds" in err and "--top-k" in err


def test_exported_model_equals_the_checkpoints_model(trained: Trained, exported: Path) -> None:
    model = ExportedModel.load(exported)
    core = build_classifier(trained.config, trained.encoded.label_counts).eval()
    core.load_state_dict(torch.load(trained.checkpoint / "model.pt"))
    batch = model.tokenize(["a first document about agriculture", "trade and customs", "x"])
    with torch.inference_mode():
        expected = core(batch["input_ids"], batch["attention_mask"])
    got = model.logits_of_ids(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_export_hint_names_the_best_trial(
    trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    print_export_hint(str(trained.experiment), None)
    out = capsys.readouterr().out
    assert f"hiersearch export {trained.experiment} --trial {FINISHED} --out " in out


def test_export_refuses_bad_options(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp, out = str(trained.experiment), str(tmp_path / "m")
    assert "--trial" in _error(capsys, ["export", exp, "--trial", "nope", "--out", out])
    assert "--trial" in _error(capsys, ["export", exp, "--trial", UNFINISHED, "--out", out])
    assert "--best" in _error(capsys, ["export", exp, "--best", "dev/rp_L9", "--out", out])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert "--out" in _error(capsys, ["export", exp, "--out", str(tmp_path / "full")])
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert str(tmp_path) in _error(capsys, ["export", str(tmp_path), "--out", out])
    with pytest.raises(SystemExit) as both:
        main(["export", exp, "--trial", FINISHED, "--best", "dev/rp_L1", "--out", out])
    assert both.value.code == 2
    assert not (tmp_path / "m").exists()


def test_export_of_a_damaged_checkpoint_names_its_weights_file(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = shutil.copytree(trained.experiment, tmp_path / "exp")
    weights = experiment / trained.checkpoint.relative_to(trained.experiment) / "model.pt"
    weights.write_bytes(b"cut short")
    err = _error(capsys, ["export", str(experiment), "--out", str(tmp_path / "m")])
    assert str(weights) in err and "cannot read the checkpoint file" in err
    assert not (tmp_path / "m").exists()


def test_export_by_trial_id_and_by_a_loss_metric(trained: Trained, tmp_path: Path) -> None:
    by_id = export_trial(str(trained.experiment), str(tmp_path / "a"), trial=FINISHED)
    by_loss = export_trial(str(trained.experiment), str(tmp_path / "b"), best=M.loss_key("dev"))
    for path in (by_id, by_loss):
        assert json.loads((path / "model.json").read_text())["trial_id"] == FINISHED


def test_loading_something_else_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=str(tmp_path)):
        ExportedModel.load(tmp_path)
    with pytest.raises(InputError, match="no such model directory"):
        ExportedModel.load(tmp_path / "missing")


# --- a real search's trial directory (Ray) --------------------------------------------------


@pytest.mark.slow
def test_export_of_a_real_smoke_trial_reproduces_its_dev_r_precision(
    smoke_experiment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ray Train's layout (train_*/checkpoint_*, DDP workers), found by the leaderboard and
    exported; its dev scores give the leaderboard's dev R-Precision. The smoke experiment is
    the session's (tests/conftest.py), shared with search/test_run.py."""
    from hiersearch.data.encode import Split, load_encoded

    path = smoke_experiment
    board = load_experiments([path])
    row = board[board["status"] != "baseline"].iloc[0]
    assert row["status"] == "terminated" and "/train_" in row["checkpoint"]
    out = str(tmp_path / "model")
    assert main(["export", path, "--trial", row["trial_id"], "--out", out]) == 0
    model = ExportedModel.load(tmp_path / "model")
    meta = json.loads((Path(path) / "hiersearch.json").read_text())
    encoded = load_encoded(next(Path(meta["corpus"]).glob(".hiersearch-cache/encoded-*")))
    dev_docs = load_corpus_dir(meta["corpus"]).splits["dev"]
    scores = model.scores([d.text for d in dev_docs])
    split = Split.from_table(encoded.splits["dev"])
    gold = multi_hot(split.label_ids, encoded.num_labels).numpy()
    recomputed = M.evaluate([gold[:, s] for s in encoded.level_slices], scores, "dev")
    assert recomputed[M.rp_macro_key("dev")] == row[M.rp_macro_key("dev")]
    assert np.isfinite(recomputed[M.rp_macro_key("dev")])
