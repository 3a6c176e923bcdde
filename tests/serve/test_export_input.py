"""A bad `export` --out: one error line naming the option and directory, exit 2, no traceback,
and the experiment left as it was.
"""

from __future__ import annotations

from pathlib import Path

from refusals import _contents, _experiment_copy, _refused_in_a_subprocess


def test_export_out_onto_its_experiment_by_another_name_is_refused(tmp_path: Path) -> None:
    experiment = _experiment_copy(tmp_path)
    (tmp_path / "link").symlink_to(experiment)
    before = _contents(experiment)
    err = _refused_in_a_subprocess(["export", str(experiment), "--out", "link"], cwd=tmp_path)
    assert err == (
        f"hiersearch: error: --out: link is the same directory as EXPERIMENT {experiment}; "
        "writing it would replace the input (choose another --out)\n"
    )
    assert _contents(experiment) == before and (tmp_path / "link").is_symlink()
