"""Trials that start from another trial's trained heads (`init_heads_from`,
`hiersearch.trial.warm_start`): in-process, no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hiersearch import metrics as M
from hiersearch.errors import InputError
from hiersearch.trial.checkpoint import read_weights
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.recipe import TrialRecipe, fit
from hiersearch.trial.session import LocalSession


def _config(**changes: object) -> TrialConfig:
    """A fine-tune of the top layer of a 3-layer tiny encoder, the `hpo` heads' options."""
    base = TrialConfig(
        model="tiny:3x32", assignment="FLAT", epochs=1, batch_size=8, lr=1e-3, head_lr=3e-2,
        max_length=32, util_docs=0, eval_batch_size=16, pooling="mean", head_norm="batchnorm",
        freeze_layers=2,
    )
    return base.replace(**changes)


@pytest.fixture(scope="module")
def screened(encoded: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The final checkpoint of a head-only trial (a screen trial) of `_config`'s heads."""
    root = tmp_path_factory.mktemp("screen")
    session = LocalSession(checkpoint_root=root)
    fit(_config(freeze_layers="all", epochs=2, seed=7), encoded, session)
    return session.checkpoints[-1]


def _heads(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(("heads.", "norms."))}


def _set_up(config: TrialConfig, encoded: str, tmp_path: Path) -> TrialRecipe:
    (tmp_path / "ckpt").mkdir(parents=True, exist_ok=True)
    recipe = TrialRecipe(config, LocalSession(checkpoint_root=tmp_path / "ckpt"))
    recipe.setup(encoded)
    return recipe


def test_a_warm_started_trial_starts_from_the_screen_trials_final_heads(
    encoded: str, screened: Path, tmp_path: Path
) -> None:
    recipe = _set_up(_config(init_heads_from=str(screened)), encoded, tmp_path)
    trained = _heads(read_weights(screened))
    mine = _heads(recipe.core.state_dict())
    assert set(mine) == set(trained) and any(k.endswith("running_mean") for k in mine)
    assert all(torch.equal(mine[k], trained[k]) for k in trained)
    assert recipe.warm_heads and recipe.identity[M.TRIAL_WARM_START] == "yes"


def test_without_init_heads_from_the_heads_are_new(
    encoded: str, screened: Path, tmp_path: Path
) -> None:
    fresh = _set_up(_config(), encoded, tmp_path / "fresh")
    again = _set_up(_config(), encoded, tmp_path / "again")
    trained = _heads(read_weights(screened))
    mine = _heads(fresh.core.state_dict())
    assert all(torch.equal(v, _heads(again.core.state_dict())[k]) for k, v in mine.items())
    assert not torch.equal(mine["heads.0.weight"], trained["heads.0.weight"])
    assert not fresh.warm_heads and M.TRIAL_WARM_START not in fresh.identity


def test_trained_heads_move_at_warm_head_lr_and_new_heads_at_head_lr(
    encoded: str, screened: Path, tmp_path: Path
) -> None:
    def rates(config: TrialConfig, where: str) -> list[float]:
        recipe = _set_up(config, encoded, tmp_path / where)
        return [group["initial_lr"] for group in recipe.optimizer.param_groups]

    assert rates(_config(), "new") == [1e-3, 3e-2]
    warm = _config(init_heads_from=str(screened))
    assert rates(warm, "lr") == [1e-3, 1e-3]  # null: the encoder's rate, as LP-FT
    assert rates(warm.replace(warm_head_lr=1e-4), "own") == [1e-3, 1e-4]


def test_heads_of_other_options_start_new_and_the_reports_say_why(
    encoded: str, screened: Path, tmp_path: Path
) -> None:
    config = _config(init_heads_from=str(screened), head_hidden=16)
    session = LocalSession(checkpoint_root=tmp_path)
    final = fit(config.replace(max_steps_per_epoch=1), encoded, session)
    why = "no: head_hidden 16 here, null in the trained heads' trial"
    assert final[M.TRIAL_WARM_START] == why
    assert all(report[M.TRIAL_WARM_START] == why for report in session.reports)
    other = _set_up(_config(init_heads_from=str(screened), assignment="LAST-THREE"),
                    encoded, tmp_path / "assignment")
    assert other.identity[M.TRIAL_WARM_START].startswith("no: assignment LAST-THREE here, FLAT")
    assert other.optimizer.param_groups[1]["initial_lr"] == 3e-2  # new heads: head_lr


def test_a_checkpoint_that_is_not_there_is_named(encoded: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(InputError, match="not a trial's checkpoint") as err:
        _set_up(_config(init_heads_from=str(missing)), encoded, tmp_path)
    assert err.value.where == str(missing / "config.json")
