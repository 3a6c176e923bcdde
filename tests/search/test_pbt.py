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
from hiersearch.report.results import NOT_TRIALS  # the baseline and ensemble rows
from hiersearch.search.dimension import Dimension
from hiersearch.search.space import (
    PBT_MUTABLE,
    SHAPE_KEYS,
    load_space,
    parse_space,
    preset_path,
)

LR = {"type": "loguniform", "low": 1.0e-5, "high": 1.0e-3}


def _dims(search: dict[str, Any]) -> dict[str, Dimension]:
    return {key: Dimension.parse(value, key) for key, value in search.items()}


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
        "warm_head_lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
        "smart_weight": {"type": "uniform", "low": 0.0, "high": 3.0},
        "smart_bregman_weight": {"type": "uniform", "low": 0.0, "high": 3.0},
    }
    assert set(search) == set(PBT_MUTABLE)
    space = _space(search, pbt={"perturbation_interval": 2, "burn_in_period": 0})
    assert space.tune.pbt.perturbation_interval == 2 and space.tune.pbt.burn_in_period == 0


def test_mutations_are_the_search_section_as_ray_domains_and_lists() -> None:
    from ray.tune.search.sample import Float

    from hiersearch.search.pbt import mutations

    out = mutations(_dims({
        "lr": LR,
        "dropout": {"type": "uniform", "low": 0.0, "high": 0.3},
        "loss_weighting": {"type": "categorical", "choices": ["proportional", "uniform"]},
        "max_grad_norm": {"type": "int", "low": 1, "high": 5, "step": 2},
    }))
    assert isinstance(out["lr"], Float) and out["lr"].lower == 1e-5 and out["lr"].upper == 1e-3
    assert isinstance(out["dropout"], Float)
    assert out["loss_weighting"] == ["proportional", "uniform"]
    assert out["max_grad_norm"] == [1, 3, 5]


def test_a_perturbed_value_is_clipped_into_its_range() -> None:
    from hiersearch.search.pbt import _Clip

    clip = _Clip(_dims({"lr": LR, "loss_weighting": {"type": "categorical",
                                                       "choices": ["uniform"]}}))
    assert clip({"lr": 1.2e-3, "loss_weighting": "uniform"}) == {
        "lr": 1e-3, "loss_weighting": "uniform"
    }
    assert clip({"lr": 0.8e-5})["lr"] == 1e-5
    assert clip({"lr": 5e-4})["lr"] == 5e-4


def test_a_final_report_decides_nothing() -> None:
    from ray.tune.schedulers import TrialScheduler

    from hiersearch.search.pbt import PinnedPBT

    scheduler = PinnedPBT(_space({"lr": LR}).tune.pbt, _dims({"lr": LR}))
    final = {M.EPOCH: 3, "dev/rp_macro": 0.1, M.TRIAL_FINAL: 1}
    assert scheduler.on_trial_result(None, object(), final) == TrialScheduler.CONTINUE


