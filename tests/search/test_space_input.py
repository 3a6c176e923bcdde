"""Bad search-space files (keys, values, sections, encoding, GPU settings): one error line
naming the file, line or key, exit 2, no traceback, refused before Ray starts (the `no_ray`
tripwire) and before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from refusals import SPACE, _corpus, _refused, _refused_in_a_subprocess, _search, _space

from hiersearch.cli import main


def test_level_range_beyond_the_hierarchy_names_range_and_depth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    space = _space(tmp_path, trial={"levels": [1, 3]})
    line = _refused(
        ["search", "--space", str(space), "--data", str(_corpus(tmp_path / "c")),
         "--storage", str(tmp_path / "runs")],
        capsys,
    )
    assert "1..3" in line and "2 levels" in line
    assert no_ray == []


def test_assignment_in_the_trial_section_is_refused_not_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    # a trial's assignment comes from the assignment section; this one (layer 13 of a
    # 4-layer model) would have been silently replaced by the searched variant
    space = _space(tmp_path, trial={"assignment": "L1:13|L2:4"})
    line = _refused(
        ["search", "--space", str(space), "--data", str(_corpus(tmp_path / "c")),
         "--storage", str(tmp_path / "runs")],
        capsys,
    )
    assert f"{space}: trial: assignment" in line
    assert no_ray == []


@pytest.mark.parametrize(
    ("section", "values", "named"),
    [
        ("trial", {"epoch": 3}, "trial: unknown key 'epoch'"),
        ("trial", {"lr": "fast"}, "trial: lr: expected float, got 'fast'"),
        ("tune", {"worker_failures": -1}, "tune: worker_failures: must be >= 0"),
        ("search", {"dropout": {"type": "uniform", "low": 0.5}}, "search: dropout"),
        (
            "search",
            {"max_length": {"type": "categorical", "choices": [16, 32]}},
            "search: max_length: cannot be searched",
        ),
        ("search", {"batch_size": {"type": "int", "low": 2, "high": 8, "step": 0}},
         "search: batch_size: Optuna refuses this distribution: `step > 0` must hold"),
        ("search", {"batch_size": {"type": "int", "low": 2, "high": 8, "step": -2}},
         "search: batch_size: Optuna refuses"),
        ("search", {"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3, "step": 1e-5}},
         "search: lr: Optuna refuses this distribution: The parameter `step`"),
        ("search", {"batch_size": {"type": "int", "low": 2, "high": 9, "step": 4}},
         "search: batch_size: Optuna refuses this distribution: The distribution"),
        ("search", {"batch_size": {"type": "int", "low": 2.5, "high": 8}},
         "search: batch_size: low: expected an integer, got 2.5"),
        ("trial", {"smart_eps": -1.0}, "trial: smart_eps: must be > 0 (got -1.0)"),
        ("trial", {"smart_weight": 1.0, "freeze_layers": "all"},
         "trial: smart_weight: a head-only trial trains no encoder layer"),
        ("search", {"smart_steps": {"type": "int", "low": 0, "high": 2}},
         "search: smart_steps: must be >= 1"),
        ("search", {"init_heads_from": {"type": "categorical", "choices": ["a", "b"]}},
         "search: unknown searchable key 'init_heads_from'"),
        ("tune", {"sampler_seed": -1}, "tune: sampler_seed: must be in 0 .. 2**32 - 1"),
        ("tune", {"sampler_seed": 2**32}, "tune: sampler_seed: must be in 0 .. 2**32 - 1"),
        ("tune", {"max_concurrent": 0}, "tune: max_concurrent: must be >= 1"),
        ("data", {"docs": 2}, "data: docs: must be at least 3"),
        ("data", {"seed": -1}, "data: seed: must be >= 0"),
        ("data", {"hierarchy": "no-such.tsv"}, "data: hierarchy: 'no-such.tsv' is neither"),
    ],
)
def test_space_file_key_errors_name_file_and_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_ray: list[str | None],
    section: str,
    values: dict[str, Any],
    named: str,
) -> None:
    space = _space(tmp_path, **{section: values})
    line = _refused(["search", "--space", str(space), "--storage", str(tmp_path / "r")], capsys)
    assert f"{space}: {named}" in line
    assert no_ray == [] and not (tmp_path / "r").exists()


def test_heads_from_a_directory_that_is_no_checkpoint_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    space = _space(tmp_path, heads_from={"FLAT": str(tmp_path / "nothing")})
    line = _refused([*_search(tmp_path, space=space), "--storage", str(tmp_path / "r")], capsys)
    assert f"{space}: heads_from: FLAT: {tmp_path / 'nothing'} is not a trial's checkpoint" in line
    assert no_ray == [] and not (tmp_path / "r").exists()


def test_smart_on_a_trial_whose_frozen_layers_leave_only_heads_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    # FLAT reads layer 4 of tiny:4x16: four frozen layers leave its head alone to train
    space = _space(tmp_path, trial={"freeze_layers": 4, "smart_bregman_weight": 1.0})
    line = _refused([*_search(tmp_path, space=space), "--storage", str(tmp_path / "r")], capsys)
    assert f"{space}: trial: smart_bregman_weight: a head-only trial" in line
    assert no_ray == []


def test_a_space_name_with_a_slash_names_the_space_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    space = _space(tmp_path)
    space.write_text(space.read_text().replace("name: tiny", "name: ../../tiny"))
    line = _refused([*_search(tmp_path, space=space), "--storage", str(tmp_path / "r")], capsys)
    assert f"{space}: name" in line and no_ray == []


def test_a_space_file_with_a_key_given_twice_is_refused_before_ray(tmp_path: Path) -> None:
    space = tmp_path / "twice.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False).replace(
        "  epochs: 1\n", "  epochs: 1\n  lr: 0.001\n  util_docs: 0\n  lr: 0.002\n", 1))
    err = _refused_in_a_subprocess(["search", "--space", str(space), "--storage", "runs"],
                                   cwd=tmp_path)
    lines = [n for n, line in enumerate(space.read_text().splitlines(), 1) if "lr:" in line]
    assert err == (
        f"hiersearch: error: {space}: trial: key 'lr' is given twice (lines {lines[0]} and "
        f"{lines[1]}); a YAML reader would keep the last one silently: keep one\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["twice.yaml"]  # no storage, no Ray


@pytest.mark.parametrize("command", [["search", "--storage", "runs"],
                                     ["space", "--layers", "6", "--levels", "3"]])
def test_a_space_file_that_is_not_utf8_is_refused_naming_its_line(
    tmp_path: Path, command: list[str]
) -> None:
    space = tmp_path / "latin1.yaml"
    text = yaml.safe_dump({**SPACE, "description": "caf\u00e9 au lait"}, sort_keys=False,
                          allow_unicode=True)
    space.write_bytes(text.encode("latin-1"))  # e-acute as the single byte 0xE9
    line = text[: text.index("\u00e9")].count("\n") + 1
    column = len(text[: text.index("\u00e9")].rsplit("\n", 1)[-1]) + 1
    err = _refused_in_a_subprocess([command[0], "--space", str(space), *command[1:]],
                                   cwd=tmp_path)
    assert err == f"hiersearch: error: {space}:{line}: invalid UTF-8 (byte {column} of the line)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.yaml"]  # no storage, no Ray


def test_ddp_workers_sharing_a_gpu_are_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    space = _space(tmp_path, trial={"use_gpu": True, "num_workers": 2, "gpus_per_worker": 0.5})
    line = _refused([*_search(tmp_path, space=space), "--storage", str(tmp_path / "r")], capsys)
    assert "trial: gpus_per_worker: must be 1 with num_workers: 2 and use_gpu" in line
    assert no_ray == [] and not (tmp_path / "r").exists()


def test_gpu_trials_on_a_cpu_build_of_torch_are_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", None)  # CI's torch is one; say so regardless
    space = _space(tmp_path, trial={"use_gpu": True})
    line = _refused([*_search(tmp_path, space=space), "--storage", str(tmp_path / "r")], capsys)
    assert f"{space}: trial: use_gpu: torch {torch.__version__} is a CPU build" in line
    assert no_ray == [] and not (tmp_path / "r").exists()


def test_gpu_trials_on_a_machine_without_a_gpu_are_refused_when_they_would_run_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", "13.0")  # a CUDA build...
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # ...on a machine with no GPU
    space = _space(tmp_path, trial={"use_gpu": True})
    argv = [*_search(tmp_path, space=space), "--storage", str(tmp_path / "r")]
    line = _refused(argv, capsys)
    assert "trial: use_gpu: this machine has no GPU" in line and no_ray == []
    # joining a cluster: its GPU nodes may have what this head node lacks, so Ray starts
    with pytest.raises(AssertionError, match="Ray would start"):
        main([*argv, "--address", "10.0.0.1:6379"])
    assert no_ray == ["10.0.0.1:6379"]
