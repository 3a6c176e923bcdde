"""What a search settles before Ray starts: where the experiment lands."""

from __future__ import annotations

from pathlib import Path

import pytest

from hiersearch.errors import InputError
from hiersearch.search.preflight import check_destination


@pytest.mark.parametrize("name", ["../up", "a/b", "..", ".", "a\\b", "nul\0byte"])
def test_a_name_that_is_not_one_directory_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match="--name: .* is not a directory name"):
        check_destination(str(tmp_path), name, "--name")
    assert list(tmp_path.iterdir()) == []


def test_a_new_storage_under_a_writable_directory_is_fine_and_not_created(
    tmp_path: Path,
) -> None:
    check_destination(str(tmp_path / "runs" / "deeper"), "exp", "--name")
    assert list(tmp_path.iterdir()) == []


def test_a_storage_below_a_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("")
    with pytest.raises(InputError, match=f"--storage: .*not a directory.*{tmp_path / 'runs'}"):
        check_destination(str(tmp_path / "runs" / "x"), "exp", "--name")


def test_a_bucket_storage_is_left_to_its_first_write() -> None:
    check_destination("s3://bucket/prefix", "exp", "--name")