def test_pbt_keeps_each_trials_newest_checkpoints_past_a_perturbation() -> None:
    from hiersearch.search.pbt import Population
    from hiersearch.search.tuner import IndependentTrials

    space = _space({"lr": LR}, pbt={"perturbation_interval": 3})
    pbt = Population((), space.tune.pbt, space.search)
    assert pbt.checkpoint_policy(space.base_config(keep_checkpoints=1)) == {"num_to_keep": 4}
    plain = parse_space({}, "plain.yaml")
    independent = IndependentTrials(plain)
    assert independent.checkpoint_policy(plain.base_config(keep_checkpoints=1)) == {
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

    scheduler = PinnedPBT(_space({"lr": LR}).tune.pbt, _dims({"lr": LR}))
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
    from hiersearch.search.pbt import initial_population, member_params, population_space
    from hiersearch.search.space import MEMBER_PARAM, define_by_run, fixed_points
    from hiersearch.search.tuner import sampler

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
    assert grid["dropout"].func({MEMBER_PARAM: 6}) == population[6]["dropout"]
    # a trial's parameters: its member's, under what PBT has since set
    params = member_params({MEMBER_PARAM: 6, "head_lr": 0.05}, population)
    assert params == {**population[6], "head_lr": 0.05}


class _Trial:
    """What Ray's PBT reads and sets of a trial (hashable, unlike a namespace)."""

    def __init__(self, name: str, root: Path, newest: Any = None, saving: Any = None) -> None:
        import pyarrow.fs

        self.trial_id = self.experiment_tag = name
        self.storage = SimpleNamespace(
            storage_filesystem=pyarrow.fs.LocalFileSystem(), trial_fs_path=str(root / name)
        )
        manager = SimpleNamespace(_latest_checkpoint_result=None)
        self.run_metadata = SimpleNamespace(checkpoint_manager=manager)
        self.latest_checkpoint_result = newest  # Tune's newest registered checkpoint
        self.temporary_state = SimpleNamespace(saving_to=saving)  # a save under way
        self.config: dict[str, Any] = {"lr": 1e-4}
        self.status, self.last_result = "RUNNING", {}
        self.local_experiment_path = self.local_dir = str(root)

    def set_experiment_tag(self, tag: str) -> None:
        self.experiment_tag = tag

    def set_config(self, config: dict[str, Any]) -> None:
        self.config = config


def _checkpoint_dir(path: Path, weights: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "model.pt").write_bytes(weights)
    return path


def _no_save(*args: Any, **kwargs: Any) -> None:
    pytest.fail("PBT asked a trial to save: Tune would register its checkpoint twice")


_CONTROLLER = SimpleNamespace(
    pause_trial=lambda trial, should_checkpoint: None, _schedule_trial_save=_no_save
)


def _population(tmp_path: Path, donor: _Trial) -> tuple[Any, _Trial]:
    """A scheduler with `donor` above and a recipient below, at epoch 3."""
    from ray.tune.schedulers.pbt import _PBTTrialState

    from hiersearch.search.pbt import PinnedPBT

    scheduler = PinnedPBT(_space({"lr": LR}).tune.pbt, _dims({"lr": LR}))
    recipient = _Trial("recipient", tmp_path)
    for t, score in ((donor, 0.9), (recipient, 0.1)):
        state = scheduler._trial_state[t] = _PBTTrialState(t)
        state.last_result, state.last_score = {M.EPOCH: 3}, score
    return scheduler, recipient


def _taken(recipient: _Trial) -> Any:
    """What the recipient restarts from (what Ray's exploit set)."""
    return recipient.run_metadata.checkpoint_manager._latest_checkpoint_result


def test_a_ddp_trial_gives_the_checkpoint_its_last_report_names(tmp_path: Path) -> None:
    """Tune holds no checkpoint of a Ray Train trial: the donor gives the one its last report
    names (`checkpoint_path`), and the exploit pins a copy of it for the recipient."""
    from ray.train._internal.session import _TrainingResult

    from hiersearch.search.pbt import DONOR_PREFIX, NEWEST

    donor = _Trial("donor", tmp_path)
    ckpt = _checkpoint_dir(tmp_path / "donor" / "train_donor" / "checkpoint_2026", b"donor")
    donor.last_result = {"checkpoint_path": str(ckpt), M.EPOCH: 3}
    scheduler, recipient = _population(tmp_path, donor)
    scheduler._checkpoint_or_exploit(donor, _CONTROLLER, [donor], [recipient])
    assert scheduler._trial_state[donor].last_checkpoint == NEWEST
    scheduler._checkpoint_or_exploit(recipient, _CONTROLLER, [donor], [recipient])
    latest = _taken(recipient)
    assert isinstance(latest, _TrainingResult)
    pinned = Path(latest.checkpoint.path)
    assert pinned.parent == tmp_path / "recipient" and pinned.name.startswith(DONOR_PREFIX)
    assert (pinned / "model.pt").read_bytes() == b"donor"
    assert scheduler._trial_state[donor].last_checkpoint == NEWEST  # left as it was


def test_an_exploit_takes_the_donors_newest_checkpoint_without_asking_it_to_save(
    tmp_path: Path,
) -> None:
    """A top trial is never asked to save (Tune would register the checkpoint it has just
    reported a second time, prune its directory under the first entry and fail with an
    ERROR on the second): the recipient takes the donor's newest registered checkpoint."""
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    newest = _checkpoint_dir(tmp_path / "donor" / "checkpoint_000007", b"newest")
    donor = _Trial("donor", tmp_path, _TrainingResult(Checkpoint(str(newest)), {M.EPOCH: 4}))
    scheduler, recipient = _population(tmp_path, donor)
    scheduler._checkpoint_or_exploit(donor, _CONTROLLER, [donor], [recipient])
    scheduler._checkpoint_or_exploit(recipient, _CONTROLLER, [donor], [recipient])
    latest = _taken(recipient)
    assert (Path(latest.checkpoint.path) / "model.pt").read_bytes() == b"newest"
    assert latest.metrics == {M.EPOCH: 4}  # the metrics reported with that checkpoint
    assert scheduler._num_perturbations == 1


def test_a_donor_still_registering_its_checkpoint_gives_that_one(tmp_path: Path) -> None:
    from ray.train._internal.session import _FutureTrainingResult, _TrainingResult
    from ray.tune import Checkpoint

    class _Saving(_FutureTrainingResult):  # Tune's save of the donor's report, under way
        def __init__(self, result: Any) -> None:
            self.result = result

        def resolve(self, block: bool = True) -> Any:
            return self.result

    older = _checkpoint_dir(tmp_path / "donor" / "checkpoint_000006", b"older")
    newer = _checkpoint_dir(tmp_path / "donor" / "checkpoint_000007", b"newer")
    registered = _TrainingResult(Checkpoint(str(older)), {M.EPOCH: 3})
    saving = _Saving(_TrainingResult(Checkpoint(str(newer)), {M.EPOCH: 4}))
    donor = _Trial("donor", tmp_path, registered, saving)
    scheduler, recipient = _population(tmp_path, donor)
    scheduler._exploit(_CONTROLLER, recipient, donor)
    assert (Path(_taken(recipient).checkpoint.path) / "model.pt").read_bytes() == b"newer"


@pytest.mark.parametrize("left", ["pruned", "none-yet", "final"])
def test_a_donor_with_no_checkpoint_to_give_is_not_exploited(tmp_path: Path, left: str) -> None:
    """Nothing to copy, or only the donor's final checkpoint (its final metrics, no training
    state: the recipient would end at once, reporting the donor's final report as its own)."""
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    gone = _TrainingResult(Checkpoint(str(tmp_path / "donor" / "checkpoint_000005")), {})
    final_dir = _checkpoint_dir(tmp_path / "donor" / "checkpoint_000006", b"final")
    final = _TrainingResult(Checkpoint(str(final_dir)), {M.EPOCH: 6, M.TRIAL_FINAL: 1})
    newest = {"pruned": gone, "none-yet": None, "final": final}[left]
    donor = _Trial("donor", tmp_path, newest)
    scheduler, recipient = _population(tmp_path, donor)
    scheduler._exploit(_CONTROLLER, recipient, donor)
    assert _taken(recipient) is None
    assert scheduler._num_perturbations == 0 and recipient.experiment_tag == "recipient"
    assert not list(tmp_path.glob("recipient/*"))  # no copy begun is left


def test_a_train_run_goes_on_from_a_donated_checkpoint_in_a_run_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray.train

    from hiersearch.search.trainable import train_run_name
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
    exploits the upper one at its first perturbation once the upper one has a score and a
    checkpoint: with both running side by side, within an epoch or two of a start or resume."""
    smoke = yaml.safe_load(preset_path("smoke").read_text())
    # in their Tune trials, whole epochs (11 steps, ~0.3 s): at 2 steps a trial whose process
    # started a second late found the other already done, twice in 9 runs
    steps = 2 if workers > 1 else 11
    raw = {
        "name": "pbt",
        "data": smoke["data"],
        "trial": {**smoke["trial"], "model": "tiny:3x32", "num_workers": workers, "epochs": epochs,
                  "cpus_per_worker": 1 / workers, "util_docs": 0, "max_steps_per_epoch": steps,
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
def test_a_pbt_search_exploits_records_it_and_goes_on_after_a_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In their Tune trials (one worker each). A DDP trial's side of an exploit (a Train run
    of its own, started from the donated checkpoint) is the next test's; Ray Train trials run
    end to end in the smoke experiment (search/test_run.py)."""
    from hiersearch.cli import main
    from hiersearch.search.run import run_search
    from hiersearch.search.space import load_space

    space = load_space(_pbt_file(tmp_path, workers=1, epochs=6))
    experiment = tmp_path / "storage" / "pbt"

    def second_epoch_reported() -> bool:
        return any(r.get(M.EPOCH, 0) >= 2 for rows in _reports(experiment).values() for r in rows)

    def interrupt() -> None:
        deadline = time.time() + 240
        while time.time() < deadline and not second_epoch_reported():
            time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    watcher = threading.Thread(target=interrupt, daemon=True)
    watcher.start()
    run_search(space, storage=str(tmp_path / "storage"), verbose=0)
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
    board = json.loads(capsys.readouterr().out)
    rows = [r for r in board["rows"] if r["status"] not in NOT_TRIALS]
    assert all(r["status"] == "terminated" for r in rows)
    for row in rows:  # the leaderboard shows each trial's final values and its exploits
        trial_dir = experiment / f"trial_{row['trial_id']}"
        config = json.loads((trial_dir / "config.json").read_text())
        assert row["head_lr"] == config["head_lr"]
        assert row[M.PBT_EXPLOITS] == finals[row["trial_id"]][M.PBT_EXPLOITS]
    assert main(["leaderboard", str(experiment)]) == 0
    table = capsys.readouterr().out
    assert M.PBT_EXPLOITS in table and "pbt_member" not in table


@pytest.mark.parametrize("scheduler", ["pbt", "none"])
def test_a_ddp_trial_trains_on_from_the_donated_checkpoint_in_a_train_run_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheduler: str
) -> None:
    """The Train controller of a DDP trial under PBT hands Tune's checkpoint (the donor's
    pinned copy) to a Train run named for it, whose workers get it in their loop config
    (`RaySession._latest` reads it, tested above); without PBT it asks Tune for none. The
    TorchTrainer is recorded, not started: two-worker Train runs are the smoke experiment's."""
    import pyarrow.fs
    import ray.train.torch
    import ray.tune.integration.ray_train
    from ray import tune

    import hiersearch.search.trainable as trainable
    from hiersearch.data.prepare import PreparedData
    from hiersearch.search.pbt import Population
    from hiersearch.search.tuner import IndependentTrials

    raw = yaml.safe_load(_pbt_file(tmp_path, workers=2, epochs=3).read_text())
    if scheduler == "none":
        raw["tune"] = {k: v for k, v in raw["tune"].items() if k != "pbt"} | {"scheduler": "none"}
    space = parse_space(raw, "pbt.yaml")
    config = space.base_config()
    donated = SimpleNamespace(path=str(tmp_path / "trial_a" / "pbt_donor_0002"))
    storage = SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(),
                              trial_fs_path=str(tmp_path / "trial_a"))
    context = SimpleNamespace(get_trial_id=lambda: "a", get_storage=lambda: storage)
    monkeypatch.setattr(tune, "get_context", lambda: context)
    asked: list[bool] = []
    monkeypatch.setattr(tune, "get_checkpoint", lambda: asked.append(True) or donated)
    monkeypatch.setattr(trainable, "_resolve", lambda *args: config)
    started: list[dict[str, Any]] = []

    class Trainer:  # what the trial would start
        def __init__(self, loop: Any, **kwargs: Any) -> None:
            started.append({"loop": kwargs["train_loop_config"],
                            "name": kwargs["run_config"].name,
                            "workers": kwargs["scaling_config"].num_workers})

        def fit(self) -> Any:
            return SimpleNamespace(metrics={})

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", Trainer)
    # outside a Tune session Tune's report callback refuses to be built: any Train callback
    monkeypatch.setattr(
        ray.tune.integration.ray_train, "TuneReportCallback", ray.train.UserCallback
    )
    data = PreparedData("corpus", "encoded", [2, 3], 3, synthetic=True)
    plan = (Population((), space.tune.pbt, space.search) if scheduler == "pbt"
            else IndependentTrials(space))
    inputs = trainable.TrialInputs(config, data, space, plan)
    trainable.trial_with_trainer({}, inputs=inputs)
    (run,) = started
    assert run["workers"] == 2
    if scheduler == "pbt":
        assert asked and run["loop"]["donated"] is donated and run["loop"]["pbt"]
        assert run["name"] == "train_a_pbt_donor_0002"
    else:
        assert not asked and run["loop"]["donated"] is None and not run["loop"]["pbt"]
        assert run["name"] == "train_a"
