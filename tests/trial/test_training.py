"""The parts of a training step (`trial/training.py`): fused AdamW on the CPU, and the clip that
leaves gradients within the norm as they are."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import torch

from hiersearch.data.encode import encode
from hiersearch.data.synth import SynthConfig, synthesize
from hiersearch.data.vocabularies import eurovoc_hierarchy
from hiersearch.model.encoder import tokenizer_path
from hiersearch.trial import training
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.recipe import TrialRecipe
from hiersearch.trial.session import LocalSession


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> str:
    corpus = synthesize(eurovoc_hierarchy(), SynthConfig(docs=60, seed=1, max_leaves=12))
    cache = tmp_path_factory.mktemp("cache")
    return str(encode(corpus, tokenizer_path("minilm"), 48, cache).path)


def _head_only(encoded: str, tmp_path: Path, **changes: object) -> TrialRecipe:
    config = TrialConfig(
        model="tiny:4x32", assignment="LAST-THREE", freeze_layers="all", batch_size=8,
        head_lr=3e-2, pooling="mean", head_norm="batchnorm", util_docs=0, epochs=1,
    ).replace(**changes)
    recipe = TrialRecipe(config, LocalSession(checkpoint_root=tmp_path))
    recipe.setup(encoded)
    return recipe


def _grads(seed: int, scale: float) -> list[torch.nn.Parameter]:
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(50, 20)), torch.nn.Parameter(torch.randn(20))]
    for p in params:
        p.grad = torch.randn_like(p) * scale
    return params


def test_a_head_only_trial_on_the_cpu_steps_with_fused_adamw(
    encoded: str, tmp_path: Path
) -> None:
    recipe = _head_only(encoded, tmp_path)
    assert recipe.optimizer.defaults["fused"] is True
    assert all(group["fused"] for group in recipe.optimizer.param_groups)


def test_fused_adamw_ends_a_head_only_epoch_on_the_for_loop_adamws_weights(
    encoded: str, tmp_path: Path
) -> None:
    fused = _head_only(encoded, tmp_path / "fused")
    with mock.patch.object(training, "FUSED_DEVICES", ()):
        loop = _head_only(encoded, tmp_path / "loop")
    assert not loop.optimizer.defaults["fused"]
    before = {k: v.clone() for k, v in fused.core.heads.state_dict().items()}
    for recipe in (fused, loop):
        torch.manual_seed(7)  # the same dropout masks in both
        trained = recipe.train_epoch(0)
        assert trained.finite and trained.batches >= 5
    after_fused, after_loop = fused.core.heads.state_dict(), loop.core.heads.state_dict()
    for key, value in after_fused.items():
        assert not torch.equal(value, before[key]), key  # the heads did train
        torch.testing.assert_close(value, after_loop[key], rtol=1e-5, atol=1e-6)


def test_the_clip_of_a_head_only_trial_reads_the_heads_parameters_only(
    encoded: str, tmp_path: Path
) -> None:
    recipe = _head_only(encoded, tmp_path)
    heads = {id(p) for p in recipe.core.heads.parameters()}
    assert {id(p) for p in recipe.trained} == heads


@pytest.mark.parametrize("scale", [1e-3, 10.0])
def test_clip_gradients_gives_clip_grad_norms_norm_and_gradients(scale: float) -> None:
    ours, torchs = _grads(0, scale), _grads(0, scale)
    norm = training.clip_gradients(ours, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(torchs, 1.0)
    assert torch.equal(norm, expected)
    for a, b in zip(ours, torchs, strict=True):
        assert a.grad is not None and b.grad is not None
        assert torch.equal(a.grad, b.grad)
    assert (norm > 1.0) == (scale == 10.0)


def test_a_step_within_the_norm_leaves_its_gradients_untouched() -> None:
    params = _grads(1, 1e-3)
    versions = [p.grad._version for p in params if p.grad is not None]
    training.clip_gradients(params, 1.0)
    assert [p.grad._version for p in params if p.grad is not None] == versions


def test_a_step_over_the_norm_is_scaled_to_it() -> None:
    params = _grads(2, 10.0)
    training.clip_gradients(params, 1.0)
    grads = [p.grad for p in params if p.grad is not None]
    assert float(torch.nn.utils.get_total_norm(grads)) == pytest.approx(1.0, rel=1e-5)
