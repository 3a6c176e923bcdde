"""One trial: the training recipe that runs on every Ray Train worker (DDP), or in-process.

`TrialRecipe` is the loop in phases, as torchtune's recipes are: `setup` (data, model, the
feature cache of its frozen layers, optimizer, schedule), `restore` (from the session's latest
checkpoint), `train_epoch`, `evaluate` (dev, every rank scoring a disjoint slice; rank 0
gathers the scores, computes the metrics over the whole dev set, the F1 of label sets at
thresholds tuned on it among them, and broadcasts them), then `finish` (the best weights by
dev loss evaluated on test, its F1 at that epoch's dev thresholds, utilization measured on a
fixed dev sample, a final report) or `diverged` (a non-finite loss or weights: a final report
with the reason only). `fit` runs them in order.

What the loop reads is a split's token ids or, with frozen layers, what those layers computed
once (`features.py`: layers k+1.. run on cached states, a head-only model on cached vectors);
training batches group documents of similar length (`data/batching.py`); the parts of a
training step are in `training.py`, scoring a split, its metrics and utilization in
`evaluation.py`, and every file of a checkpoint, its format and the PBT lineage it carries in
`checkpoint.py`.

The recipe talks to the outside world only through a `Session` (rank, world size, report,
restore; `session.py`), so the same code runs under Ray Train (`RaySession`, DDP with gloo on
CPU or NCCL on GPU), inside a one-worker Ray Tune trial (`TuneSession`) and in-process
(`LocalSession`, for benchmarks and tests).
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hiersearch import metrics as M
from hiersearch.data.batching import length_grouped, shard
from hiersearch.data.corpus import SPLITS
from hiersearch.data.encode import EncodedCorpus, Split, load_encoded
from hiersearch.errors import InputError
from hiersearch.model.assignment import resolve_assignment, variant_of
from hiersearch.model.classifier import LayerwiseClassifier
from hiersearch.model.encoder import load_encoder, num_encoder_layers
from hiersearch.trial import checkpoint, training
from hiersearch.trial.checkpoint import EpochCheckpoint, FinalCheckpoint, LoopState
from hiersearch.trial.checkpoint import save_new as _save_checkpoint
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.evaluation import (
    Batches,
    encoder_layers,
    evaluate_split,
    forward_cost,
    model_inputs,
    split_metrics,
    to_device,
    utilization,
)
from hiersearch.trial.features import open_features
from hiersearch.trial.precision import Precision
from hiersearch.trial.session import (
    Artifacts,
    RaySession,
    Session,
    TuneSession,
    all_ranks_true,
    broadcast_buffers_from_rank0,
    broadcast_from_rank0,
    gather_to_rank0,
)
from hiersearch.trial.smart import Smart
from hiersearch.trial.training import EpochTraining, LossTally
from hiersearch.trial.warm_start import start_heads

STOP_COMPLETED = "completed"
STOP_PATIENCE = "patience"
STOP_NAN = "nan_loss"
# A dev loss must fall by more than this to count as an improvement (early stopping).
MIN_IMPROVEMENT = 1e-7


def build_classifier(config: TrialConfig, label_counts: list[int]) -> LayerwiseClassifier:
    """The trial's model, freshly initialized (seeded): what every trial trains and what an
    export loads its weights into."""
    encoder = load_encoder(config.model, seed=config.seed)
    assignment = resolve_assignment(config.assignment, num_encoder_layers(encoder), label_counts)
    return LayerwiseClassifier(
        encoder,
        assignment,
        label_counts,
        config.dropout,
        config.loss_weighting,
        pooling=config.pooling,
        head_norm=config.head_norm,
        head_hidden=config.head_hidden,
        freeze_layers=config.freeze_layers,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TrialRecipe:
    """One trial in phases; `fit` runs them. Every rank runs every phase (DDP)."""

    def __init__(
        self,
        config: TrialConfig,
        session: Session,
        artifacts: Artifacts | None = None,
        *,
        trial_id: str | None = None,
        pbt: bool = False,
    ) -> None:
        self.config = config
        self.session = session
        self.artifacts = artifacts
        # The Tune trial this runs as: a checkpoint that another trial wrote is a PBT exploit.
        self.trial_id = trial_id
        # Population-based training: every report says how the weights came about (pbt/*).
        self.pbt = pbt
        # This trial's own exploits (the lineage in `state.exploits` is its weights').
        self.own_exploits: list[dict[str, Any]] = []
        self.state = LoopState()
        # The best weights when they are not the current ones (dev loss got worse since).
        self.best_weights: dict[str, torch.Tensor] | None = None
        # A copy of the weights of the best epoch so far, taken when it ended: what
        # `best_weights` becomes once a later epoch is worse.
        self._best_copy: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------------------ setup

    def setup(self, encoded: EncodedCorpus | str) -> None:
        """Seed, data, model, optimizer and schedule; the order of these steps fixes what the
        seeded random number generators give each of them."""
        if isinstance(encoded, str):
            encoded = load_encoded(encoded)
        seed_everything(self.config.seed)
        device = self.session.device
        if device.type == "cpu":
            torch.set_num_threads(max(1, int(self.config.cpus_per_worker)))
        training.fresh_device_memory(device)
        self.precision = Precision.of(self.config.precision, device)
        self.precision.apply_matmul_settings()
        self.scaler = self.precision.grad_scaler()
        self.num_labels = encoded.num_labels
        self.core = self._setup_model(encoded.label_counts)
        self.smart = Smart.of(self.core, self.config)
        splits = {name: Split.from_table(encoded.splits[name]) for name in SPLITS}
        self.train_split, self.dev, self.test = (splits[name] for name in SPLITS)
        if len(self.train_split) == 0 or len(self.dev) == 0:
            raise InputError(
                "the corpus needs training and dev documents", where=self.config.corpus
            )
        cached = open_features(encoded, splits, self.config, self.core, self.precision, device)
        # what training and evaluation read: token ids, or what the frozen layers cached
        self.sources: dict[str, Batches] = dict(cached or splits)
        # a head-only trial on cached vectors pads nothing: no batches by length there
        self.pads = cached is None or not self.core.head_only
        self.model: torch.nn.Module = self.core
        if self.session.world_size > 1:
            self.model = training.wrap_ddp(self.core, self.session, self.config.grad_compression)
        self._setup_optimizer()

    def _setup_model(self, label_counts: list[int]) -> LayerwiseClassifier:
        model = build_classifier(self.config, label_counts)
        num_layers, assignment = num_encoder_layers(model.encoder), model.assignment
        # after every seeded draw of the model's: a warm start changes no later draw
        self.warm = start_heads(model, self.config, label_counts)
        self.identity = {
            M.TRIAL_VARIANT: assignment.name or variant_of(assignment, num_layers, label_counts),
            M.TRIAL_ASSIGNMENT: assignment.to_string(),
            M.TRIAL_NODE_ID: self.session.node_id(),
            M.TRIAL_WORLD_SIZE: self.session.world_size,
            **(self.warm.report() if self.warm is not None else {}),
        }
        return model.to(self.session.device)

    def _setup_optimizer(self) -> None:
        """AdamW (new heads at head_lr, trained ones at warm_head_lr; frozen layers left
        out) and a linear schedule with warm-up over all steps."""
        config, device = self.config, self.session.device
        self.optimizer = training.build_optimizer(
            self.core, self.model, config, device, warm=self.warm_heads
        )
        # what clipping reads at every step (`model.parameters()` walks every module, the
        # frozen encoder's too, each time)
        self.trained = [p for p in self.model.parameters() if p.requires_grad]
        self.steps_per_epoch = training.steps_per_epoch(
            config, len(self.train_split), self.session.world_size
        )
        self.scheduler = training.build_schedule(self.optimizer, config, self.steps_per_epoch)

    @property
    def warm_heads(self) -> bool:
        """Whether the heads started trained (`init_heads_from`, trial/warm_start.py)."""
        return self.warm is not None and self.warm.loaded

    def autocast(self) -> Any:
        """The context the model's forward runs in: the trial's precision (on a GPU)."""
        return self.precision.autocast()

    # ---------------------------------------------------------------------------- restore

    def restore(self) -> dict[str, Any] | None:
        """Carry on from the session's latest checkpoint, if any. A trial that had ended when
        its driver was lost (a resumed experiment restarts it) reports its final report again
        instead of training on: returned here, the trial is over."""
        with self.session.restored() as restored:
            if restored is None:
                if self.session.rank == 0 and self.artifacts is not None:
                    checkpoint.write_config(self.artifacts.local, self.config)
                    self.artifacts.writer.add_text("config", f"```\n{self.config.dumps()}\n```")
                return None
            final = checkpoint.read_final_metrics(restored)
            if final is None:
                self._load_checkpoint(restored)
                return None
        self.session.report(final, None)
        if self.artifacts is not None:
            self.artifacts.close()
        return final

    def _load_checkpoint(self, directory: Path) -> None:
        """Weights, optimizer, schedule, loop state and random states of an epoch's
        checkpoint, with this trial's rates over them (`apply_rates`)."""
        device = self.session.device
        self.core.load_state_dict(checkpoint.read_weights(directory, device))
        saved = checkpoint.read_training(directory)
        self.optimizer.load_state_dict(saved.optimizer)
        self.scheduler.load_state_dict(saved.scheduler)
        if self.scaler is not None and saved.scaler:
            self.scaler.load_state_dict(saved.scaler)
        self.state = saved.state
        checkpoint.set_rng_state(saved.rng, device)
        exploit = self.state.exploited(saved.writer, self.trial_id)
        if self.pbt:
            self._record_exploit(exploit)
        training.apply_rates(self.optimizer, self.scheduler, self.config, self.warm_heads)
        if self.smart is not None:
            self.smart.restore(saved.smart_anchor, self.core)
        self.best_weights = saved.best_model
        if saved.best_model is None:  # the checkpoint's own weights are the best
            self._best_copy = self._weights_copy()

    def _record_exploit(self, exploit: dict[str, Any] | None) -> None:
        """This trial's own exploits, `exploit` (if any) appended: kept in its artifacts
        (rank 0), as its checkpoints carry the donor's history after an exploit."""
        if self.artifacts is not None:
            self.own_exploits = self.artifacts.exploits(exploit)
        elif exploit is not None:
            self.own_exploits.append(exploit)

    def _pbt_metrics(self) -> dict[str, Any]:
        """The report's pbt/* keys (`scheduler: pbt` only)."""
        if not self.pbt:
            return {}
        out: dict[str, Any] = {M.PBT_EXPLOITS: len(self.own_exploits)}
        if self.own_exploits:
            out[M.PBT_DONOR] = self.own_exploits[-1]["donor"]
            out[M.PBT_DONOR_EPOCH] = self.own_exploits[-1]["epoch"]
        if self.state.exploits:
            out[M.PBT_LINEAGE] = self.state.lineage()
        return out

    # ------------------------------------------------------------------------------ train

    def train(self) -> dict[str, Any]:
        """Epochs until the last one, early stopping or divergence; the final report."""
        patience = self.config.patience
        for epoch in range(self.state.epoch, self.config.epochs):
            if self.state.bad_epochs >= patience:  # restored after the stopping epoch
                return self.finish(STOP_PATIENCE)
            trained = self.train_epoch(epoch)
            report = self.evaluate(trained) if trained.finite else None
            if report is None:
                return self.diverged(epoch + 1)
            self.end_epoch(epoch, report)
            if self.state.bad_epochs >= patience:
                return self.finish(STOP_PATIENCE)
        return self.finish(STOP_COMPLETED)

    def train_epoch(self, epoch: int) -> EpochTraining:
        """Train on this rank's shard; `finite` is False on every rank if any rank's loss, step
        size or weights went non-finite."""
        config, session = self.config, self.session
        self.model.train()
        batches = self._epoch_batches(epoch)[: self.steps_per_epoch * config.grad_accum]
        out = EpochTraining(batches=len(batches))
        tally = LossTally(session.device)
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        steps = 0
        for i, batch_index in enumerate(batches):
            sync = (i + 1) % config.grad_accum == 0 or i + 1 == len(batches)
            self._forward_backward(batch_index, sync, tally)
            if not sync:
                continue
            self._optimizer_step(tally)
            steps += 1
            # Every rank takes the same steps (`shard`), so every rank checks at the same
            # step and they stop together: a rank that left the loop alone would leave the
            # others waiting in the next gradient all-reduce until NCCL's watchdog fires.
            check = steps % config.divergence_check_steps == 0 and i + 1 < len(batches)
            if check and not all_ranks_true(session, tally.finite()):
                break
        # The last step of an epoch can leave the weights non-finite while every loss so far
        # was finite (dev scores would then be NaN): the weights are checked at every end.
        finite = tally.finite() & training.parameters_finite(self.core)
        out.finite = all_ranks_true(session, finite)
        out.loss = tally.mean()
        out.seconds = time.perf_counter() - started
        out.peak_memory_mb, out.peak_reserved_mb = training.peak_memory_mb(session.device)
        return out

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's training batches of an epoch: its shard of a seeded permutation, in
        batches of similar length drawn from windows of `length_window` batches (or random
        batches: see `TrialConfig.length_window`)."""
        config, session = self.config, self.session
        source = self.sources["train"]
        index = shard(len(source), session.rank, session.world_size, config.seed, epoch)
        window = config.batch_window() if self.pads else 1
        seed = [config.seed, epoch, session.rank]
        return length_grouped(index, source.lengths, config.batch_size, window, seed)

    def _forward_backward(self, batch_index: np.ndarray, sync: bool, tally: LossTally) -> None:
        """One micro-batch's loss, its gradients accumulated. A non-finite loss still goes
        through backward: under DDP every rank must join every gradient all-reduce (the step
        is then wasted and the next divergence check stops all ranks)."""
        batch = to_device(
            self.sources["train"].batch(batch_index, self.num_labels), self.session.device
        )
        with training.no_sync(self.model, not sync), self.autocast():
            inputs = model_inputs(batch)
            logits = self.model(**inputs)
            loss = self.core.loss(logits, batch["labels"])
            tally.add(loss.detach())  # the task's loss: comparable with or without SMART
            if self.smart is not None:
                penalty = self.smart.penalty(self.core, inputs, logits)
                tally.expect_finite(penalty.detach())
                loss = loss + penalty
        loss = loss / self.config.grad_accum
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def _optimizer_step(self, tally: LossTally) -> None:
        """Clip, step, schedule. Under fp16 the GradScaler skips a step whose gradients
        overflowed and lowers its scale (that is no divergence); otherwise a non-finite
        gradient norm counts as one."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.config.max_grad_norm > 0:
            norm = training.clip_gradients(self.trained, self.config.max_grad_norm)
            if self.scaler is None:
                tally.expect_finite(norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif not training.optimizer_step(self.optimizer):
            tally.host_ok = False
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.smart is not None:
            self.smart.step(self.core)
        self.state.global_step += 1

    # --------------------------------------------------------------------------- evaluate

    def evaluate(self, trained: EpochTraining) -> dict[str, Any] | None:
        """This epoch's dev and training metrics on every rank; None when the dev scores are
        not finite (finite weights whose activations overflow)."""
        # Each rank updated its own running statistics (a batchnorm head) with its own last
        # batch: every rank scores dev with rank 0's, the ones its checkpoint keeps.
        broadcast_buffers_from_rank0(self.session, self.core)
        dev, seconds = self._evaluate_split(self.sources["dev"])
        report: dict[str, Any] = {}
        if dev is not None and np.isnan(dev[0]).any():
            report = {M.TRIAL_STOP_REASON: STOP_NAN}
        elif dev is not None:
            report = split_metrics(dev, self.core.level_slices, "dev")
            report.update(self._training_metrics(trained))
            report[M.eval_seconds_key("dev")] = seconds
        report = broadcast_from_rank0(self.session, report)
        return None if report.get(M.TRIAL_STOP_REASON) == STOP_NAN else report

    def _evaluate_split(
        self, split: Batches
    ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray] | None, float]:
        """`evaluate_split` on this trial's model, and its wall seconds (`*/eval_s`)."""
        started = time.perf_counter()
        result = evaluate_split(
            self.model, split, self.num_labels, self.session,
            self.config.eval_batch_size, self.autocast,
        )
        return result, time.perf_counter() - started

    def _training_metrics(self, trained: EpochTraining) -> dict[str, Any]:
        samples = trained.batches * self.config.batch_size * self.session.world_size
        return {
            M.loss_key("train"): trained.loss,
            M.SAMPLES_PER_SECOND: samples / max(trained.seconds, 1e-9),
            M.LEARNING_RATE: self.scheduler.get_last_lr()[0],
            M.TRAIN_STEP: self.state.global_step,
            M.EPOCH_SECONDS: trained.seconds,
            M.PEAK_MEMORY_MB: trained.peak_memory_mb,
            M.PEAK_RESERVED_MB: trained.peak_reserved_mb,
        }

    def end_epoch(self, epoch: int, report: dict[str, Any]) -> None:
        """Early-stopping bookkeeping, then the epoch's report with its checkpoint."""
        self._track_best(epoch, report)
        report.update(self.identity)
        # known from the start, so that a scheduler can stop trials on it (MO-ASHA)
        report[M.COST_ENCODER_LAYERS] = encoder_layers(self.core)
        report.update({M.EPOCH: epoch + 1, M.TRIAL_FINAL: 0})
        report.update(self._pbt_metrics())
        if self.session.rank == 0 and self.artifacts is not None:
            for key, value in report.items():
                if isinstance(value, (int, float)) and "/" in key:
                    self.artifacts.writer.add_scalar(key, value, epoch + 1)
            self.artifacts.sync()
        self._report(report, self._epoch_checkpoint)

    def _track_best(self, epoch: int, report: dict[str, Any]) -> None:
        state = self.state
        dev_loss = report[M.loss_key("dev")]
        state.epoch = epoch + 1
        if dev_loss < state.best_dev_loss - MIN_IMPROVEMENT:
            state.best_dev_loss, state.best_epoch, state.bad_epochs = dev_loss, epoch + 1, 0
            # the final report carries them: whatever metric a search optimizes is in it
            state.best_metrics = {
                k: v for k, v in report.items() if k.startswith(("dev/", "train/"))
            }
            # the current weights are the best: a copy, as the next epoch changes them
            self.best_weights, self._best_copy = None, self._weights_copy()
            return
        state.bad_epochs += 1
        if self.best_weights is None:
            self.best_weights = self._best_copy

    def _weights_copy(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.core.state_dict().items()}

    def _epoch_checkpoint(self) -> EpochCheckpoint:
        training_state = checkpoint.TrainingState(
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=None if self.scaler is None else self.scaler.state_dict(),
            state=self.state,
            rng=checkpoint.rng_state(self.session.device),
            writer=self.trial_id,  # read back by an exploiting trial
            # the current weights are not the best ones: both are kept
            best_model=self.best_weights,
            smart_anchor=None if self.smart is None else self.smart.anchor_state(),
        )
        return EpochCheckpoint(self.core.state_dict(), training_state)

    def _report(
        self,
        metrics: dict[str, Any],
        content: Callable[[], EpochCheckpoint | FinalCheckpoint] | None,
    ) -> None:
        """Report `metrics` with a checkpoint of `content`, written by rank 0 (the other ranks
        report none) into a new directory that the session owns from then on: it deletes the
        directory once the checkpoint is persisted, which a Ray Train worker does in the
        background while training goes on."""
        checkpoint_dir = None
        if content is not None and self.session.rank == 0:
            # (bench/_timing.py times the writes by the name `_save_checkpoint`)
            checkpoint_dir = _save_checkpoint(content(), self.config)
        self.session.report(metrics, checkpoint_dir)

    # ----------------------------------------------------------------------------- finish

    def finish(self, stop_reason: str) -> dict[str, Any]:
        """The best weights on test, utilization, and the final report with its checkpoint."""
        if self.best_weights is not None:
            device = self.session.device
            self.core.load_state_dict({k: v.to(device) for k, v in self.best_weights.items()})
        test, seconds = self._evaluate_split(self.sources["test"])
        final = broadcast_from_rank0(self.session, self._test_metrics(test, seconds))
        final.update(self.state.best_metrics)
        final.update(self.identity)
        final.update(
            {
                M.EPOCH: self.state.epoch,
                M.TRIAL_BEST_EPOCH: self.state.best_epoch,
                M.TRIAL_STOP_REASON: stop_reason,
                M.TRIAL_FINAL: 1,
            }
        )
        final.update(self._pbt_metrics())
        scores = None
        if self.config.keep_scores:  # what ensembles fit on (checkpoint.SCORES_FILE)
            dev, _ = self._evaluate_split(self.sources["dev"])  # the best epoch's are gone
            scores = None if dev is None or test is None else {"dev": dev[0], "test": test[0]}
        saved = FinalCheckpoint(model=self.core.state_dict(), metrics=final, scores=scores)
        self._close_artifacts(final)
        self._report(final, lambda: saved)
        return final

    def _test_metrics(self, test: tuple | None, seconds: float) -> dict[str, Any]:
        """Test metrics of the scored test split (F1 at the best epoch's dev thresholds) and
        utilization, on rank 0 ({} on the others)."""
        out: dict[str, Any] = {}
        if test is not None and len(self.test) > 0:
            thresholds = self.dev_thresholds()
            out.update(split_metrics(test, self.core.level_slices, "test", thresholds))
            out[M.eval_seconds_key("test")] = seconds
        if self.session.rank == 0:
            out.update(
                forward_cost(
                    self.core, self.dev, self.num_labels, self.session.device,
                    self.config.eval_batch_size, self.autocast,
                )
            )
        if self.session.rank == 0 and self.config.util_docs > 0:
            with self.autocast():  # what the trial's model computes, in its precision
                util = utilization(
                    self.core, self.dev, self.config, self.session, self.artifacts
                )
            out.update(util)
        return out

    def dev_thresholds(self) -> list[float] | None:
        """Each level's F1 threshold tuned on dev at the best epoch (its report carries them);
        None for a best epoch reported by a version without F1 (a resumed older trial)."""
        return M.f1_thresholds(self.state.best_metrics, len(self.core.level_slices))

    def diverged(self, epoch: int) -> dict[str, Any]:
        """The final report of a trial whose loss or weights went non-finite: no metrics and no
        checkpoint, just the reason."""
        final = {**self.identity, M.EPOCH: epoch, M.TRIAL_STOP_REASON: STOP_NAN, M.TRIAL_FINAL: 1}
        self.session.report(final, None)
        # Ray Train V2 keeps only the metrics that come with a checkpoint: its Train controller
        # learns why the trial stopped from the artifacts' copy (as for a completed trial).
        self._close_artifacts(final)
        return final

    def _close_artifacts(self, final: dict[str, Any]) -> None:
        if self.session.rank == 0 and self.artifacts is not None:
            checkpoint.write_final_metrics(self.artifacts.local, final)
            self.artifacts.write_hparams(self.config.to_json(), final)
            self.artifacts.close()


