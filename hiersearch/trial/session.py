"""Where a trial runs: the `Session` that the recipe (`recipe.fit`) talks to (rank, world size,
device, report, restore) and its three runners, the collectives the recipe needs across ranks,
plus the trial's artifact directory.

- `LocalSession`: one process, reports kept in memory, checkpoints in a directory (tests,
  benchmarks);
- `RaySession`: a Ray Train worker (DDP: gloo on CPU, NCCL on GPU), reporting through
  `ray.train.report`;
- `TuneSession`: a one-worker trial inside its Ray Tune trial, reporting through
  `ray.tune.report`.

Ray is imported only inside the Ray runners' methods.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from hiersearch.files import atomic_write_json, dir_mode

# Trial artifact listing every start of the worker group: rank, pid, node of each worker.
WORKERS_FILE = "workers.json"
# A PBT trial's own exploits, oldest first (its checkpoints carry its weights' lineage, which
# an exploit replaces with the donor's; this file stays the trial's).
PBT_EXPLOITS_FILE = "pbt_exploits.json"
# TensorBoard tags of a trial's final metrics, the ones its HParams entry names: apart from
# the per-epoch dev/* scalars, since a trial's final dev metrics are its best epoch's
HPARAMS_METRIC_PREFIX = "final/"


class Session(Protocol):
    """What the loop needs from its runner."""

    rank: int
    world_size: int
    device: torch.device

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """Report `metrics`, with the checkpoint in `checkpoint_dir` if given: the session
        owns that directory from then on and deletes it once the checkpoint is persisted."""
        ...

    def restored(self) -> contextlib.AbstractContextManager[Path | None]:
        """The latest checkpoint as a local directory for a `with` block (None: there is
        none). Whatever was fetched to read it is gone after the block."""
        ...

    def node_id(self) -> str: ...


@dataclass
class LocalSession:
    """In-process runner: one process, reports kept in memory, checkpoints in a directory."""

    checkpoint_root: Path
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reports: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None:
            with _owned(checkpoint_dir):
                taken = sum(1 for _ in self.checkpoint_root.iterdir())
                target = self.checkpoint_root / f"checkpoint_{taken:06d}"
                shutil.copytree(checkpoint_dir, target)
                self.checkpoints.append(target)

    @contextlib.contextmanager
    def restored(self) -> Iterator[Path | None]:
        yield self.checkpoints[-1] if self.checkpoints else None

    def node_id(self) -> str:
        return socket.gethostname()


class Artifacts:
    """Trial artifacts (config, utilization numbers, heatmaps, TensorBoard events), written
    locally by rank 0 and mirrored to the trial's storage (a path or a pyarrow filesystem)."""

    def __init__(self, target: str | None, filesystem: Any = None) -> None:
        self.target = target
        self.filesystem = filesystem
        self.local = Path(tempfile.mkdtemp(prefix="hiersearch-artifacts-"))
        self.local.chmod(dir_mode())  # copied with the artifacts: not mkdtemp's 0700
        self._writer: Any = None

    @property
    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.local / "tensorboard"))
        return self._writer

    def write_hparams(self, hparams: dict[str, Any], metrics: dict[str, Any]) -> None:
        """The trial's entry in TensorBoard's HParams tab: `hparams` (None and lists as text)
        beside the finite numbers among `metrics`, written as scalars under
        HPARAMS_METRIC_PREFIX, so that TensorBoard compares the trials of an experiment.

        Only the session summaries: TensorBoard takes the first experiment summary it finds
        for all runs, and one trial's (a diverged trial has no metrics) would hide the
        others' columns; without one it builds the table from every trial's."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        values = {
            key: value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
            for key, value in hparams.items()
        }
        finals = {
            f"{HPARAMS_METRIC_PREFIX}{key}": float(value)
            for key, value in metrics.items()
            if "/" in key
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
        }
        _, session_start, session_end = hparams_summaries(values, finals)
        for summary in (session_start, session_end):
            self.writer.file_writer.add_summary(summary)
        for tag, value in finals.items():
            self.writer.add_scalar(tag, value)

    def sync(self) -> None:
        if self._writer is not None:
            self._writer.flush()
        if self.target is None:
            return
        if self.filesystem is None:
            shutil.copytree(self.local, self.target, dirs_exist_ok=True)
            return
        import pyarrow.fs

        self.filesystem.create_dir(self.target, recursive=True)
        pyarrow.fs.copy_files(
            str(self.local),
            self.target,
            source_filesystem=pyarrow.fs.LocalFileSystem(),
            destination_filesystem=self.filesystem,
        )

    def read_target(self, name: str) -> str | None:
        """A file already in the trial's storage (left there by an earlier attempt), if any."""
        if self.target is None:
            return None
        path = f"{self.target}/{name}"
        try:
            if self.filesystem is None:
                return Path(path).read_text(encoding="utf-8")
            with self.filesystem.open_input_stream(path) as stream:
                return stream.read().decode("utf-8")
        except (FileNotFoundError, OSError):
            return None

    def record_start(self, workers: list[dict[str, Any]]) -> None:
        """Append this start of the worker group to `workers.json` and sync it at once, so
        that a worker can be found (and killed) by pid while it trains, and a restart by Ray
        Train shows as a second entry in "starts"."""
        previous: dict[str, Any] = {}
        with contextlib.suppress(ValueError, TypeError):
            previous = json.loads(self.read_target(WORKERS_FILE) or "{}")
        starts = previous.get("starts") if isinstance(previous, dict) else None
        starts = starts if isinstance(starts, list) else []
        starts.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "workers": workers})
        atomic_write_json(self.local / WORKERS_FILE, {"starts": starts})
        self.sync()

    def exploits(self, new: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The trial's own PBT exploits so far (`PBT_EXPLOITS_FILE`), with `new` appended to
        the file and synced at once when given."""
        previous: Any = []
        with contextlib.suppress(ValueError, TypeError):
            previous = json.loads(self.read_target(PBT_EXPLOITS_FILE) or "[]")
        exploits = previous if isinstance(previous, list) else []
        if new is not None:
            exploits.append(new)
            atomic_write_json(self.local / PBT_EXPLOITS_FILE, exploits)
            self.sync()
        return exploits

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.sync()
        shutil.rmtree(self.local, ignore_errors=True)


def gather_to_rank0(session: Session, payload: Any) -> list[Any] | None:
    """Every rank's payload on rank 0, in rank order; None on the other ranks."""
    if session.world_size == 1:
        return [payload]
    import torch.distributed as dist

    out: list[Any] | None = [None] * session.world_size if session.rank == 0 else None
    dist.gather_object(payload, out, dst=0)
    return out


def broadcast_from_rank0(session: Session, payload: Any) -> Any:
    """Rank 0's payload on every rank."""
    if session.world_size == 1:
        return payload
    import torch.distributed as dist

    box = [payload]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_ranks_true(session: Session, flag: bool | torch.Tensor) -> bool:
    """Whether `flag` (a bool, or a one-element tensor on the session's device) is true on
    all ranks: the answer on every rank, read on the host once."""
    value = torch.as_tensor(flag, device=session.device).reshape(1).int()
    if session.world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def broadcast_buffers_from_rank0(session: Session, module: torch.nn.Module) -> None:
    """Rank 0's buffers (running statistics) on every rank, in place."""
    if session.world_size == 1:
        return
    import torch.distributed as dist

    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


class NoGpuError(RuntimeError):
    """A trial asked for a GPU (`use_gpu: true`) where torch has none to give it."""


def check_cuda(use_gpu: bool, device: torch.device) -> None:
    """Refuse to train on the CPU a trial that holds a GPU (a CPU build of torch on this
    node, or a GPU that Ray assigned but torch cannot see): it would run many times slower
    while the GPU idles, with nothing saying so."""
    if not use_gpu or device.type == "cuda":
        return
    build = "a CPU build" if torch.version.cuda is None else "a CUDA build that sees no GPU"
    raise NoGpuError(
        f"use_gpu: true, but torch {torch.__version__} on {socket.gethostname()} is {build}: "
        "install a CUDA build of torch on every node (README: Running on GPUs) or set "
        "use_gpu: false"
    )


@contextlib.contextmanager
def _owned(directory: Path) -> Any:
    """A checkpoint directory handed to a session that persists it synchronously: deleted
    once that is done, or failed."""
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class RaySession:
    """The Ray Train worker's view: rank, world size, device, report and restore. `donated`:
    the checkpoint a run with none of its own starts from (a PBT donor's)."""

    def __init__(
        self, required_metrics: tuple[str, ...] = (), use_gpu: bool = False, donated: Any = None
    ) -> None:
        import ray.train
        import ray.train.torch

        self.required_metrics = required_metrics
        self.donated = donated
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        check_cuda(use_gpu, self.device)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        # Ray Tune fails the whole experiment on a result without its metric (and OptunaSearch
        # indexes it): a report that has none (a diverged trial's final one) carries NaN.
        missing = {key: float("nan") for key in self.required_metrics if key not in metrics}
        self._send({**metrics, **missing}, checkpoint_dir)

    def _send(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """Upload the checkpoint in the background (Train V2's ASYNC mode: BERT-base's
        weights, best weights and optimizer state are ~1.5 GB an epoch, and every rank would
        wait at the next collective while rank 0 uploads); Ray deletes the directory once it
        is uploaded, keeps the reports in order and flushes the uploads before the run ends."""
        import ray.train
        from ray.train import CheckpointUploadMode

        checkpoint = (
            ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        )
        ray.train.report(
            metrics, checkpoint=checkpoint, checkpoint_upload_mode=CheckpointUploadMode.ASYNC
        )

    def _latest(self) -> Any:
        import ray.train

        return ray.train.get_checkpoint() or self.donated

    @contextlib.contextmanager
    def restored(self) -> Iterator[Path | None]:
        """Ray's `as_directory`: a checkpoint on the local filesystem is read where it is; a
        remote one is downloaded to a temporary directory, deleted after the block
        (`to_directory()` left a copy in /tmp at every restore: 100 MB for MiniLM)."""
        checkpoint = self._latest()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


class TuneSession(RaySession):
    """A one-worker trial run inside the Ray Tune trial itself (no Ray Train run): reports and
    checkpoints go straight to Tune, which restores the latest checkpoint on a retry."""

    def __init__(self, required_metrics: tuple[str, ...] = (), use_gpu: bool = False) -> None:
        self.required_metrics = required_metrics
        self.rank = 0
        self.world_size = 1
        # Tune has already narrowed CUDA_VISIBLE_DEVICES to the trial's GPU.
        cuda = use_gpu and torch.cuda.is_available()
        self.device = torch.device("cuda", 0) if cuda else torch.device("cpu")
        check_cuda(use_gpu, self.device)

    def _send(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """Tune persists a trial's checkpoint before `report` returns (no background upload
        for a function trainable): the directory is deleted then."""
        from ray import tune

        if checkpoint_dir is None:
            tune.report(metrics)
            return
        with _owned(checkpoint_dir):
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    def _latest(self) -> Any:
        from ray import tune

        return tune.get_checkpoint()
