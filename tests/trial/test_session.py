"""The loop's runners without Ray: a Tune trial's session picks its device and fills the
search metric a report lacks; the local session keeps checkpoints in order."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from hiersearch.trial.session import LocalSession, NoGpuError, RaySession, TuneSession, check_cuda


class _Recording(TuneSession):
    def __init__(self, latest: Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent: list[tuple[dict[str, Any], Path | None]] = []
        self.latest = latest

    def _send(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.sent.append((metrics, checkpoint_dir))

    def _latest(self) -> Any:
        from ray.train import Checkpoint

        return None if self.latest is None else Checkpoint.from_directory(str(self.latest))


def test_tune_session_is_rank_zero_of_one_on_the_trials_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = TuneSession(use_gpu=False)
    assert (session.rank, session.world_size, session.device.type) == (0, 1, "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert TuneSession(use_gpu=True).device == torch.device("cuda", 0)


def test_a_gpu_trial_without_cuda_fails_at_once_instead_of_training_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(NoGpuError, match=r"use_gpu: true, but torch .* on .* is a"):
        TuneSession(use_gpu=True)
    # a Ray Train worker whose device Ray gave as the CPU: the same refusal
    with pytest.raises(NoGpuError, match="install a CUDA build of torch on every node"):
        check_cuda(True, torch.device("cpu"))
    check_cuda(True, torch.device("cuda", 1))
    check_cuda(False, torch.device("cpu"))


def test_a_tune_trial_deletes_its_checkpoint_directory_once_tune_persisted_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray import tune

    persisted: list[list[str]] = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: persisted.append(
        sorted(p.name for p in Path(checkpoint.path).iterdir())))
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "model.pt").write_text("w")
    TuneSession().report({"epoch": 1}, checkpoint)
    assert persisted == [["model.pt"]] and not checkpoint.exists()


def test_a_ray_train_worker_uploads_its_checkpoints_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray.train

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray.train, "report", lambda metrics, **kwargs: calls.append(kwargs))
    session = RaySession.__new__(RaySession)  # its context needs a Ray Train run
    session.required_metrics = ()
    session.report({"epoch": 1}, tmp_path)
    (kwargs,) = calls
    assert kwargs["checkpoint_upload_mode"] == ray.train.CheckpointUploadMode.ASYNC
    # Ray deletes the directory after the upload (ASYNC's default): it must not do it first
    assert kwargs.get("delete_local_checkpoint_after_upload") in (None, True)
    assert Path(kwargs["checkpoint"].path) == tmp_path and tmp_path.exists()


def test_a_report_without_the_search_metric_carries_nan(tmp_path: Path) -> None:
    session = _Recording(required_metrics=("dev/rp_macro",))
    session.report({"epoch": 1}, tmp_path)
    session.report({"epoch": 2, "dev/rp_macro": 0.5}, None)
    (first, first_dir), (second, _) = session.sent
    assert math.isnan(first["dev/rp_macro"]) and first_dir == tmp_path
    assert second["dev/rp_macro"] == 0.5


def test_tune_session_restores_from_tunes_latest_checkpoint_where_it_is(tmp_path: Path) -> None:
    with _Recording().restored() as restored:
        assert restored is None
    with _Recording(latest=tmp_path).restored() as restored:
        assert restored == tmp_path  # on the local filesystem: read in place, no copy


def test_a_remote_checkpoint_is_read_from_a_copy_that_is_gone_after_the_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray downloads a checkpoint on remote storage to a temporary directory: it must not be
    left behind (a copy of the weights in /tmp at every restore, every trial)."""
    import tempfile

    import pyarrow.fs
    from ray.train import Checkpoint

    stored = tmp_path / "bucket" / "checkpoint_000003"
    stored.mkdir(parents=True)
    (stored / "model.pt").write_text("weights")
    remote = pyarrow.fs.SubTreeFileSystem(str(tmp_path / "bucket"), pyarrow.fs.LocalFileSystem())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    session = _Recording()
    monkeypatch.setattr(session, "_latest", lambda: Checkpoint("checkpoint_000003", remote))
    with session.restored() as restored:
        assert restored is not None and (restored / "model.pt").read_text() == "weights"
        assert restored.parent == scratch
    assert list(scratch.iterdir()) == []


def test_local_session_restores_its_latest_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    session = LocalSession(checkpoint_root=tmp_path / "root")
    with session.restored() as restored:
        assert restored is None
    for epoch in (1, 2):
        source = tmp_path / f"epoch{epoch}"
        source.mkdir()
        (source / "model.pt").write_text(str(epoch))
        session.report({"epoch": epoch}, source)
    with session.restored() as restored:
        assert restored is not None and (restored / "model.pt").read_text() == "2"
    assert [p.name for p in session.checkpoints] == ["checkpoint_000000", "checkpoint_000001"]
    assert not (tmp_path / "epoch1").exists()  # the session owned it: gone once copied


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
