"""Population-based training (`tune.scheduler: pbt`, `hiersearch.search.pbt`): what it may
mutate, how its mutations stay in the space, how an exploit pins the donor's checkpoint, and
a PBT search end to end (interrupted and resumed) with a tiny model."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from hiersearch import metrics as M
from hiersearch.errors import InputError
from hiersearch.search.space import (
    PBT_MUTABLE,
    SHAPE_KEYS,
    load_space,
    parse_space,
    preset_path,
)

LR = {"type": "loguniform", "low": 1.0e-5, "high": 1.0e-3}


def _space(search: dict[str, Any], **tune: Any) -> Any:
    return parse_space(
        {"search": search, "tune": {"scheduler": "pbt", **tune}}, "pbt.yaml"
    )


@pytest.mark.parametrize("key", SHAPE_KEYS)
def test_a_shape_changing_search_key_is_refused_under_pbt_naming_it(key: str) -> None:
    raw = yaml.safe_load(preset_path("layerwise").read_text())  # searches pooling, head_norm
    choices = {"head_hidden": [None, 64], "pooling": ["mean", "cls_mean"],
               "head_norm": ["none", "layernorm"], "freeze_layers": [0, 2],
               "model": ["tiny:12x32"], "max_length": [32, 48]}[key]
    with pytest.raises(InputError, match="pbt") as err:
        _space({"lr": LR, key: {"type": "categorical", "choices": choices}})
    assert err.value.where == f"pbt.yaml: search: {key}"
    assert "shape" in err.value.message
    assert raw["search"]  # the preset itself searches shapes: fine without pbt
    parse_space(raw, "layerwise.yaml")


def test_pbt_with_nothing_to_mutate_or_several_metrics_is_refused() -> None:
    with pytest.raises(InputError, match="section is empty"):
        _space({})
    with pytest.raises(InputError, match="not a value|no value"):
        _space({"batch_size": {"type": "categorical", "choices": [8, 16]}})
    with pytest.raises(InputError, match="one metric"):
        _space({"lr": LR}, metric=["dev/rp_macro", "cost/encoder_layers"])
    with pytest.raises(InputError, match="quantile_fraction"):
        _space({"lr": LR}, pbt={"quantile_fraction": 0.75})


def test_every_mutable_key_is_accepted_with_its_settings() -> None:
    search = {
        "lr": LR,
        "head_lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1},
        "dropout": {"type": "uniform", "low": 0.0, "high": 0.3},
        "weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1},
        "warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.2},
        "max_grad_norm": {"type": "uniform", "low": 0.5, "high": 2.0},
        "loss_weighting": {"type": "categorical", "choices": ["proportional", "uniform"]},
    }
    assert set(search) == set(PBT_MUTABLE)
    space = _space(search, pbt={"perturbation_interval": 2, "burn_in_period": 0})
    assert space.tune.pbt.perturbation_interval == 2 and space.tune.pbt.burn_in_period == 0


def test_mutations_are_the_search_section_as_ray_domains_and_lists() -> None:
    from ray.tune.search.sample import Float

    from hiersearch.search.pbt import mutations

    out = mutations({
        "lr": LR,
        "dropout": {"type": "uniform", "low": 0.0, "high": 0.3},
        "loss_weighting": {"type": "categorical", "choices": ["proportional", "uniform"]},
        "max_grad_norm": {"type": "int", "low": 1, "high": 5, "step": 2},
    })
    assert isinstance(out["lr"], Float) and out["lr"].lower == 1e-5 and out["lr"].upper == 1e-3
    assert isinstance(out["dropout"], Float)
    assert out["loss_weighting"] == ["proportional", "uniform"]
    assert out["max_grad_norm"] == [1, 3, 5]


def test_a_perturbed_value_is_clipped_into_its_range() -> None:
    from hiersearch.search.pbt import _Clip

    clip = _Clip({"lr": LR, "loss_weighting": {"type": "categorical", "choices": ["uniform"]}})
    assert clip({"lr": 1.2e-3, "loss_weighting": "uniform"}) == {
        "lr": 1e-3, "loss_weighting": "uniform"
    }
    assert clip({"lr": 0.8e-5})["lr"] == 1e-5
    assert clip({"lr": 5e-4})["lr"] == 5e-4


def test_a_final_report_decides_nothing() -> None:
    from ray.tune.schedulers import TrialScheduler

    from hiersearch.search.pbt import PinnedPBT

    scheduler = PinnedPBT(_space({"lr": LR}).tune.pbt, {"lr": LR})
    final = {M.EPOCH: 3, "dev/rp_macro": 0.1, M.TRIAL_FINAL: 1}
    assert scheduler.on_trial_result(None, object(), final) == TrialScheduler.CONTINUE


def test_pbt_keeps_each_trials_newest_checkpoints_past_a_perturbation() -> None:
    from hiersearch.search.driver import checkpoint_policy

    space = _space({"lr": LR}, pbt={"perturbation_interval": 3})
    assert checkpoint_policy(space, space.base_config(keep_checkpoints=1)) == {"num_to_keep": 4}
    plain = parse_space({}, "plain.yaml")
    assert checkpoint_policy(plain, plain.base_config(keep_checkpoints=1)) == {
        "num_to_keep": 1,
        "checkpoint_score_attribute": "dev/loss",
        "checkpoint_score_order": "min",
    }


def test_an_exploit_pins_a_copy_of_the_donors_checkpoint_and_releases_the_last(
    tmp_path: Path,
) -> None:
    import pyarrow.fs
    from ray.tune import Checkpoint

    from hiersearch.search.pbt import DONOR_PREFIX, PinnedPBT

    scheduler = PinnedPBT(_space({"lr": LR}).tune.pbt, {"lr": LR})
    donor = tmp_path / "donor" / "checkpoint_000001"
    donor.mkdir(parents=True)
    (donor / "model.pt").write_bytes(b"weights")
    storage = SimpleNamespace(
        storage_filesystem=pyarrow.fs.LocalFileSystem(), trial_fs_path=str(tmp_path / "r")
    )
    recipient = SimpleNamespace(trial_id="r", storage=storage)
    first = scheduler._pin(recipient, Checkpoint(str(donor)))
    assert Path(first.path).name.startswith(DONOR_PREFIX)
    assert (Path(first.path) / "model.pt").read_bytes() == b"weights"
    scheduler._num_perturbations += 1
    second = scheduler._pin(recipient, Checkpoint(str(donor)))
    assert second.path != first.path and Path(second.path, "model.pt").exists()
    assert not Path(first.path).exists()  # nothing referred to the first copy any longer
    assert donor.exists()  # the donor's own checkpoint is Tune's to keep or delete


def test_the_population_is_the_fixed_points_then_the_samplers_draws() -> None:
    from hiersearch.search.driver import sampler
    from hiersearch.search.pbt import initial_population, member_params, population_space
    from hiersearch.search.space import MEMBER_PARAM, define_by_run, fixed_points

    space = load_space("pbt")
    counts = [22, 88, 285, 933]
    points = fixed_points(space, 6, counts)
    population = initial_population(
        define_by_run(space, 6, counts), points, 7, sampler(space.tune)
    )
    assert len(population) == 7
    assert [m["variant"] for m in population[:5]] == [p["variant"] for p in points]
    assert all(1e-2 <= m["head_lr"] <= 1e-1 for m in population)
    grid = population_space(population, space.search)
    assert grid[MEMBER_PARAM] == {"grid_search": list(range(7))}
    spec = SimpleNamespace(config={MEMBER_PARAM: 6})
    assert grid["dropout"].func(spec) == population[6]["dropout"]
    # a trial's parameters: its member's, under what PBT has since set
    params = member_params({MEMBER_PARAM: 6, "head_lr": 0.05}, population)
    assert params == {**population[6], "head_lr": 0.05}


def test_a_ddp_trial_offers_the_checkpoint_its_report_names(tmp_path: Path) -> None:
    """Tune holds no checkpoint of a Ray Train trial: the scheduler takes the one its report
    names (`checkpoint_path`), and an exploit pins a copy of it for the recipient."""
    import pyarrow.fs
    from ray.train._internal.session import _TrainingResult
    from ray.tune.schedulers.pbt import _PBTTrialState

    from hiersearch.search.pbt import DONOR_PREFIX, PinnedPBT

    scheduler = PinnedPBT(_space({"lr": LR}).tune.pbt, {"lr": LR})
    local = pyarrow.fs.LocalFileSystem()

    class Trial:  # what Ray's PBT reads and sets of a trial (hashable, unlike a namespace)
        def __init__(self, name: str) -> None:
            self.trial_id = self.experiment_tag = name
            self.storage = SimpleNamespace(
                storage_filesystem=local, trial_fs_path=str(tmp_path / name)
            )
            manager = SimpleNamespace(_latest_checkpoint_result=None)
            self.run_metadata = SimpleNamespace(checkpoint_manager=manager)
            self.config: dict[str, Any] = {"lr": 1e-4}
            self.status, self.last_result = "RUNNING", {}
            self.local_experiment_path = self.local_dir = str(tmp_path)

        def set_experiment_tag(self, tag: str) -> None:
            self.experiment_tag = tag

        def set_config(self, config: dict[str, Any]) -> None:
            self.config = config

    donor, recipient = Trial("donor"), Trial("recipient")
    ckpt = tmp_path / "donor" / "train_donor" / "checkpoint_2026"
    ckpt.mkdir(parents=True)
    (ckpt / "model.pt").write_bytes(b"donor weights")
    for t, path, score in ((donor, str(ckpt), 0.9), (recipient, "elsewhere", 0.1)):
        state = scheduler._trial_state[t] = _PBTTrialState(t)
        state.last_result, state.last_score = {"checkpoint_path": path, M.EPOCH: 2}, score
    controller = SimpleNamespace(pause_trial=lambda t, should_checkpoint: None)
    scheduler._checkpoint_or_exploit(donor, controller, [donor], [recipient])
    assert scheduler._trial_state[donor].last_checkpoint.path == str(ckpt)
    scheduler._checkpoint_or_exploit(recipient, controller, [donor], [recipient])
    latest = recipient.run_metadata.checkpoint_manager._latest_checkpoint_result
    assert isinstance(latest, _TrainingResult)
    pinned = Path(latest.checkpoint.path)
    assert pinned.parent == tmp_path / "recipient" and pinned.name.startswith(DONOR_PREFIX)
    assert (pinned / "model.pt").read_bytes() == b"donor weights"


def test_a_train_run_goes_on_from_a_donated_checkpoint_in_a_run_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray.train

    from hiersearch.search.driver import train_run_name
    from hiersearch.trial.session import RaySession

    donated = SimpleNamespace(path="/runs/pbt/trial_a/pbt_donor_0003")
    assert train_run_name("a") == "train_a"
    assert train_run_name("a", donated) == "train_a_pbt_donor_0003"
    session = RaySession.__new__(RaySession)
    session.donated = donated
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    assert session._latest() is donated  # a run with no checkpoint of its own
    own = object()
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: own)
    assert session._latest() is own  # a restarted run goes on from its own newest


# -- end to end, with Ray -----------------------------------------------------------------------
def _pbt_file(tmp_path: Path, workers: int = 1, epochs: int = 6) -> Path:
    """Smoke size: two trials of a tiny encoder, one with a head rate that barely learns;
    dev loss ranks them (no ties), one perturbation per epoch from the first. The lower trial
    exploits the upper one at its first report after the upper one offered a checkpoint: with
    both running side by side, within two or three epochs of a start or resume."""
    smoke = yaml.safe_load(preset_path("smoke").read_text())
    raw = {
        "name": "pbt",
        "data": smoke["data"],
        "trial": {**smoke["trial"], "model": "tiny:3x32", "num_workers": workers, "epochs": epochs,
                  "cpus_per_worker": 1 / workers, "util_docs": 0, "max_steps_per_epoch": 2,
                  "keep_checkpoints": 1, "patience": 10},
        "search": {"head_lr": {"type": "categorical", "choices": [1.0e-6, 0.3]}},
        "assignment": {"space": "variants", "variants": ["FLAT"]},
        "tune": {"algorithm": "grid", "metric": "dev/loss", "mode": "min", "scheduler": "pbt",
                 "pbt": {"perturbation_interval": 1, "burn_in_period": 1,
                         "quantile_fraction": 0.5, "resample_probability": 0.0}},
    }
    path = tmp_path / "pbt.yaml"
    path.write_text("# Launch: hiersearch search --space pbt.yaml\n" + yaml.safe_dump(raw))
    return path


def _reports(experiment: Path) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for result in experiment.glob("trial_*/result.json"):
        rows = []
        for line in result.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        out[result.parent.name.removeprefix("trial_")] = rows
    return out


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize(
    ("workers", "cut"),
    # a DDP trial's worker group starts in ~20 s: its search runs once through, 5 epochs
    [(1, True), (2, False)],
    ids=["in-trial-resumed", "ddp"],
)
def test_a_pbt_search_exploits_records_it_and_goes_on_after_a_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: int, cut: bool
) -> None:
    from hiersearch.cli import main
    from hiersearch.search.driver import run_search
    from hiersearch.search.space import load_space

    space = load_space(_pbt_file(tmp_path, workers, epochs=6 if cut else 5))
    experiment = tmp_path / "storage" / "pbt"

    def second_epoch_reported() -> bool:
        return any(r.get(M.EPOCH, 0) >= 2 for rows in _reports(experiment).values() for r in rows)

    def interrupt() -> None:
        deadline = time.time() + 240
        while time.time() < deadline and not second_epoch_reported():
            time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    watcher = threading.Thread(target=interrupt, daemon=True)
    if cut:
        watcher.start()
    run_search(space, storage=str(tmp_path / "storage"), verbose=0)
    if cut:
        watcher.join(timeout=1)
        run_search(space, storage=str(tmp_path / "storage"), resume=True, verbose=0)

    reports = _reports(experiment)
    assert len(reports) == 2
    finals = {t: rows[-1] for t, rows in reports.items()}
    assert all(f.get(M.TRIAL_FINAL) == 1 for f in finals.values()), finals
    exploited = [r for rows in reports.values() for r in rows if r.get(M.PBT_EXPLOITS)]
    assert exploited, "no trial exploited another"
    assert all(r[M.PBT_DONOR] in reports and r[M.PBT_DONOR] != r["trial_id"] for r in exploited)
    capsys.readouterr()
    assert main(["leaderboard", str(experiment), "--format", "json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out)["rows"] if r["status"] != "baseline"]
    assert all(r["status"] == "terminated" for r in rows)
    for row in rows:  # the leaderboard shows each trial's final values and its exploits
        trial_dir = experiment / f"trial_{row['trial_id']}"
        config = json.loads((trial_dir / "config.json").read_text())
        assert row["head_lr"] == config["head_lr"]
        assert row[M.PBT_EXPLOITS] == finals[row["trial_id"]][M.PBT_EXPLOITS]
        if workers > 1:  # a DDP trial starts a Train run of its own at each exploit
            runs = list(trial_dir.glob("train_*_pbt_donor_*"))
            assert len(runs) == row[M.PBT_EXPLOITS]
    assert main(["leaderboard", str(experiment)]) == 0
    table = capsys.readouterr().out
    assert M.PBT_EXPLOITS in table and "pbt_member" not in table