def fit(
    config: TrialConfig,
    encoded: EncodedCorpus | str,
    session: Session,
    artifacts: Artifacts | None = None,
    *,
    trial_id: str | None = None,
    pbt: bool = False,
) -> dict[str, Any]:
    """Train one trial to the end; returns the final report (rank 0's view). `trial_id`:
    the Tune trial it runs as; `pbt`: population-based training (see `TrialRecipe`)."""
    recipe = TrialRecipe(config, session, artifacts, trial_id=trial_id, pbt=pbt)
    recipe.setup(encoded)
    ended = recipe.restore()
    return ended if ended is not None else recipe.train()


def train_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """`train_loop_per_worker` for `TorchTrainer`: builds the session and runs `fit`."""
    config = TrialConfig.from_dict(loop_config["trial"])
    required = tuple(loop_config.get("required_metrics") or ())
    session = RaySession(required, use_gpu=config.use_gpu, donated=loop_config.get("donated"))
    return _run(loop_config, session)


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
    workers = gather_to_rank0(session, me)
    if artifacts is not None and workers is not None:
        artifacts.record_start(workers)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return fit(
        config,
        loop_config["encoded"],
        session,
        artifacts,
        trial_id=loop_config.get("trial_id"),
        pbt=bool(loop_config.get("pbt")),
    )
