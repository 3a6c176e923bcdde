"""An experiment's ensemble fitted over its trials and baseline (search/members.py), on an
experiment directory laid out as a search leaves it, its trials trained in-process (no Ray):
head-only on a tiny model, seconds each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hiersearch import metrics as M
from hiersearch.cli import main
from hiersearch.data.corpus import write_corpus
from hiersearch.data.prepare import encode_corpus
from hiersearch.data.synth import SynthConfig, synthesize
from hiersearch.data.vocabularies import eurovoc_hierarchy
from hiersearch.errors import InputError
from hiersearch.model.encoder import tokenizer_path
from hiersearch.report import ensemble as E
from hiersearch.report import leaderboard as lb
from hiersearch.report.baseline import (
    BASELINE_SCORES_FILE,
    compute_baseline,
    read_baseline_scores,
    write_baseline,
)
from hiersearch.report.experiment import write_experiment_meta
from hiersearch.report.results import load_experiments, trial_rows
from hiersearch.search.members import fit_experiment_ensemble, member_candidates
from hiersearch.trial import checkpoint
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.recipe import fit
from hiersearch.trial.session import LocalSession

VARIANTS = ("FLAT", "LAST-THREE", "ONE-BY-ONE")


# A trial trained with `keep_scores: false` (the fixture's last run), as VARIANTS[0]
NOT_KEPT = "not_kept"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three finished head-only trials' run directories (final checkpoint in each), a fourth
    told not to keep its scores (NOT_KEPT), and the corpus they trained on."""
    root = tmp_path_factory.mktemp("members")
    corpus = synthesize(eurovoc_hierarchy(), SynthConfig(docs=80, seed=1, max_leaves=12))
    corpus_dir = root / "corpus"
    write_corpus(corpus, corpus_dir)
    data = encode_corpus(corpus, str(corpus_dir), tokenizer=tokenizer_path("minilm"),
                         num_layers=12, max_length=32)
    runs = {"corpus": corpus_dir}
    for number, variant in enumerate([*VARIANTS, NOT_KEPT]):
        config = TrialConfig(
            model="tiny:12x32", assignment=VARIANTS[0] if variant == NOT_KEPT else variant,
            freeze_layers="all", epochs=2, batch_size=8, head_lr=3e-2, max_length=32,
            util_docs=0, eval_batch_size=32, corpus=str(corpus_dir), seed=number,
            keep_scores=variant != NOT_KEPT,
        )
        run = root / f"run_{number}"
        run.mkdir()
        final = fit(config, data.encoded_path, LocalSession(checkpoint_root=run))
        (run / "final.json").write_text(json.dumps(final))
        runs[variant] = run
    return runs


def _experiment(trained: dict[str, Path], where: Path, variants: tuple[str, ...]) -> Path:
    """An experiment directory holding `variants`' trials as a search leaves them."""
    corpus_dir = trained["corpus"]
    write_experiment_meta(
        str(where), metrics=[M.DEFAULT_METRIC], modes=["max"], study={}, space_file=None,
        space={}, base_config={}, corpus=str(corpus_dir), synthetic=True,
        label_counts=[], num_layers=12,
    )
    from hiersearch.data.corpus import load_corpus_dir

    write_baseline(str(where), compute_baseline(load_corpus_dir(corpus_dir)))
    for variant in variants:
        _add_trial(trained, where, variant)
    return where


def _add_trial(trained: dict[str, Path], where: Path, variant: str) -> Path:
    number = [*VARIANTS, NOT_KEPT].index(variant)
    trial_dir = where / f"trainable_abcde_{number:05d}_{number}_variant={variant}_2026"
    trial_dir.mkdir()
    run = trained[variant]
    (trial_dir / "params.json").write_text(json.dumps({"variant": variant}))
    (trial_dir / "result.json").write_text((run / "final.json").read_text() + "\n")
    last = sorted(run.glob("checkpoint_*"))[-1]
    shutil.copytree(last, trial_dir / "checkpoint_000001")
    return trial_dir / "checkpoint_000001"


