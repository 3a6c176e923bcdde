"""The trial loop in-process (no Ray): reports, checkpoints, resume, early stopping, NaN."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from hiersearch import metrics as M
from hiersearch.data.encode import encode
from hiersearch.data.synth import SynthConfig, synthesize
from hiersearch.data.vocabularies import eurovoc_hierarchy
from hiersearch.model.encoder import tokenizer_path
from hiersearch.trial import evaluation, recipe
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.recipe import (
    STOP_COMPLETED,
    STOP_NAN,
    STOP_PATIENCE,
    TrialRecipe,
    fit,
)
from hiersearch.trial.session import Artifacts, LocalSession

# What a rerun cannot repeat: wall-clock timings and the process's memory.
TIMINGS = {M.SAMPLES_PER_SECOND, M.EPOCH_SECONDS, M.PEAK_MEMORY_MB, M.PEAK_RESERVED_MB,
           M.eval_seconds_key("dev"),
           M.eval_seconds_key("test"), M.COST_FORWARD_MS}


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> str:
    corpus = synthesize(eurovoc_hierarchy(), SynthConfig(docs=60, seed=1, max_leaves=12))
    cache = tmp_path_factory.mktemp("cache")
    return str(encode(corpus, tokenizer_path("minilm"), 48, cache).path)


def _config(**changes: object) -> TrialConfig:
    base = TrialConfig(
        model="tiny:12x32", assignment="LAST-THREE", epochs=2, batch_size=8, lr=1e-3,
        max_length=48, util_docs=6, eval_batch_size=16,
    )
    return base.replace(**changes)


def _session(tmp_path: Path) -> LocalSession:
    root = tmp_path / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    return LocalSession(checkpoint_root=root)


def test_fit_reports_every_epoch_then_a_final_report_with_test_and_utilization(
    encoded: str, tmp_path: Path
) -> None:
    session = _session(tmp_path)
    artifacts_dir = tmp_path / "artifacts"
    final = fit(_config(), encoded, session, Artifacts(str(artifacts_dir)))
    assert [r[M.EPOCH] for r in session.reports] == [1, 2, 2]
    assert [r[M.TRIAL_FINAL] for r in session.reports] == [0, 0, 1]
    for level in (1, 2, 3):
        assert 0.0 <= final[M.rp_level_key("dev", level)] <= 1.0
        assert 0.0 <= final[M.rp_level_key("test", level)] <= 1.0
    assert final[M.TRIAL_STOP_REASON] == STOP_COMPLETED
    assert final[M.TRIAL_VARIANT] == "LAST-THREE"
    assert final[M.TRIAL_ASSIGNMENT] == "L1:10|L2:11|L3:12"
    assert any(key.startswith("util/") for key in final)
    assert len(session.checkpoints) == 3
    assert (session.checkpoints[0] / "model.pt").is_file()
    assert (session.checkpoints[0] / "config.json").is_file()
    for name in ("config.json", "utilization.json", "cls_angle.png", "attention_kl.png",
                 "final_metrics.json"):
        assert (artifacts_dir / name).is_file(), name
    assert list((artifacts_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_tensorboard_hparams_hold_the_trials_config_beside_its_final_metrics(
    encoded: str, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    artifacts_dir = tmp_path / "artifacts"
    config = _config(epochs=1, lr=3e-3, util_docs=0)
    final = fit(config, encoded, _session(tmp_path), Artifacts(str(artifacts_dir)))
    events = EventAccumulator(str(artifacts_dir / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(
        content[metadata.SESSION_START_INFO_TAG]
    )
    assert start.hparams["lr"].number_value == pytest.approx(3e-3)
    assert start.hparams["assignment"].string_value == "LAST-THREE"
    assert start.hparams["head_hidden"].string_value == "null"
    assert metadata.SESSION_END_INFO_TAG in content
    # no experiment summary: TensorBoard builds the table from every trial's session
    assert metadata.EXPERIMENT_TAG not in content
    for split in ("dev", "test"):
        tag = f"final/{M.rp_macro_key(split)}"
        assert events.Scalars(tag)[-1].value == pytest.approx(final[M.rp_macro_key(split)])


def test_same_seed_gives_the_same_dev_metrics(encoded: str, tmp_path: Path) -> None:
    config = _config(epochs=1, util_docs=0)
    a = fit(config, encoded, _session(tmp_path / "a"))
    b = fit(config, encoded, _session(tmp_path / "b"))
    keys = [k for k in a if k.startswith("dev/") and k not in TIMINGS]
    assert keys and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in keys)


class _Killed(Exception):
    """The worker's death, as the loop sees it."""


