"""An experiment's hiersearch.json: one writer, one reader; what the reader says when the
file is absent or broken, on local paths and URIs."""

from __future__ import annotations

from pathlib import Path

import pytest

from hiersearch.errors import InputError
from hiersearch.report.experiment import META_FILE, read_meta, write_meta


def test_written_meta_reads_back_from_a_path_and_a_file_uri(tmp_path: Path) -> None:
    write_meta(str(tmp_path / "exp"), {"metric": "dev/rp_macro", "label_counts": [3, 5]})
    assert read_meta(str(tmp_path / "exp"))["label_counts"] == [3, 5]
    assert read_meta(f"file://{tmp_path}/exp/")["metric"] == "dev/rp_macro"


def test_an_experiment_without_meta_reads_as_none(tmp_path: Path) -> None:
    assert read_meta(str(tmp_path)) is None
    assert read_meta(str(tmp_path / "not-there")) is None


def test_a_torn_meta_file_is_an_input_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / META_FILE).write_text('{"metric": "dev/rp_')
    with pytest.raises(InputError, match=f"^{tmp_path / META_FILE}: not JSON"):
        read_meta(str(tmp_path))


def test_a_meta_file_that_is_not_an_object_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / META_FILE).write_text("[1, 2]\n")
    with pytest.raises(InputError, match="expected a JSON object"):
        read_meta(str(tmp_path))
