"""An experiment's hiersearch.json: one writer, one reader; what the reader says when the
file is absent or broken, on local paths and URIs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hiersearch.errors import InputError
from hiersearch.report.experiment import (
    META_FILE,
    PBT_POPULATION,
    read_experiment_json,
    read_meta,
    write_experiment_meta,
)


def _write(experiment: str, **extra: Any) -> None:
    write_experiment_meta(
        experiment, metrics=["dev/rp_macro", "cost/encoder_layers"], modes=["max", "min"],
        study={"name": "exp", "url": None}, space_file="quick.yaml", space={"name": "quick"},
        base_config={"lr": 1e-4}, corpus="/data/c", synthetic=True, label_counts=[3, 5],
        num_layers=6, **extra,
    )


def test_written_meta_reads_back_from_a_path_and_a_file_uri(tmp_path: Path) -> None:
    _write(str(tmp_path / "exp"))
    meta = read_meta(str(tmp_path / "exp"))
    assert meta["label_counts"] == [3, 5] and meta["name"] == "exp"
    assert (meta["metric"], meta["mode"]) == ("dev/rp_macro", "max")  # the first orders
    assert meta["metrics"] == ["dev/rp_macro", "cost/encoder_layers"]
    assert "stage" not in meta and PBT_POPULATION not in meta
    assert read_meta(f"file://{tmp_path}/exp/")["metric"] == "dev/rp_macro"


def test_meta_keeps_the_stage_and_what_the_search_plan_keeps(tmp_path: Path) -> None:
    members = [{"variant": "FLAT", "head_lr": 0.05}]
    _write(str(tmp_path / "screen"), stage="screen", kept={PBT_POPULATION: members})
    meta = read_meta(str(tmp_path / "screen"))
    assert meta["stage"] == "screen" and meta[PBT_POPULATION] == members


def test_an_experiment_without_meta_reads_as_none(tmp_path: Path) -> None:
    assert read_meta(str(tmp_path)) is None
    assert read_meta(str(tmp_path / "not-there")) is None


def test_a_torn_meta_file_is_an_input_error_naming_it_and_the_line(tmp_path: Path) -> None:
    (tmp_path / META_FILE).write_text('{"metric": "dev/rp_')
    with pytest.raises(InputError, match=f"^{tmp_path / META_FILE}:1: invalid JSON"):
        read_meta(str(tmp_path))


def test_a_meta_file_that_is_not_an_object_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / META_FILE).write_text("[1, 2]\n")
    with pytest.raises(InputError, match=f"^{tmp_path / META_FILE}: expected a JSON object"):
        read_meta(str(tmp_path))
    assert read_experiment_json(str(tmp_path), "absent.json") is None