class _DyingSession(LocalSession):
    """Dies right after its first checkpoint is taken, as a worker killed in epoch 2 would,
    until told to live (a restarted worker: same checkpoints, nothing else)."""

    dies: bool = True

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        super().report(metrics, checkpoint_dir)
        if self.dies and self.checkpoints:
            raise _Killed


def _repeatable(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: None if isinstance(v, float) and math.isnan(v) else v
         for k, v in r.items() if k not in TIMINGS}
        for r in reports
    ]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint / "model.pt")


HEAD_OPTIONS = {"pooling": "cls_mean", "head_norm": "batchnorm", "head_hidden": 16,
                "freeze_layers": 2}


@pytest.mark.parametrize("head", [{}, HEAD_OPTIONS], ids=["paper-head", "head-options"])
def test_resumed_run_equals_an_uninterrupted_one(
    encoded: str, tmp_path: Path, head: dict[str, Any]
) -> None:
    """Weights, Adam's moments, the schedule and the random state (dropout) all come back
    from the checkpoint: any of them started afresh changes epoch 2. With the head options,
    the batch-norm statistics too."""
    config = _config(epochs=2, util_docs=0, warmup_ratio=0.25, **head)
    whole = _session(tmp_path / "whole")
    fit(config, encoded, whole)
    (tmp_path / "cut" / "checkpoints").mkdir(parents=True)
    cut = _DyingSession(checkpoint_root=tmp_path / "cut" / "checkpoints")
    with pytest.raises(_Killed):
        fit(config, encoded, cut)
    cut.dies = False
    fit(config, encoded, cut)
    assert [r[M.EPOCH] for r in cut.reports] == [1, 2, 2]
    assert _repeatable(cut.reports) == _repeatable(whole.reports)
    for resumed, uninterrupted in zip(cut.checkpoints, whole.checkpoints, strict=True):
        mine, theirs = _weights(resumed), _weights(uninterrupted)
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), resumed.name


def _script_dev_losses(monkeypatch: pytest.MonkeyPatch, losses: list[float]) -> None:
    """Each epoch's dev loss, in order, instead of the measured one (the rest measured)."""
    dev_losses = iter(losses)
    measured = recipe.split_metrics

    def scripted(*args: Any) -> dict[str, float]:
        out = measured(*args)
        if M.loss_key("dev") in out:
            out[M.loss_key("dev")] = next(dev_losses)
        return out

    monkeypatch.setattr(recipe, "split_metrics", scripted)


