"""The two-stage search (`hiersearch.search.stages`, `run.run_two_stage`): head-only
screening of every assignment, then fine-tuning of exactly the screen's best few."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from hiersearch import metrics as M
from hiersearch.errors import InputError
from hiersearch.report.results import NOT_TRIALS  # the baseline and ensemble rows
from hiersearch.search.space import parse_space, preset_path, trial_config
from hiersearch.search.stages import (
    finetune_space,
    screen_heads,
    screen_size,
    screening_space,
    top_assignments,
    unfinished,
)


def _space(screen: dict[str, Any], **assignment: Any) -> Any:
    raw = yaml.safe_load(preset_path("layerwise").read_text())
    raw["screen"] = screen
    raw["assignment"].update(assignment)
    return parse_space(raw, "layerwise.yaml")


def test_a_screen_section_is_checked_and_names_the_key() -> None:
    assert _space({}).screen.top_k == 3 and _space({}).screen.trials == "all"
    with pytest.raises(InputError, match="screen: trials: must be 'all' or a number"):
        _space({"trials": "most"})
    with pytest.raises(InputError, match="screen: top_k: must be >= 1"):
        _space({"top_k": 0})


def test_trials_all_screens_every_assignment_head_only_at_the_first_head_options() -> None:
    screen = screening_space(_space({"trials": "all", "epochs": 4}), 6, 4)
    assert screen_size(screen) == 46
    assert screen.assignment.space == "variants" and len(screen.assignment.variants) == 46
    assert len(set(screen.assignment.variants)) == 46 and "FLAT" in screen.assignment.variants
    assert screen.tune.algorithm == "grid" and screen.tune.scheduler == "none"
    assert screen.search == {}
    base = screen.base_config()
    assert base.freeze_layers == "all" and base.epochs == 4
    assert base.pooling == "mean" and base.head_norm == "batchnorm"  # the first choices


def test_trials_all_on_a_12_by_6_space_is_refused_with_its_size_and_a_hint() -> None:
    with pytest.raises(InputError, match=r"18,565 head-only trials .* set trials: N") as err:
        screening_space(_space({"trials": "all"}), 12, 6)
    assert err.value.where == "layerwise.yaml: screen: trials"


def test_trials_n_lets_tpe_draw_assignments_and_head_options() -> None:
    screen = screening_space(_space({"trials": 30}), 12, 6)
    assert screen_size(screen) == 30
    assert screen.tune.algorithm == "tpe" and screen.tune.num_samples == 30
    assert screen.assignment.space == "monotone"
    assert "lr" not in screen.search and "freeze_layers" not in screen.search
    assert {"pooling", "head_norm", "head_lr"} <= set(screen.search)


def test_stage_two_takes_exactly_the_screens_top_k_by_the_metric() -> None:
    table = pd.DataFrame({
        "status": ["terminated"] * 5 + ["errored", "baseline"],
        "assignment": ["A", "B", "C", "B", "D", "E", "TF-IDF"],
        M.rp_macro_key("dev"): [0.5, 0.7, 0.6, 0.65, float("nan"), 0.9, 0.99],
    })
    assert top_assignments(table, M.rp_macro_key("dev"), "max", 2) == ["B", "C"]
    assert top_assignments(table, M.rp_macro_key("dev"), "min", 2) == ["A", "C"]
    finetune = finetune_space(_space({}), ["B", "C"])
    assert finetune.assignment.variants == ("B", "C") and finetune.screen is None
    assert finetune.search == _space({}).search  # the file's own search
    assert not unfinished(table, 6) and unfinished(table.assign(status="running"), 6)
    assert unfinished(table, 7)  # Ctrl-C before the searcher made the seventh trial


def test_stage_two_starts_each_assignment_from_its_best_screen_trials_heads() -> None:
    table = pd.DataFrame({
        "status": ["terminated"] * 4 + ["baseline"],
        "assignment": ["A", "B", "B", "C", "TF-IDF"],
        "checkpoint": ["a/ckpt", "b1/ckpt", "b2/ckpt", None, None],
        M.rp_macro_key("dev"): [0.5, 0.6, 0.7, 0.65, 0.99],
    })
    metric = M.rp_macro_key("dev")
    top = top_assignments(table, metric, "max", 3)
    assert top == ["B", "C", "A"]
    heads = screen_heads(table, top, metric, "max")
    assert heads == {"B": "b2/ckpt", "A": "a/ckpt"}  # C's trial kept no checkpoint
    finetune = finetune_space(_space({}), top, heads)
    assert finetune.heads_from == heads
    base = finetune.base_config()
    assert trial_config(base, {}, "B", finetune.heads_from).init_heads_from == "b2/ckpt"
    assert trial_config(base, {}, "C", finetune.heads_from).init_heads_from is None
    assert finetune_space(_space({}), top, {}).heads_from == {}  # warm_start: false


def test_warm_start_is_on_unless_the_screen_section_turns_it_off() -> None:
    assert _space({}).screen.warm_start
    assert not _space({"warm_start": False}).screen.warm_start
    with pytest.raises(InputError, match="screen: warm_start: expected bool"):
        _space({"warm_start": "maybe"})


def test_the_screen_trains_new_heads_without_smart() -> None:
    raw = yaml.safe_load(preset_path("layerwise").read_text())
    raw["screen"] = {"trials": 30}
    raw["trial"].update(smart_weight=1.0, smart_bregman_weight=0.5, warm_head_lr=1e-4)
    raw["search"]["smart_weight"] = {"type": "loguniform", "low": 0.1, "high": 10.0}
    space = parse_space(raw, "layerwise.yaml")
    screen = screening_space(space, 12, 6)
    base = screen.base_config()
    assert (base.smart_weight, base.smart_bregman_weight) == (0.0, 0.0)
    assert base.init_heads_from is None and base.freeze_layers == "all"
    assert "smart_weight" not in screen.search and "warm_head_lr" not in screen.search
    assert space.base_config().smart_weight == 1.0  # stage 2 keeps the file's


# -- end to end, with Ray -----------------------------------------------------------------------
def _two_stage_file(tmp_path: Path, trials: int | str = "all") -> Path:
    """Smoke size: a 3-layer tiny encoder, 3 levels: the monotone space is FLAT and
    L1:1|L2:2|L3:3; both screened (or `trials` TPE draws of them), the best fine-tuned."""
    smoke = yaml.safe_load(preset_path("smoke").read_text())
    raw = {
        "name": "two",
        "data": smoke["data"],
        "trial": {**smoke["trial"], "model": "tiny:3x32", "num_workers": 1,
                  "cpus_per_worker": 1, "util_docs": 0, "pooling": "mean"},
        "assignment": {"space": "monotone"},
        "tune": {"algorithm": "tpe", "num_samples": 1, "max_concurrent": 1},
        "screen": {"top_k": 1, "trials": trials},
    }
    path = tmp_path / "two.yaml"
    path.write_text("# Launch: hiersearch search --space two.yaml\n" + yaml.safe_dump(raw))
    return path


def _interrupt_when(found: Any) -> threading.Thread:
    def watch() -> None:
        deadline = time.time() + 240
        while time.time() < deadline:
            if found():
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does
                return
            time.sleep(0.3)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _finished(stage_dir: Path) -> int:
    count = 0
    for result in stage_dir.glob("trial_*/result.json"):
        lines = result.read_text().splitlines()
        try:
            count += bool(lines) and json.loads(lines[-1]).get(M.TRIAL_FINAL) == 1
        except ValueError:
            continue
    return count


def _board(root: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    from hiersearch.cli import main

    capsys.readouterr()
    assert main(["leaderboard", str(root), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)["rows"]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("cut_in", ["screen", "finetune"])
def test_a_two_stage_search_resumes_in_either_stage_and_fine_tunes_the_screens_best(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cut_in: str
) -> None:
    from hiersearch.search.run import run_search
    from hiersearch.search.space import load_space

    # four TPE draws to cut stage 1 in (head-only trials take seconds: two could both end
    # before Ctrl-C lands); every assignment once when stage 2 is cut
    screened = 4 if cut_in == "screen" else "all"
    space = load_space(_two_stage_file(tmp_path, screened))
    root = tmp_path / "storage" / "two"
    watcher = _interrupt_when(lambda: _finished(root / cut_in) >= 1)
    run_search(space, storage=str(tmp_path / "storage"), verbose=0)
    watcher.join(timeout=1)
    finished = {stage: _finished(root / stage) for stage in ("screen", "finetune")}
    assert finished[cut_in] >= 1 and (cut_in == "screen") == (finished["finetune"] == 0)
    run_search(space, storage=str(tmp_path / "storage"), resume=True, verbose=0)
    rows = _board(root, capsys)
    trials = [r for r in rows if r["status"] not in NOT_TRIALS]
    screen = [r for r in trials if r["stage"] == "screen"]
    finetune = [r for r in trials if r["stage"] == "finetune"]
    if screened == "all":
        assert sorted(r["assignment"] for r in screen) == ["FLAT", "L1:1|L2:2|L3:3"]
    else:
        assert len(screen) == 4 and {r["assignment"] for r in screen} <= {"FLAT", "L1:1|L2:2|L3:3"}
    assert all(r["status"] == "terminated" for r in trials), trials
    assert all(r["freeze_layers"] == "all" for r in screen)
    assert [r["freeze_layers"] for r in finetune] == [0]
    best = max(screen, key=lambda r: r[M.rp_macro_key("dev")])
    assert [r["assignment"] for r in finetune] == [best["assignment"]]
    # the fine-tune started from the heads its assignment's best screen trial trained
    assert [r[M.TRIAL_WARM_START] for r in finetune] == ["yes"]
    (config,) = (root / "finetune").glob("trial_*/config.json")
    assert json.loads(config.read_text())["init_heads_from"] == best["checkpoint"]
    (baseline,) = [r for r in rows if r["status"] == "baseline"]  # one corpus, one baseline
    assert baseline["variant"] == "TF-IDF 20-NN"


def test_resuming_a_two_stage_search_that_never_began_is_refused(tmp_path: Path) -> None:
    from hiersearch.search.run import run_search
    from hiersearch.search.space import load_space

    space = load_space(_two_stage_file(tmp_path))
    with pytest.raises(InputError, match="no two-stage experiment to resume"):
        run_search(space, storage=str(tmp_path / "storage"), resume=True, verbose=0)
    assert not (tmp_path / "storage" / "two").exists()
