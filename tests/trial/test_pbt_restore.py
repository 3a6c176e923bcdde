"""A PBT exploit through the recipe's own restore: another trial's checkpoint restored whole
(weights, optimizer, schedule, RNG, best-epoch bookkeeping), the recipient's own mutated
rates applied over it, and the exploit in every report after it (`pbt/*`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from hiersearch import metrics as M
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.recipe import TrialRecipe, fit
from hiersearch.trial.session import LocalSession


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> str:
    from hiersearch.data.encode import encode
    from hiersearch.data.synth import SynthConfig, synthesize
    from hiersearch.data.vocabularies import eurovoc_hierarchy
    from hiersearch.model.encoder import tokenizer_path

    root = tmp_path_factory.mktemp("pbt")
    corpus = synthesize(eurovoc_hierarchy(), SynthConfig(docs=60, seed=1, max_leaves=12))
    return str(encode(corpus, tokenizer_path("minilm"), 32, root / "cache").path)


def _config(**changes: Any) -> TrialConfig:
    values = {"model": "tiny:12x32", "assignment": "L1:4|L2:8|L3:12", "epochs": 3,
              "batch_size": 8, "max_length": 32, "util_docs": 0, "max_steps_per_epoch": 2,
              "lr": 1e-3, "head_lr": 1e-2, "weight_decay": 0.0, "patience": 5}
    return TrialConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def donor(encoded: str, tmp_path_factory: pytest.TempPathFactory) -> LocalSession:
    """Trial "donor", trained to its end: its epoch checkpoints are what others exploit."""
    root = tmp_path_factory.mktemp("donor")
    session = LocalSession(checkpoint_root=root)
    fit(_config(), encoded, session, trial_id="donor", pbt=True)
    return session


def _recipient(
    encoded: str, root: Path, checkpoint: Path, trial_id: str = "recipient", **changes: Any
) -> TrialRecipe:
    root.mkdir(parents=True, exist_ok=True)
    session = LocalSession(checkpoint_root=root, checkpoints=[checkpoint])
    recipe = TrialRecipe(_config(**changes), session, trial_id=trial_id, pbt=True)
    recipe.setup(encoded)
    assert recipe.restore() is None  # an epoch checkpoint: training goes on
    return recipe


def test_an_exploit_copies_the_donors_weights_optimizer_and_bookkeeping_exactly(
    encoded: str, donor: LocalSession, tmp_path: Path
) -> None:
    first_epoch = donor.checkpoints[0]
    recipe = _recipient(encoded, tmp_path, first_epoch, lr=3e-4, head_lr=5e-2,
                        weight_decay=0.01, dropout=0.3)
    weights = torch.load(first_epoch / "model.pt")
    mine = recipe.core.state_dict()
    assert weights.keys() == mine.keys()
    assert all(torch.equal(weights[k], mine[k]) for k in weights)
    saved = torch.load(first_epoch / "train_state.pt", weights_only=False)
    moments = [s["exp_avg"] for s in saved["optimizer"]["state"].values()]
    restored = [s["exp_avg"] for s in recipe.optimizer.state_dict()["state"].values()]
    assert len(moments) == len(restored) > 0
    assert all(torch.equal(a, b) for a, b in zip(moments, restored, strict=True))
    assert recipe.scheduler.last_epoch == saved["scheduler"]["last_epoch"] == 2
    assert recipe.state.epoch == 1 and recipe.state.best_epoch == saved["state"]["best_epoch"]
    assert recipe.state.exploits == [{"donor": "donor", "epoch": 1}]


def test_an_exploit_trains_on_at_the_recipients_mutated_rates(
    encoded: str, donor: LocalSession, tmp_path: Path
) -> None:
    recipe = _recipient(encoded, tmp_path, donor.checkpoints[0], lr=3e-4, head_lr=5e-2,
                        weight_decay=0.01)
    step = recipe.scheduler.last_epoch
    factor = recipe.scheduler.lr_lambdas[0](step)
    encoder_group, head_group = recipe.optimizer.param_groups
    assert encoder_group["lr"] == pytest.approx(3e-4 * factor)
    assert head_group["lr"] == pytest.approx(5e-2 * factor)
    assert encoder_group["weight_decay"] == head_group["weight_decay"] == 0.01
    recipe.train()
    reports = recipe.session.reports
    assert [r[M.EPOCH] for r in reports] == [2, 3, 3]  # epochs 2 and 3, then the final report
    assert all(r[M.PBT_EXPLOITS] == 1 and r[M.PBT_DONOR] == "donor" for r in reports)
    assert all(r[M.PBT_DONOR_EPOCH] == 1 and r[M.PBT_LINEAGE] == "donor@1" for r in reports)
    # the schedule went on from the donor's step, at the recipient's rates
    assert reports[0][M.LEARNING_RATE] == pytest.approx(
        3e-4 * recipe.scheduler.lr_lambdas[0](step + 2), rel=1e-6
    )


def test_a_trials_own_checkpoint_is_no_exploit_and_changes_no_rate(
    encoded: str, donor: LocalSession, tmp_path: Path
) -> None:
    session = LocalSession(checkpoint_root=tmp_path, checkpoints=[donor.checkpoints[1]])
    recipe = TrialRecipe(_config(), session, trial_id="donor", pbt=True)
    recipe.setup(encoded)
    recipe.restore()
    saved = torch.load(donor.checkpoints[1] / "train_state.pt", weights_only=False)
    assert recipe.state.exploits == []
    assert [g["lr"] for g in recipe.optimizer.param_groups] == [
        g["lr"] for g in saved["optimizer"]["param_groups"]
    ]
    assert donor.reports[0][M.PBT_EXPLOITS] == 0 and M.PBT_DONOR not in donor.reports[0]


def test_a_recipient_inherits_its_donors_lineage(
    encoded: str, donor: LocalSession, tmp_path: Path
) -> None:
    first = _recipient(encoded, tmp_path / "a", donor.checkpoints[0])
    first.train()
    second = _recipient(encoded, tmp_path / "b", first.session.checkpoints[1], "third")
    assert second.state.exploits == [
        {"donor": "donor", "epoch": 1},
        {"donor": "recipient", "epoch": 2},
    ]


def test_a_trials_own_exploits_outlive_the_lineage_its_next_donor_brings(
    encoded: str, donor: LocalSession, tmp_path: Path
) -> None:
    """Exploiting twice: the second donor's checkpoint carries the second donor's lineage
    only; the trial's own count and last donor come from its artifacts."""
    from hiersearch.trial.session import PBT_EXPLOITS_FILE, Artifacts

    target = tmp_path / "artifacts"
    for attempt, checkpoint in enumerate(donor.checkpoints[:2], 1):
        root = tmp_path / f"run{attempt}"
        root.mkdir()
        session = LocalSession(checkpoint_root=root, checkpoints=[checkpoint])
        recipe = TrialRecipe(_config(), session, Artifacts(str(target)), trial_id="r", pbt=True)
        recipe.setup(encoded)
        recipe.restore()
    report = recipe._pbt_metrics()
    assert report[M.PBT_EXPLOITS] == 2 and report[M.PBT_DONOR_EPOCH] == 2
    assert report[M.PBT_LINEAGE] == "donor@2"  # the weights' own history
    saved = json.loads((target / PBT_EXPLOITS_FILE).read_text())
    assert saved == [{"donor": "donor", "epoch": 1}, {"donor": "donor", "epoch": 2}]


def test_without_pbt_no_report_carries_pbt_keys(encoded: str, tmp_path: Path) -> None:
    session = LocalSession(checkpoint_root=tmp_path)
    fit(_config(epochs=1), encoded, session, trial_id="t")
    assert not any(key.startswith("pbt/") for report in session.reports for key in report)
