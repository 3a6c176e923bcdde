"""`hiersearch predict --out` onto its own `--input`, under any name for it: refused through the
command line before the model loads, exit code 2, the documents left as they were."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = '{"id": "d1", "text": "a document the user keeps"}\n'


def _names(tmp_path: Path, way: str) -> tuple[str, str]:
    """(--input, --out) naming one file `way`, relative to `tmp_path`."""
    (tmp_path / "docs.jsonl").write_text(DOCS)
    if way in ("symlink as --out", "symlink as --input"):
        (tmp_path / "link.jsonl").symlink_to("docs.jsonl")
    if way == "hard link":
        os.link(tmp_path / "docs.jsonl", tmp_path / "hard.jsonl")
    return {
        "same path": ("docs.jsonl", "docs.jsonl"),
        "relative path": ("docs.jsonl", f"../{tmp_path.name}/./docs.jsonl"),
        "symlink as --out": ("docs.jsonl", "link.jsonl"),
        "symlink as --input": ("link.jsonl", "docs.jsonl"),
        "hard link": ("docs.jsonl", "hard.jsonl"),
    }[way]


@pytest.mark.parametrize(
    "way", ["same path", "relative path", "symlink as --out", "symlink as --input", "hard link"]
)
def test_an_out_that_is_the_input_is_refused_and_the_input_kept(
    tmp_path: Path, way: str
) -> None:
    source, out = _names(tmp_path, way)
    before = sorted(p.name for p in tmp_path.iterdir())
    done = subprocess.run(
        [sys.executable, "-m", "hiersearch.cli", "predict", "no-such-model",
         "--input", source, "--out", out],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == (  # the model is not looked at: its directory does not even exist
        f"hiersearch: error: --out: {out} is the same file as --input {source}; writing it "
        "would replace the input (choose another --out)\n"
    )
    assert (tmp_path / "docs.jsonl").read_text() == DOCS
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary file