def test_a_finished_trial_keeps_the_scores_its_metrics_came_from(
    trained: dict[str, Path],
) -> None:
    from hiersearch.data.corpus import load_corpus_dir
    from hiersearch.report.baseline import gold_levels

    final = json.loads((trained["FLAT"] / "final.json").read_text())
    checkpoints = sorted(trained["FLAT"].glob("checkpoint_*"))
    scores = checkpoint.read_scores(checkpoints[-1])
    assert scores is not None and scores["dev"].dtype == np.float32
    assert checkpoint.read_scores(checkpoints[0]) is None  # an epoch's checkpoint keeps none
    corpus = load_corpus_dir(trained["corpus"])
    edges = np.cumsum([0, *corpus.hierarchy.label_counts()])
    for split in ("dev", "test"):
        golds = gold_levels([d.labels for d in corpus.splits[split]],
                            corpus.hierarchy.label_index())
        levels = [scores[split][:, a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]
        again = M.evaluate(golds, levels, split)
        assert again[M.rp_macro_key(split)] == final[M.rp_macro_key(split)]  # exact


def test_the_ensemble_row_is_in_the_leaderboard_and_no_trial(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    experiment = _experiment(trained, tmp_path / "exp", VARIANTS)
    fitted = fit_experiment_ensemble(str(experiment), steps=10)
    assert set(fitted.ensembles) == set(E.MODES) and not fitted.skipped
    assert len(fitted.ensemble.members) == 5  # three trials, the baseline, the dense k-NN
    assert [m.kind for m in fitted.ensemble.members[-2:]] == [E.KIND_BASELINE, E.KIND_DENSE]
    assert (experiment / BASELINE_SCORES_FILE).is_file()  # computed once, kept
    table = load_experiments([str(experiment)])
    (row,) = table[table["status"] == E.STATUS_ENSEMBLE].to_dict("records")
    assert row["trial_id"] == "ensemble" and row["members"]
    assert row[M.rp_macro_key("test")] == fitted.ensemble.metrics[M.rp_macro_key("test")]
    assert len(trial_rows(table)) == 3
    paper = lb.paper_table(table, "test")  # reproduce's tables: the baseline, then the ensemble
    assert paper["variant"].iloc[-2].endswith("(baseline)")
    assert paper["variant"].iloc[-1].startswith("ensemble of")
    assert paper["L1"].iloc[-1] == f"{100 * row[M.rp_level_key('test', 1)]:.1f}"


def test_the_ensemble_is_not_worse_on_dev_than_its_best_member(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    experiment = _experiment(trained, tmp_path / "exp", VARIANTS)
    fitted = fit_experiment_ensemble(str(experiment), steps=10)
    table = load_experiments([str(experiment)])
    best = table[M.rp_level_key("dev", 1)].max()  # every row's, the ensemble's included
    assert fitted.ensembles[E.PER_LEVEL].metrics[M.rp_level_key("dev", 1)] == best


def test_a_refit_after_more_trials_takes_them_in(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    experiment = _experiment(trained, tmp_path / "exp", VARIANTS[:1])
    first = fit_experiment_ensemble(str(experiment), steps=5, dense=False)
    assert len(first.ensemble.members) == 2
    _add_trial(trained, experiment, VARIANTS[1])
    again = fit_experiment_ensemble(str(experiment), steps=5, dense=False)
    assert len(again.ensemble.members) == 3
    assert E.read_ensemble(str(experiment)) == again.ensemble


def test_top_keeps_the_best_trials_by_the_search_metric(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    experiment = _experiment(trained, tmp_path / "exp", VARIANTS)
    candidates, metric, _ = member_candidates(str(experiment), top=2)
    values = [json.loads((trained[v] / "final.json").read_text())[metric] for v in VARIANTS]
    assert [c.value for c in candidates] == sorted(values, reverse=True)[:2]


def test_a_damaged_member_checkpoint_is_reported_not_silently_skipped(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = _experiment(trained, tmp_path / "exp", VARIANTS[:2])
    damaged = next(experiment.glob("*variant=LAST-THREE*")) / "checkpoint_000001"
    (damaged / checkpoint.SCORES_FILE).write_bytes(b"not a zip")
    fitted = fit_experiment_ensemble(str(experiment), steps=5)
    ((member, reason),) = fitted.skipped
    assert "scores.npz" in reason and "cannot read" in reason
    assert "skipped" in capsys.readouterr().err
    assert E.read_ensemble_file(str(experiment)).skipped == fitted.skipped


def test_a_trial_without_kept_scores_is_rescored_from_its_checkpoint(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    experiment = _experiment(trained, tmp_path / "exp", VARIANTS[:1])
    kept = experiment / next(p.name for p in experiment.glob("trainable_*")) / "checkpoint_000001"
    before = checkpoint.read_scores(kept)
    (kept / checkpoint.SCORES_FILE).unlink()
    fitted = fit_experiment_ensemble(str(experiment), steps=5)
    assert not fitted.skipped
    after = checkpoint.read_scores(kept)  # written back: the next fit reads it
    assert after is not None
    for split in ("dev", "test"):
        np.testing.assert_allclose(after[split], before[split], rtol=1e-5, atol=1e-6)


def test_keep_scores_false_writes_no_scores(trained: dict[str, Path]) -> None:
    final = sorted(trained[NOT_KEPT].glob("checkpoint_*"))[-1]
    assert checkpoint.read_final_metrics(final) is not None  # the final checkpoint
    assert not (final / checkpoint.SCORES_FILE).exists()
    assert (sorted(trained[VARIANTS[0]].glob("checkpoint_*"))[-1] / checkpoint.SCORES_FILE
            ).is_file()


def test_a_trial_told_not_to_keep_scores_is_skipped_in_one_line_naming_it(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = _experiment(trained, tmp_path / "exp", VARIANTS[:2])
    not_kept = _add_trial(trained, experiment, NOT_KEPT)
    capsys.readouterr()
    fitted = fit_experiment_ensemble(str(experiment), steps=5)
    skipped = dict(fitted.skipped)
    assert list(skipped.values()) == ["kept no scores (keep_scores: false)"]
    (name,) = skipped
    assert len(fitted.ensemble.members) == 4  # the two others and both k-NNs
    assert name not in {m.name for m in fitted.ensemble.members}
    lines = [x for x in capsys.readouterr().err.splitlines() if "keep_scores: false" in x]
    assert len(lines) == 1 and name in lines[0] and "1 of the 3 best trials" in lines[0]
    assert not (not_kept / checkpoint.SCORES_FILE).exists()  # not rescored behind its back


def test_no_member_left_is_said(trained: dict[str, Path], tmp_path: Path) -> None:
    experiment = _experiment(trained, tmp_path / "exp", ())
    (experiment / "baseline.json").unlink()
    _add_trial(trained, experiment, NOT_KEPT)
    with pytest.raises(InputError, match="no member left.*1 kept no scores "
                                         r"\(keep_scores: false\).*no baseline"):
        fit_experiment_ensemble(str(experiment), steps=5, dense=False)


def test_the_baselines_scores_round_trip_and_give_its_metrics(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    from hiersearch.data.corpus import load_corpus_dir
    from hiersearch.report.baseline import (
        baseline_with_scores,
        knn_metrics,
        write_baseline_scores,
    )

    corpus = load_corpus_dir(trained["corpus"])
    baseline, scores = baseline_with_scores(corpus)
    write_baseline_scores(str(tmp_path), scores)
    back = read_baseline_scores(str(tmp_path))
    assert back is not None and set(back) == {"dev", "test"}
    macro = M.rp_macro_key("test")
    assert knn_metrics(corpus, back)[macro] == pytest.approx(baseline["metrics"][macro], abs=1e-9)


def test_leaderboard_ensemble_fits_and_shows_the_row(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = _experiment(trained, tmp_path / "exp", VARIANTS)
    capsys.readouterr()
    assert main(["leaderboard", str(experiment), "--ensemble", "--ensemble-members", "2",
                 "--format", "json"]) == 0
    captured = capsys.readouterr()
    board = json.loads(captured.out)  # the fit's lines go to stderr
    assert "ensemble.json" in captured.err
    (row,) = [r for r in board["rows"] if r["status"] == "ensemble"]
    assert row["members"] and isinstance(row[M.rp_macro_key("test")], float)
    assert len(E.read_ensemble(str(experiment)).members) == 4  # the best 2, both k-NNs


def test_search_fits_the_ensemble_at_its_end_and_its_summary_reports_both_selections(
    trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    import jsonschema

    from hiersearch.cli import runs
    from hiersearch.report.summary import SUMMARY_JSON_SCHEMA
    from hiersearch.search import run

    experiment = _experiment(trained, tmp_path / "exp", VARIANTS)
    monkeypatch.setattr(runs, "_prepare_env", lambda: None)
    monkeypatch.setattr(run, "run_search", lambda *_, **__: str(experiment))  # no Ray
    assert main(["search", "--space", "smoke", "--json"]) == 0
    captured = capfd.readouterr()
    summary = json.loads(captured.out)
    jsonschema.validate(summary, SUMMARY_JSON_SCHEMA)
    ensemble = summary["ensemble"]
    assert ensemble["mode"] in E.MODES and ensemble["members"]
    assert set(ensemble["others"]) == set(E.MODES) - {ensemble["mode"]}
    assert summary["trials"]["total"] == 3  # the ensemble and the baseline are no trials
    assert "the leaderboard's 'ensemble' row" in captured.err
    assert (experiment / E.ENSEMBLE_FILE).is_file()


def test_ensemble_members_zero_fits_none(
    trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from hiersearch.cli import runs
    from hiersearch.search import run

    experiment = _experiment(trained, tmp_path / "exp", VARIANTS[:1])
    monkeypatch.setattr(runs, "_prepare_env", lambda: None)
    monkeypatch.setattr(run, "run_search", lambda *_, **__: str(experiment))
    assert main(["search", "--space", "smoke", "--ensemble-members", "0"]) == 0
    assert not (experiment / E.ENSEMBLE_FILE).exists()
    assert main(["search", "--space", "smoke", "--ensemble-members", "-1"]) == 2


def test_the_ensembles_scores_give_its_metrics(trained: dict[str, Path], tmp_path: Path) -> None:
    from hiersearch.search.members import ensemble_scores, experiment_golds

    experiment = _experiment(trained, tmp_path / "exp", VARIANTS)
    fitted = fit_experiment_ensemble(str(experiment), steps=10)
    scores = ensemble_scores(str(experiment), fitted.ensemble)
    golds = experiment_golds(str(experiment))
    again = M.evaluate(golds["test"], scores["test"], "test")
    assert again[M.rp_macro_key("test")] == fitted.ensemble.metrics[M.rp_macro_key("test")]


def test_the_exported_ensemble_predicts_what_its_leaderboard_row_scored(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    """The fit (members' kept scores) and the export (members' heads run again, the baseline's
    index saved) give the test documents the same scores, hence the row's test R-Precision."""
    from hiersearch.data.corpus import load_corpus_dir
    from hiersearch.search.members import ensemble_scores, experiment_golds
    from hiersearch.serve.ensemble import EnsembleModel
    from hiersearch.serve.export_ensemble import export_ensemble

    experiment = _experiment(trained, tmp_path / "exp", VARIANTS)
    fitted = fit_experiment_ensemble(str(experiment), steps=10)
    export_ensemble(str(experiment), str(tmp_path / "model"))
    test = load_corpus_dir(trained["corpus"]).splits["test"]
    served = EnsembleModel.load(tmp_path / "model").scores([d.text for d in test])
    kept = ensemble_scores(str(experiment), fitted.ensemble)["test"]
    for level_served, level_kept in zip(served, kept, strict=True):
        np.testing.assert_allclose(level_served, level_kept, rtol=1e-5, atol=1e-5)
    again = M.evaluate(experiment_golds(str(experiment))["test"], served, "test")
    macro = M.rp_macro_key("test")
    assert again[macro] == pytest.approx(fitted.ensemble.metrics[macro], abs=1e-9)


def test_the_dense_member_is_computed_once_on_the_best_trials_backbone_and_kept(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    from hiersearch.data.corpus import load_corpus_dir
    from hiersearch.report.baseline import gold_levels
    from hiersearch.report.dense_knn import DENSE_SCORES_FILE, K_CHOICES, read_dense

    experiment = _experiment(trained, tmp_path / "exp", VARIANTS)
    fitted = fit_experiment_ensemble(str(experiment), steps=5)
    info = read_dense(str(experiment))
    best = member_candidates(str(experiment))[0][0].member
    config = json.loads(checkpoint.config_path(Path(str(best.checkpoint))).read_text())
    assert info is not None and info["k"] in K_CHOICES and info["layer"] == 12
    assert info["backbone"]["model"] == "tiny:12x32"
    assert info["backbone"]["seed"] == config["seed"]  # the best trial's backbone
    kept = read_baseline_scores(str(experiment), DENSE_SCORES_FILE)
    assert kept is not None
    corpus = load_corpus_dir(trained["corpus"])
    golds = gold_levels([d.labels for d in corpus.splits["test"]], corpus.hierarchy.label_index())
    macro = M.rp_macro_key("test")
    assert M.evaluate(golds, kept["test"], "test")[macro] == info["metrics"][macro]
    assert E.KIND_DENSE in {m.kind for m in fitted.ensemble.members}
    written = (experiment / DENSE_SCORES_FILE).stat().st_mtime_ns
    fit_experiment_ensemble(str(experiment), steps=5)  # read back, not computed again
    assert (experiment / DENSE_SCORES_FILE).stat().st_mtime_ns == written
    assert E.KIND_DENSE not in {m.kind for m in fit_experiment_ensemble(
        str(experiment), steps=5, dense=False).ensemble.members}


@pytest.mark.parametrize("with_trial", [True, False])
def test_the_exported_dense_member_scores_as_its_fit_did(
    trained: dict[str, Path], tmp_path: Path, with_trial: bool
) -> None:
    """Weighted beside the trial whose backbone it read, it rides that trial's encoder (one
    encoder in the export); alone, it gets the backbone as its own."""
    import dataclasses

    from hiersearch.data.corpus import load_corpus_dir
    from hiersearch.search.members import ensemble_scores
    from hiersearch.serve.ensemble import EnsembleModel
    from hiersearch.serve.export_ensemble import export_ensemble

    experiment = _experiment(trained, tmp_path / "exp", VARIANTS)
    fitted = fit_experiment_ensemble(str(experiment), steps=5)
    members = fitted.ensemble.members
    best = member_candidates(str(experiment))[0][0].member
    weights = tuple(
        (0.5 if with_trial else 0.0) * (m == best) + (0.5 if with_trial else 1.0) * (
            m.kind == E.KIND_DENSE) for m in members)
    by_hand = dataclasses.replace(fitted.ensemble, weights=(weights,) * 3)
    E.write_ensemble(str(experiment), E.EnsembleFile({E.PER_LEVEL: by_hand}, E.PER_LEVEL))
    model_dir = export_ensemble(str(experiment), str(tmp_path / "model"))
    assert len(list((model_dir / "encoders").iterdir())) == 1
    test = load_corpus_dir(trained["corpus"]).splits["test"]
    served = EnsembleModel.load(model_dir).scores([d.text for d in test])
    kept = ensemble_scores(str(experiment), by_hand)["test"]
    for level_served, level_kept in zip(served, kept, strict=True):
        np.testing.assert_allclose(level_served, level_kept, rtol=1e-4, atol=1e-4)