def test_patience_stops_training_when_dev_loss_stops_improving(
    encoded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _script_dev_losses(monkeypatch, [1.0, 0.5, 0.7, 0.6, 0.1, 0.1])  # best 2, then 2 worse
    session = _session(tmp_path)
    final = fit(_config(epochs=6, patience=2, util_docs=0, max_steps_per_epoch=1), encoded,
                session)
    assert final[M.TRIAL_STOP_REASON] == STOP_PATIENCE
    assert (final[M.EPOCH], final[M.TRIAL_BEST_EPOCH]) == (4, 2)
    assert final[M.loss_key("dev")] == 0.5  # the best epoch's dev metrics


def test_non_finite_loss_stops_the_trial_with_a_clear_reason(
    encoded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hiersearch.model.classifier import LayerwiseClassifier

    monkeypatch.setattr(LayerwiseClassifier, "loss", lambda self, logits, labels:
                        logits.sum() * torch.tensor(float("nan")))
    session = _session(tmp_path)
    final = fit(_config(), encoded, session)
    assert final[M.TRIAL_STOP_REASON] == STOP_NAN
    assert session.reports[-1][M.TRIAL_STOP_REASON] == STOP_NAN
    assert session.checkpoints == []


def test_every_report_carries_the_timings_and_peak_memory_a_search_may_optimize(
    encoded: str, tmp_path: Path
) -> None:
    session = _session(tmp_path)
    final = fit(_config(epochs=2, util_docs=0), encoded, session)
    per_epoch = (M.EPOCH_SECONDS, M.PEAK_MEMORY_MB, M.eval_seconds_key("dev"))
    for report in session.reports[:-1]:
        assert all(math.isfinite(report[k]) and report[k] > 0 for k in per_epoch), report
    # the final report is the one a search algorithm scores a trial by
    for key in (*per_epoch, M.eval_seconds_key("test")):
        assert math.isfinite(final[key]) and final[key] > 0, key


def test_learning_rate_warms_up_from_zero_then_decays_to_zero(
    encoded: str, tmp_path: Path
) -> None:
    recipe = TrialRecipe(_config(epochs=2, warmup_ratio=0.5), _session(tmp_path))
    recipe.setup(encoded)
    total = 2 * recipe.steps_per_epoch
    rates = []
    for _ in range(total + 1):
        rates.append(recipe.scheduler.get_last_lr()[0])
        recipe.optimizer.step()
        recipe.scheduler.step()
    warmup = total // 2
    assert rates[0] == 0.0 and rates[warmup] == pytest.approx(1e-3) and rates[total] == 0.0
    assert rates[1] == pytest.approx(1e-3 / warmup)


def test_heads_train_at_head_lr_and_the_encoder_at_lr(encoded: str, tmp_path: Path) -> None:
    session = _session(tmp_path)
    fit(_config(epochs=1, util_docs=0, lr=1e-4, head_lr=1e-2, warmup_ratio=0.0), encoded,
        session)
    saved = torch.load(session.checkpoints[0] / "train_state.pt", weights_only=False)
    encoder_group, head_group = saved["optimizer"]["param_groups"]
    assert (encoder_group["initial_lr"], head_group["initial_lr"]) == (1e-4, 1e-2)
    # the heads' group holds exactly the heads' tensors: weight and bias of each of 3 levels
    assert len(head_group["params"]) == 6
    with pytest.raises(ValueError, match="head_lr"):
        _config(head_lr=0.0)


def test_frozen_layers_are_not_in_the_optimizer_and_stay_as_initialized(
    encoded: str, tmp_path: Path
) -> None:
    config = _config(epochs=1, util_docs=0, freeze_layers=3, max_steps_per_epoch=2)
    recipe = TrialRecipe(config, _session(tmp_path / "setup"))
    recipe.setup(encoded)
    core = recipe.core
    frozen = [core.encoder.embeddings, *list(core.encoder.encoder.layer)[:3]]
    frozen_ids = {id(p) for module in frozen for p in module.parameters()}
    optimized = {id(p) for group in recipe.optimizer.param_groups for p in group["params"]}
    assert frozen_ids and not frozen_ids & optimized
    assert optimized == {id(p) for p in core.parameters() if p.requires_grad}

    initial = {k: v.clone() for k, v in core.state_dict().items()}
    session = _session(tmp_path / "fit")
    fit(config, encoded, session)
    trained = _weights(session.checkpoints[0])
    below = ("encoder.embeddings.", *(f"encoder.encoder.layer.{i}." for i in range(3)))
    for key, value in trained.items():
        if key.startswith(below):
            assert torch.equal(value, initial[key]), key
    assert not torch.equal(trained["encoder.encoder.layer.3.output.dense.weight"],
                           initial["encoder.encoder.layer.3.output.dense.weight"])


def test_head_options_are_in_the_checkpoints_config(encoded: str, tmp_path: Path) -> None:
    session = _session(tmp_path)
    fit(_config(epochs=1, util_docs=0, max_steps_per_epoch=1, **HEAD_OPTIONS), encoded, session)
    saved = json.loads((session.checkpoints[0] / "config.json").read_text())
    assert {key: saved[key] for key in HEAD_OPTIONS} == HEAD_OPTIONS



def test_test_metrics_come_from_the_best_epochs_weights_when_a_later_epoch_is_worse(
    encoded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _script_dev_losses(monkeypatch, [0.5, 0.9])  # epoch 1 best, epoch 2 worse
    session = _session(tmp_path)
    final = fit(_config(epochs=2, patience=5, util_docs=0, max_steps_per_epoch=2), encoded,
                session)
    assert final[M.TRIAL_BEST_EPOCH] == 1
    epoch1, epoch2, last = (_weights(c) for c in session.checkpoints)
    assert any(not torch.equal(epoch1[k], epoch2[k]) for k in epoch1)
    assert all(torch.equal(last[k], epoch1[k]) for k in epoch1)


def _f1_keys(split: str, levels: int = 3) -> list[str]:
    named = (M.f1_micro_key, M.f1_macro_key)
    per_level = [key(split, n) for n in range(1, levels + 1) for key in named]
    return [*per_level, M.f1_micro_key(split), M.f1_macro_key(split)]


def test_every_dev_report_carries_f1_at_thresholds_tuned_on_dev(
    encoded: str, tmp_path: Path
) -> None:
    session = _session(tmp_path)
    fit(_config(epochs=1, util_docs=0, max_steps_per_epoch=2), encoded, session)
    report = session.reports[0]
    assert all(0.0 <= report[k] <= 1.0 for k in _f1_keys("dev")), report
    thresholds = [report[M.f1_threshold_key("dev", n)] for n in (1, 2, 3)]
    assert all(0.0 < t <= 1.0 for t in thresholds)


def test_final_f1_is_the_best_epochs_on_dev_and_at_its_dev_thresholds_on_test(
    encoded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib

    _script_dev_losses(monkeypatch, [0.5, 0.9])  # epoch 1 best, epoch 2 worse
    config = _config(epochs=2, patience=5, util_docs=0, max_steps_per_epoch=2)
    session = _session(tmp_path)
    final = fit(config, encoded, session)
    epoch1, epoch2 = session.reports[:2]
    keys = [M.f1_threshold_key("dev", n) for n in (1, 2, 3)]
    assert [epoch1[k] for k in keys] != [epoch2[k] for k in keys]  # else the test proves nothing
    assert all(final[k] == epoch1[k] for k in [*keys, *_f1_keys("dev")])
    # test F1 recomputed from the final checkpoint's weights at epoch 1's thresholds
    again = TrialRecipe(config, _session(tmp_path / "again"))
    again.setup(encoded)
    again.core.load_state_dict(_weights(session.checkpoints[-1]))
    scored = evaluation.evaluate_split(again.core, again.test, again.num_labels, again.session, 16,
                                   contextlib.nullcontext)
    expected = evaluation.split_metrics(scored, again.core.level_slices, "test",
                                    [epoch1[k] for k in keys])
    assert all(final[k] == expected[k] for k in _f1_keys("test")), final


def test_the_final_report_carries_the_models_inference_cost(encoded: str, tmp_path: Path) -> None:
    # the top head reads layer 7 of 12: the model runs 7 layers, as an exported one would
    config = _config(assignment="L1:3|L2:5|L3:7", epochs=1, util_docs=0)
    session = _session(tmp_path)
    final = fit(config, encoded, session)
    assert final[M.COST_ENCODER_LAYERS] == 7
    # the layers in every epoch's report too (a scheduler stops trials on them), the forward
    # time only in the final one
    assert [r.get(M.COST_ENCODER_LAYERS) for r in session.reports] == [7, 7]
    assert [M.COST_FORWARD_MS in r for r in session.reports] == [False, True]
    assert final[M.COST_FORWARD_MS] > 0
    flat = fit(_config(epochs=1, util_docs=0, assignment="FLAT"), encoded, _session(tmp_path))
    assert flat[M.COST_ENCODER_LAYERS] == 12


def test_in_epoch_reports_names_the_metrics_an_epoch_report_carries(
    encoded: str, tmp_path: Path
) -> None:
    session = _session(tmp_path)
    fit(_config(epochs=1, util_docs=2), encoded, session)
    epoch, final = session.reports
    assert all(M.in_epoch_reports(k) for k in epoch if M.is_metric_key(k))
    late = {k for k in final if M.is_metric_key(k) and k not in epoch}
    assert late and not any(M.in_epoch_reports(k) for k in late), late


def test_forward_cost_times_the_documents_asked_for_and_leaves_the_mode_alone(
    encoded: str,
) -> None:
    import contextlib

    from hiersearch.data.encode import Split, load_encoded
    from hiersearch.model.assignment import LayerAssignment
    from hiersearch.model.classifier import LayerwiseClassifier
    from hiersearch.model.encoder import load_encoder

    data = load_encoded(encoded)
    dev = Split.from_table(data.splits["dev"])
    core = LayerwiseClassifier(
        load_encoder("tiny:4x32"), LayerAssignment.from_string("L1:1|L2:2|L3:2"),
        data.label_counts,
    )
    core.train()
    for docs in (0, 5):
        cost = evaluation.forward_cost(core, dev, data.num_labels, torch.device("cpu"), 4,
                                   contextlib.nullcontext, docs=docs)
        assert cost[M.COST_ENCODER_LAYERS] == 2
        assert math.isnan(cost[M.COST_FORWARD_MS]) if docs == 0 else cost[M.COST_FORWARD_MS] > 0
    assert core.training
