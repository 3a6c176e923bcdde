"""One trial: the training loop that runs on every Ray Train worker (DDP), or in-process.

`fit` is the loop itself. It talks to the outside world only through a `Session` (rank, world
size, report, restore; `session.py`), so the same code runs under Ray Train (`RaySession`, DDP
with gloo on CPU or NCCL on GPU), inside a one-worker Ray Tune trial (`TuneSession`) and
in-process (`LocalSession`, for benchmarks and tests).

Per epoch: train on this worker's shard, evaluate dev on every rank (each rank scores a
disjoint slice; rank 0 gathers the scores, computes the metrics over the whole dev set and
broadcasts them), report the metrics with a checkpoint, and stop early when the dev loss has
not improved for `patience` epochs. At the end: the best weights (by dev loss) are evaluated on
test, utilization is measured on a fixed dev sample, and a final report carries all of it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hiersearch.data.encode import EncodedCorpus, Split, load_encoded
from hiersearch.errors import InputError
from hiersearch.files import atomic_write_json, atomic_write_text
from hiersearch.metrics import ranking as M
from hiersearch.model.assignment import LayerAssignment, named_variant
from hiersearch.model.classifier import LayerwiseClassifier
from hiersearch.model.encoder import load_encoder, num_encoder_layers
from hiersearch.model.utilization import heatmap_figure, measure_utilization, save_heatmap
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.session import (  # noqa: F401  (re-exported: the loop's runners)
    WORKERS_FILE,
    Artifacts,
    LocalSession,
    RaySession,
    Session,
    TuneSession,
    _all_ranks_true,
    _broadcast_from_rank0,
    _gather_to_rank0,
)

STOP_COMPLETED = "completed"
STOP_PATIENCE = "patience"
STOP_NAN = "nan_loss"
# Fixed seed of the dev sample for utilization: the same documents for every trial.
UTIL_SAMPLE_SEED = 1234


def resolve_assignment(spec: str, num_layers: int, label_counts: list[int]) -> LayerAssignment:
    """A variant name ("LAST-SIX") or a string ("L1:7|L2:8") -> a validated assignment."""
    if spec.upper() == "FLAT" or ":" not in spec:
        assignment = named_variant(spec.upper(), num_layers, len(label_counts), label_counts)
    else:
        assignment = LayerAssignment.from_string(spec)
    assignment.validate(num_layers, len(label_counts))
    return assignment


def variant_of(
    assignment: LayerAssignment, num_layers: int, label_counts: list[int]
) -> str | None:
    """The named variant equal to `assignment`, if any (so searched points get names too)."""
    from hiersearch.model.assignment import named_variants

    with contextlib.suppress(InputError):
        for name, variant in named_variants(num_layers, len(label_counts), label_counts).items():
            if variant == assignment:
                return name
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _shard(n: int, rank: int, world: int, seed: int, epoch: int) -> np.ndarray:
    """This rank's training indices for an epoch: a seeded permutation, padded by wrapping so
    every rank takes the same number of steps (as DistributedSampler does)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    per_rank = math.ceil(n / world)
    order = np.resize(order, per_rank * world)
    return order[rank::world]


def _batches(index: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(index), size):
        yield index[start : start + size]


@dataclass
class _State:
    epoch: int = 0  # epochs completed
    best_dev_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    best_metrics: dict[str, Any] = field(default_factory=dict)
    global_step: int = 0


def _unwrap(model: torch.nn.Module) -> LayerwiseClassifier:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


