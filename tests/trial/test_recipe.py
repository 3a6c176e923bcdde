"""The trial loop in-process (no Ray): reports, checkpoints, resume, early stopping, NaN."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from hiersearch.data.encode import encode
from hiersearch.data.synth import SynthConfig, synthesize
from hiersearch.data.vocabularies import eurovoc_hierarchy
from hiersearch.metrics import ranking as M
from hiersearch.model.encoder import tokenizer_path
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.recipe import (
    STOP_COMPLETED,
    STOP_NAN,
    STOP_PATIENCE,
    Artifacts,
    LocalSession,
    _shard,
    fit,
)


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


def test_same_seed_gives_the_same_dev_metrics(encoded: str, tmp_path: Path) -> None:
    config = _config(epochs=1, util_docs=0)
    a = fit(config, encoded, _session(tmp_path / "a"))
    b = fit(config, encoded, _session(tmp_path / "b"))
    keys = [k for k in a if k.startswith("dev/")]
    assert keys and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in keys)


def test_resume_continues_from_the_last_checkpoint(encoded: str, tmp_path: Path) -> None:
    full = _session(tmp_path / "full")
    fit(_config(epochs=2, util_docs=0), encoded, full)
    interrupted = _session(tmp_path / "part")
    fit(_config(epochs=1, util_docs=0), encoded, interrupted)
    interrupted.reports.clear()
    interrupted.checkpoints[:] = interrupted.checkpoints[:1]  # the epoch-1 checkpoint
    resumed = fit(_config(epochs=2, util_docs=0), encoded, interrupted)
    assert [r[M.EPOCH] for r in interrupted.reports] == [2, 2]
    assert resumed[M.EPOCH] == 2


def test_patience_stops_training_when_dev_loss_stops_improving(
    encoded: str, tmp_path: Path
) -> None:
    session = _session(tmp_path)
    final = fit(_config(epochs=6, patience=1, lr=0.5, util_docs=0), encoded, session)
    assert final[M.TRIAL_STOP_REASON] == STOP_PATIENCE
    assert final[M.EPOCH] < 6
    assert final[M.TRIAL_BEST_EPOCH] == final[M.EPOCH] - 1


def test_non_finite_loss_stops_the_trial_with_a_clear_reason(
    encoded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from hiersearch.model.classifier import LayerwiseClassifier

    monkeypatch.setattr(LayerwiseClassifier, "loss", lambda self, logits, labels:
                        logits.sum() * torch.tensor(float("nan")))
    session = _session(tmp_path)
    final = fit(_config(), encoded, session)
    assert final[M.TRIAL_STOP_REASON] == STOP_NAN
    assert session.reports[-1][M.TRIAL_STOP_REASON] == STOP_NAN
    assert session.checkpoints == []


def test_shards_cover_every_document_with_equal_steps_per_rank() -> None:
    shards = [_shard(10, rank, 3, seed=0, epoch=1) for rank in range(3)]
    assert {len(s) for s in shards} == {4}
    assert set(np.concatenate(shards)) == set(range(10))
    assert not np.array_equal(_shard(10, 0, 3, 0, 1), _shard(10, 0, 3, 0, 2))


def test_heads_train_at_head_lr_and_the_encoder_at_lr(encoded: str, tmp_path: Path) -> None:
    import torch

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
