"""SMART regularization in the training step (`hiersearch.trial.smart`): in-process, no Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from hiersearch.errors import InputError
from hiersearch.trial.checkpoint import read_training
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.evaluation import model_inputs
from hiersearch.trial.recipe import TrialRecipe, fit
from hiersearch.trial.session import LocalSession
from hiersearch.trial.smart import symmetric_kl

SMART = {"smart_weight": 1.0, "smart_steps": 2, "smart_step_size": 0.05, "smart_eps": 0.05}


def _config(**changes: object) -> TrialConfig:
    base = TrialConfig(
        model="tiny:3x32", assignment="LAST-THREE", epochs=1, batch_size=8, lr=1e-3,
        max_length=32, util_docs=0, eval_batch_size=16, max_steps_per_epoch=2,
        pooling="mean", head_norm="batchnorm",
    )
    return base.replace(**changes)


def _recipe(config: TrialConfig, encoded: str, tmp_path: Path) -> TrialRecipe:
    (tmp_path / "ckpt").mkdir(parents=True, exist_ok=True)
    recipe = TrialRecipe(config, LocalSession(checkpoint_root=tmp_path / "ckpt"))
    recipe.setup(encoded)
    return recipe


def _batch(recipe: TrialRecipe) -> dict[str, Any]:
    source = recipe.sources["train"]
    return source.batch(torch.arange(8).numpy(), recipe.num_labels)


def test_symmetric_kl_is_both_bernoulli_kls_summed_per_label(
    encoded: str, tmp_path: Path
) -> None:
    core = _recipe(_config(), encoded, tmp_path).core
    a, b = torch.randn(4, sum(core.label_counts)), torch.randn(4, sum(core.label_counts))
    p, q = torch.sigmoid(a), torch.sigmoid(b)
    both = p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()
    both = both + q * (q / p).log() + (1 - q) * ((1 - q) / (1 - p)).log()
    assert symmetric_kl(core, a, b).item() == pytest.approx(core.level_mean(both).mean().item())
    assert symmetric_kl(core, a, a).item() == 0.0


def test_with_smart_off_a_trial_is_bit_identical_to_one_without(
    encoded: str, tmp_path: Path
) -> None:
    plain = LocalSession(checkpoint_root=_dir(tmp_path / "plain"))
    fit(_config(), encoded, plain)
    # every SMART setting but the weights: no term, so nothing may change
    off = LocalSession(checkpoint_root=_dir(tmp_path / "off"))
    fit(_config(**{**SMART, "smart_weight": 0.0}, smart_momentum=0.5), encoded, off)
    mine, theirs = _state(off.checkpoints[-1]), _state(plain.checkpoints[-1])
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def _dir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _state(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint / "model.pt")


@pytest.mark.parametrize("freeze", [0, 1], ids=["embeddings", "cached-states"])
def test_the_adversarial_term_is_positive_and_its_gradient_reaches_the_trained_layers(
    encoded: str, tmp_path: Path, freeze: int
) -> None:
    recipe = _recipe(_config(freeze_layers=freeze, **SMART), encoded, tmp_path)
    assert recipe.smart is not None
    batch = _batch(recipe)
    inputs = model_inputs(batch)
    assert (inputs["hidden"] is not None) == (freeze > 0)  # the feature cache's states
    core = recipe.core
    core.train()
    logits = core(**inputs)
    statistics = [b.clone() for b in core.norms.buffers()]
    term = recipe.smart.adversarial(core, inputs, logits)
    assert term.item() > 0
    # the perturbed forwards leave the running statistics as the clean one left them
    assert all(torch.equal(a, b) for a, b in zip(statistics, core.norms.buffers(), strict=True))
    term.backward()
    trained = core.encoder.encoder.layer[freeze].attention.self.query.weight
    assert trained.grad is not None and trained.grad.abs().sum() > 0
    assert core.heads[0].weight.grad.abs().sum() > 0


def test_uncached_frozen_layers_are_perturbed_at_the_top_frozen_layers_output(
    encoded: str, tmp_path: Path
) -> None:
    config = _config(freeze_layers=1, feature_cache=False, **SMART)
    recipe = _recipe(config, encoded, tmp_path)
    inputs = model_inputs(_batch(recipe))
    assert inputs["hidden"] is None
    core = recipe.core
    logits = core(**inputs)
    term = recipe.smart.adversarial(core, inputs, logits)
    term.backward()
    assert term.item() > 0 and core.encoder.encoder.layer[0].output.dense.weight.grad is None
    assert core.encoder.encoder.layer[1].output.dense.weight.grad.abs().sum() > 0


def test_a_smart_trial_trains_on_cached_states_and_keeps_its_anchor_in_checkpoints(
    encoded: str, tmp_path: Path
) -> None:
    config = _config(freeze_layers=1, smart_bregman_weight=1.0, epochs=2, **SMART)
    session = LocalSession(checkpoint_root=_dir(tmp_path / "smart"))
    final = fit(config, encoded, session)
    assert final["trial/stop_reason"] == "completed"
    anchor = read_training(session.checkpoints[0]).smart_anchor
    weights = _state(session.checkpoints[0])
    assert anchor is not None and "encoder.encoder.layer.1.output.dense.weight" in anchor
    assert "encoder.encoder.layer.0.output.dense.weight" not in anchor  # frozen: no average
    key = "heads.0.weight"
    assert anchor[key].shape == weights[key].shape and not torch.equal(anchor[key], weights[key])
    plain = LocalSession(checkpoint_root=_dir(tmp_path / "plain"))
    fit(_config(freeze_layers=1, epochs=2), encoded, plain)
    assert not torch.equal(_state(plain.checkpoints[0])[key], weights[key])


def test_the_anchor_moves_toward_the_weights_by_its_momentum(
    encoded: str, tmp_path: Path
) -> None:
    config = _config(freeze_layers=1, smart_bregman_weight=1.0, smart_momentum=0.9)
    recipe = _recipe(config, encoded, tmp_path)
    smart, core = recipe.smart, recipe.core
    before = smart.anchor["heads.0.weight"].clone()
    with torch.no_grad():
        core.heads[0].weight.add_(1.0)
    smart.step(core)
    expected = 0.9 * before + 0.1 * core.heads[0].weight.detach()
    assert torch.allclose(smart.anchor["heads.0.weight"], expected)
    inputs = model_inputs(_batch(recipe))
    core.train()
    assert smart.penalty(core, inputs, core(**inputs)).item() > 0
    assert core.training  # the anchor's forward left the model in train mode


@pytest.mark.parametrize("term", ["smart_weight", "smart_bregman_weight"])
def test_smart_on_a_head_only_trial_is_refused_naming_the_key(
    encoded: str, tmp_path: Path, term: str
) -> None:
    with pytest.raises(InputError, match="a head-only trial trains no encoder layer") as err:
        _config(freeze_layers="all", **{term: 1.0})
    assert err.value.where == term
    # LAST-THREE reads layers 1-3: freezing all three makes it head-only too
    with pytest.raises(InputError, match="a head-only trial") as err:
        _recipe(_config(freeze_layers=3, **{term: 1.0}), encoded, tmp_path)
    assert err.value.where == term


@pytest.mark.parametrize(
    ("key", "value"),
    [("smart_weight", -1.0), ("smart_steps", 0), ("smart_step_size", 0.0), ("smart_eps", 0.0),
     ("smart_bregman_weight", -0.5), ("smart_momentum", 1.0)],
)
def test_bad_smart_values_are_refused_naming_the_key(key: str, value: float) -> None:
    with pytest.raises(InputError) as err:
        _config(**{key: value})
    assert err.value.where == key
