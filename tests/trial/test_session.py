"""The loop's runners without Ray: a Tune trial's session picks its device and fills the
search metric a report lacks; the local session keeps checkpoints in order."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from hiersearch.trial.session import LocalSession, TuneSession


class _Recording(TuneSession):
    def __init__(self, latest: Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent: list[tuple[dict[str, Any], Path | None]] = []
        self.latest = latest

    def _send(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.sent.append((metrics, checkpoint_dir))

    def _latest(self) -> Any:
        return None if self.latest is None else SimpleNamespace(to_directory=lambda: self.latest)


def test_tune_session_is_rank_zero_of_one_on_the_trials_device() -> None:
    session = TuneSession(use_gpu=True)
    assert (session.rank, session.world_size) == (0, 1)
    expected = "cuda" if torch.cuda.is_available() else "cpu"  # no GPU: train on the CPU
    assert session.device.type == expected
    assert TuneSession(use_gpu=False).device.type == "cpu"


def test_a_report_without_the_search_metric_carries_nan(tmp_path: Path) -> None:
    session = _Recording(required_metrics=("dev/rp_macro",))
    session.report({"epoch": 1}, tmp_path)
    session.report({"epoch": 2, "dev/rp_macro": 0.5}, None)
    (first, first_dir), (second, _) = session.sent
    assert math.isnan(first["dev/rp_macro"]) and first_dir == tmp_path
    assert second["dev/rp_macro"] == 0.5


def test_tune_session_restores_from_tunes_latest_checkpoint(tmp_path: Path) -> None:
    assert _Recording().restore() is None
    assert _Recording(latest=tmp_path).restore() == tmp_path


def test_local_session_restores_its_latest_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    session = LocalSession(checkpoint_root=tmp_path / "root")
    assert session.restore() is None
    for epoch in (1, 2):
        source = tmp_path / f"epoch{epoch}"
        source.mkdir()
        (source / "model.pt").write_text(str(epoch))
        session.report({"epoch": epoch}, source)
    restored = session.restore()
    assert restored is not None and (restored / "model.pt").read_text() == "2"
    assert [p.name for p in session.checkpoints] == ["checkpoint_000000", "checkpoint_000001"]


def test_artifacts_copied_into_place_get_the_umask_mode(tmp_path: Path) -> None:
    """They are built in a temporary directory (0700) and copied as a whole: the copy must
    be readable by the cluster's other users as the umask allows."""
    import os
    import stat

    from hiersearch.trial.session import Artifacts

    old = os.umask(0o022)
    try:
        artifacts = Artifacts(str(tmp_path / "artifacts"))
        (artifacts.local / "note.txt").write_text("x")
        artifacts.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "artifacts").stat().st_mode) == 0o755
