"""Helpers of the bad-input tests (tests/**/test_*_input.py): a small valid corpus and space
file for a test to spoil, and the check each refusal passes: exit 2, one error line naming the
file, line, key or option, no traceback. Ray's start is the `no_ray` fixture's (conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hiersearch.cli import main

HIERARCHY = {
    "name": "toy",
    "nodes": [
        {"id": "a", "description": "alpha", "parents": [], "level": 1},
        {"id": "b", "description": "beta", "parents": [], "level": 1},
        {"id": "a1", "description": "alpha one", "parents": ["a"], "level": 2},
        {"id": "b1", "description": "beta one", "parents": ["b"], "level": 2},
    ],
}


DOCS = {
    "train": [("t1", "alpha one", ["a1"]), ("t2", "beta one", ["b1"]), ("t3", "alpha", ["a"])],
    "dev": [("d1", "alpha one", ["a1"]), ("d2", "beta", ["b1"])],
    "test": [("s1", "beta one", ["b1"])],
}


SPACE: dict[str, Any] = {
    "name": "tiny",
    "trial": {
        "model": "tiny:4x16",
        "max_length": 16,
        "epochs": 1,
        "num_workers": 1,
        "cpus_per_worker": 1,
        "util_docs": 0,
    },
    "assignment": {"space": "variants", "variants": ["FLAT", "LAST-TWO"]},
    "tune": {"algorithm": "grid"},
}


def _corpus(directory: Path) -> Path:
    """A valid two-level corpus directory (hand-written: small enough to read in the test)."""
    directory.mkdir(parents=True)
    (directory / "hierarchy.json").write_text(json.dumps(HIERARCHY))
    for split, docs in DOCS.items():
        lines = [json.dumps({"id": i, "text": t, "labels": ls}) for i, t, ls in docs]
        (directory / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return directory


def _space(tmp_path: Path, **sections: Any) -> Path:
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in SPACE.items()}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    path = tmp_path / "space.yaml"
    path.write_text("# Launch: hiersearch search --space space.yaml\n" + yaml.safe_dump(raw))
    return path


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect exit 2 with one error line and no traceback; return that line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hiersearch: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _search(tmp_path: Path, *extra: str, space: Path | None = None) -> list[str]:
    return ["search", "--space", str(space or _space(tmp_path)), "--data",
            str(_corpus(tmp_path / "c")), *extra]


def _unwritable(tmp_path: Path) -> Path:
    """A directory nobody may create files in: read-only for a user; for root (which ignores
    modes) sysfs, where even root cannot create a file."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        return locked
    if not Path("/sys/fs").is_dir():
        pytest.skip("running as root without sysfs: no directory root cannot write")
    return Path("/sys/fs")


def _finished() -> str:
    return str(Path(__file__).parent / "fixtures" / "leaderboard" / "finished")


def _experiment_copy(tmp_path: Path) -> Path:
    import shutil

    experiment = tmp_path / "finished"
    shutil.copytree(_finished(), experiment)
    return experiment


def _contents(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _refused_in_a_subprocess(argv: list[str], cwd: Path | None = None) -> str:
    """The CLI in its own process: exit 2 and one line on stderr, which is returned."""
    done = subprocess.run([sys.executable, "-m", "hiersearch.cli", *argv],
                          capture_output=True, text=True, timeout=120, cwd=cwd)
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(done.stderr.splitlines()) == 1 and done.stdout == "", done.stderr
    return done.stderr


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The one error line of a command refused with exit 2 (run in this process)."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err