@torch.no_grad()
def evaluate_split(
    model: torch.nn.Module,
    split: Split,
    num_labels: int,
    session: Session,
    batch_size: int,
    autocast: Callable[[], Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Score a whole split with every rank taking a disjoint slice; rank 0 gets (scores in
    document order, gold multi-hot, per-document loss), other ranks None."""
    core = _unwrap(model)
    was_training = model.training
    model.eval()
    index = np.arange(session.rank, len(split), session.world_size)
    scores, golds, losses = [], [], []
    for batch_index in _batches(index, batch_size):
        batch = split.batch(batch_index, num_labels)
        with autocast():
            logits = core(
                batch["input_ids"].to(session.device), batch["attention_mask"].to(session.device)
            ).float()
        labels = batch["labels"].to(session.device)
        per_label = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, labels, reduction="none"
        )
        per_doc = sum(
            w * per_label[:, s].mean(dim=1)
            for w, s in zip(core.weights, core.level_slices, strict=True)
        )
        scores.append(logits.cpu().numpy())
        golds.append(batch["labels"].numpy().astype(np.uint8))
        losses.append(per_doc.cpu().numpy())
    model.train(was_training)
    empty = np.zeros((0, num_labels), dtype=np.float32)
    mine = (
        index,
        np.concatenate(scores) if scores else empty,
        np.concatenate(golds) if golds else empty.astype(np.uint8),
        np.concatenate(losses) if losses else np.zeros(0, dtype=np.float32),
    )
    parts = _gather_to_rank0(session, mine)
    if parts is None:
        return None
    order = np.concatenate([p[0] for p in parts])
    inverse = np.argsort(order, kind="stable")
    return (
        np.concatenate([p[1] for p in parts])[inverse],
        np.concatenate([p[2] for p in parts])[inverse],
        np.concatenate([p[3] for p in parts])[inverse],
    )


def split_metrics(
    result: tuple[np.ndarray, np.ndarray, np.ndarray], level_slices: list[slice], split: str
) -> dict[str, float]:
    scores, gold, per_doc_loss = result
    out = M.evaluate(
        [gold[:, s] for s in level_slices], [scores[:, s] for s in level_slices], split
    )
    out[M.loss_key(split)] = float(per_doc_loss.mean()) if len(per_doc_loss) else float("nan")
    return out


def _save_checkpoint(
    directory: Path,
    model: LayerwiseClassifier,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: _State,
    config: TrialConfig,
    best_weights: dict[str, torch.Tensor] | None,
) -> None:
    torch.save(model.state_dict(), directory / "model.pt")
    if best_weights is not None:  # current weights are not the best ones: keep both
        torch.save(best_weights, directory / "best_model.pt")
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "state": state.__dict__,
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
            },
        },
        directory / "train_state.pt",
    )
    atomic_write_text(directory / "config.json", config.dumps())


def fit(
    config: TrialConfig,
    encoded: EncodedCorpus | str,
    session: Session,
    artifacts: Artifacts | None = None,
) -> dict[str, Any]:
    """Train one trial to the end; returns the final report (rank 0's view)."""
    if isinstance(encoded, str):
        encoded = load_encoded(encoded)
    seed_everything(config.seed)
    if session.device.type == "cpu":
        torch.set_num_threads(max(1, int(config.cpus_per_worker)))
    label_counts = encoded.label_counts
    num_labels = encoded.num_labels
    encoder = load_encoder(config.model, seed=config.seed)
    num_layers = num_encoder_layers(encoder)
    assignment = resolve_assignment(config.assignment, num_layers, label_counts)
    variant = assignment.name or variant_of(assignment, num_layers, label_counts)
    model = LayerwiseClassifier(
        encoder, assignment, label_counts, config.dropout, config.loss_weighting
    ).to(session.device)
    train, dev, test = (Split.from_table(encoded.splits[s]) for s in ("train", "dev", "test"))
    if len(train) == 0 or len(dev) == 0:
        raise InputError("the corpus needs training and dev documents", where=config.corpus)

    if session.world_size > 1:
        model = _wrap_ddp(model, session)
    core = _unwrap(model)
    heads = {id(p) for p in core.heads.parameters()}
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in model.parameters() if id(p) not in heads]},
            {"params": list(core.heads.parameters()), "lr": config.head_lr or config.lr},
        ],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    micro_batches = math.ceil(math.ceil(len(train) / session.world_size) / config.batch_size)
    steps_per_epoch = max(1, micro_batches // config.grad_accum)
    if config.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    total_steps = steps_per_epoch * config.epochs
    warmup = int(config.warmup_ratio * total_steps)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    use_bf16 = config.bf16 and session.device.type == "cuda"

    def autocast() -> Any:
        if use_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    state = _State()
    best_weights: dict[str, torch.Tensor] | None = None
    restored = session.restore()
    if restored is not None and (restored / "final_metrics.json").is_file():
        # The trial had finished when its driver was lost (a resumed experiment restarts it):
        # hand its final report over again instead of training on.
        saved_final = json.loads((restored / "final_metrics.json").read_text(encoding="utf-8"))
        # the file is strict JSON (a non-finite value is null there): report it as it was
        final_again = {k: math.nan if v is None else v for k, v in saved_final.items()}
        session.report(final_again, None)
        if artifacts is not None:
            artifacts.close()
        return final_again
    if restored is not None:
        core.load_state_dict(torch.load(restored / "model.pt", map_location=session.device))
        saved = torch.load(restored / "train_state.pt", weights_only=False)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = _State(**saved["state"])
        random.setstate(saved["rng"]["python"])
        np.random.set_state(saved["rng"]["numpy"])
        torch.set_rng_state(saved["rng"]["torch"])
        best_file = restored / "best_model.pt"
        source = best_file if best_file.exists() else restored / "model.pt"
        best_weights = torch.load(source, map_location="cpu")
    elif session.rank == 0 and artifacts is not None:
        atomic_write_text(artifacts.local / "config.json", config.dumps())
        artifacts.writer.add_text("config", f"```\n{config.dumps()}\n```")

    identity = {
        M.TRIAL_VARIANT: variant,
        M.TRIAL_ASSIGNMENT: assignment.to_string(),
        M.TRIAL_NODE_ID: session.node_id(),
        M.TRIAL_WORLD_SIZE: session.world_size,
    }
    stop_reason = STOP_COMPLETED
    final_nan: dict[str, Any] = {}
    for epoch in range(state.epoch, config.epochs):
        if state.bad_epochs >= config.patience:  # restored after the stopping epoch
            stop_reason = STOP_PATIENCE
            break
        model.train()
        shard = _shard(len(train), session.rank, session.world_size, config.seed, epoch)
        batches = list(_batches(shard, config.batch_size))[: steps_per_epoch * config.grad_accum]
        loss_sum, loss_count, finite = 0.0, 0, True
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for i, batch_index in enumerate(batches):
            batch = split_to_device(train.batch(batch_index, num_labels), session.device)
            sync = (i + 1) % config.grad_accum == 0 or i + 1 == len(batches)
            with _no_sync(model, not sync), autocast():
                logits = model(batch["input_ids"], batch["attention_mask"])
                loss = core.loss(logits, batch["labels"])
            if not torch.isfinite(loss.detach()):
                finite = False
                break
            (loss / config.grad_accum).backward()
            loss_sum += float(loss.detach())
            loss_count += 1
            if sync:
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                if not _optimizer_step(optimizer):
                    finite = False
                    break
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.global_step += 1
        # The last step of an epoch can leave the weights non-finite while every loss so far
        # was finite (dev scores would then be NaN): check the weights once per epoch.
        finite = _all_ranks_true(session, finite and _parameters_finite(core))
        elapsed = time.perf_counter() - started
        if not finite:
            stop_reason = STOP_NAN
            final_nan = _report_non_finite(session, identity, epoch + 1)
            break
        dev_result = evaluate_split(
            model, dev, num_labels, session, config.eval_batch_size, autocast
        )
        report: dict[str, Any] = {}
        if dev_result is not None and np.isnan(dev_result[0]).any():
            report = {M.TRIAL_STOP_REASON: STOP_NAN}  # finite weights, overflowing activations
        elif dev_result is not None:
            report = split_metrics(dev_result, core.level_slices, "dev")
            report[M.loss_key("train")] = loss_sum / max(1, loss_count)
            report[M.SAMPLES_PER_SECOND] = (
                len(batches) * config.batch_size * session.world_size / max(elapsed, 1e-9)
            )
            report[M.LEARNING_RATE] = scheduler.get_last_lr()[0]
            report[M.TRAIN_STEP] = state.global_step
        report = _broadcast_from_rank0(session, report)
        if report.get(M.TRIAL_STOP_REASON) == STOP_NAN:
            stop_reason = STOP_NAN
            final_nan = _report_non_finite(session, identity, epoch + 1)
            break
        dev_loss = report[M.loss_key("dev")]
        state.epoch = epoch + 1
        improved = dev_loss < state.best_dev_loss - 1e-7
        if improved:
            state.best_dev_loss, state.best_epoch, state.bad_epochs = dev_loss, epoch + 1, 0
            state.best_metrics = {k: v for k, v in report.items() if k.startswith("dev/")}
            best_weights = None
        else:
            state.bad_epochs += 1
            if best_weights is None:
                best_weights = {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
        report.update(identity)
        report.update({M.EPOCH: epoch + 1, M.TRIAL_FINAL: 0})
        if session.rank == 0 and artifacts is not None:
            for key, value in report.items():
                if isinstance(value, (int, float)) and "/" in key:
                    artifacts.writer.add_scalar(key, value, epoch + 1)
            artifacts.sync()
        with tempfile.TemporaryDirectory(prefix="hiersearch-ckpt-") as tmp:
            checkpoint_dir = None
            if session.rank == 0:
                checkpoint_dir = Path(tmp)
                _save_checkpoint(
                    checkpoint_dir, core, optimizer, scheduler, state, config, best_weights
                )
            session.report(report, checkpoint_dir)
        if state.bad_epochs >= config.patience:
            stop_reason = STOP_PATIENCE
            break

    if stop_reason == STOP_NAN:
        # Ray Train V2 keeps only the metrics that come with a checkpoint: the trial's driver
        # learns why the trial stopped from this file (as for a completed trial).
        if session.rank == 0 and artifacts is not None:
            atomic_write_json(artifacts.local / "final_metrics.json", _jsonable(final_nan))
            artifacts.close()
        return final_nan
    if best_weights is not None:
        core.load_state_dict({k: v.to(session.device) for k, v in best_weights.items()})
    final: dict[str, Any] = {}
    test_result = evaluate_split(
        model, test, num_labels, session, config.eval_batch_size, autocast
    )
    if test_result is not None and len(test) > 0:
        final.update(split_metrics(test_result, core.level_slices, "test"))
    if session.rank == 0 and config.util_docs > 0:
        final.update(_utilization(core, dev, config, session, artifacts))
    final = _broadcast_from_rank0(session, final)
    final.update(state.best_metrics)
    final.update(identity)
    final.update(
        {
            M.EPOCH: state.epoch,
            M.TRIAL_BEST_EPOCH: state.best_epoch,
            M.TRIAL_STOP_REASON: stop_reason,
            M.TRIAL_FINAL: 1,
        }
    )
    with tempfile.TemporaryDirectory(prefix="hiersearch-ckpt-") as tmp:
        checkpoint_dir = None
        if session.rank == 0:
            checkpoint_dir = Path(tmp)
            torch.save(core.state_dict(), checkpoint_dir / "model.pt")
            atomic_write_text(checkpoint_dir / "config.json", config.dumps())
            atomic_write_json(checkpoint_dir / "final_metrics.json", _jsonable(final))
            if artifacts is not None:
                atomic_write_json(artifacts.local / "final_metrics.json", _jsonable(final))
                artifacts.close()
        session.report(final, checkpoint_dir)
    return final


def _utilization(
    core: LayerwiseClassifier,
    dev: Split,
    config: TrialConfig,
    session: Session,
    artifacts: Artifacts | None,
) -> dict[str, float]:
    count = min(config.util_docs, len(dev))
    index = np.sort(np.random.default_rng(UTIL_SAMPLE_SEED).permutation(len(dev))[:count])
    batch = dev.inputs(index)
    util = measure_utilization(
        core.encoder,
        batch["input_ids"].to(session.device),
        batch["attention_mask"].to(session.device),
    )
    if artifacts is not None:
        atomic_write_json(artifacts.local / "utilization.json", util.to_json())
        ticks = [str(i + 1) for i in range(util.cls_angle.shape[0])]
        for name, matrix, title in (
            ("cls_angle", util.cls_angle, "[CLS] angular distance between layers"),
            ("attention_kl", util.layer_kl, "KL divergence of attention between layers"),
        ):
            save_heatmap(matrix, artifacts.local / f"{name}.png", title, ticks)
            artifacts.writer.add_figure(
                f"utilization/{name}", heatmap_figure(matrix, title, ticks)
            )
    return util.scalar_metrics()


def split_to_device(
    batch: dict[str, torch.Tensor], device: torch.device
) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _wrap_ddp(model: torch.nn.Module, session: Session) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [session.device.index] if session.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _no_sync(model: torch.nn.Module, skip: bool) -> Any:
    if skip and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def _optimizer_step(optimizer: torch.optim.Optimizer) -> bool:
    """One optimizer step; False when the step size itself overflows float32.

    Adam turns an absurd learning rate (around 1e38) into a step size that torch cannot
    convert to float and raises; that is the same divergence as a non-finite loss, and
    retrying it (Ray Train's FailureConfig) would only fail again."""
    try:
        optimizer.step()
    except RuntimeError as exc:
        if "without overflow" not in str(exc):
            raise
        return False
    return True


def _parameters_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _report_non_finite(session: Session, identity: dict[str, Any], epoch: int) -> dict[str, Any]:
    """The final report of a diverged trial: no metrics and no checkpoint, just the reason."""
    final = {**identity, M.EPOCH: epoch, M.TRIAL_STOP_REASON: STOP_NAN, M.TRIAL_FINAL: 1}
    session.report(final, None)
    return final


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = None
        elif isinstance(value, (np.floating, np.integer)):
            out[key] = value.item()
        else:
            out[key] = value
    return out


def train_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """`train_loop_per_worker` for `TorchTrainer`: builds the session and runs `fit`."""
    return _run(loop_config, RaySession(tuple(loop_config.get("required_metrics") or ())))


def tune_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """A one-worker trial in the Tune trial's own process: the same loop as `train_worker`."""
    config = TrialConfig.from_dict(loop_config["trial"])
    required = tuple(loop_config.get("required_metrics") or ())
    return _run(loop_config, TuneSession(required, use_gpu=config.use_gpu))


def _run(loop_config: dict[str, Any], session: RaySession) -> dict[str, Any]:
    config = TrialConfig.from_dict(loop_config["trial"])
    artifacts = None
    if session.rank == 0:
        artifacts = Artifacts(loop_config.get("artifacts_path"), loop_config.get("filesystem"))
    me = {
        "rank": session.rank,
        "pid": os.getpid(),
        "node_id": session.node_id(),
        "hostname": socket.gethostname(),
    }
    workers = _gather_to_rank0(session, me)
    if artifacts is not None and workers is not None:
        artifacts.record_start(workers)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return fit(config, loop_config["encoded"], session, artifacts)
