"""The parts of a training step that the recipe (`recipe.py`) puts together: the optimizer and
its schedule (and a restored one set to this trial's rates), the step itself, DDP, the
divergence tally of the loss, the device's memory figures, and what an epoch's training
gives the recipe's evaluation (`EpochTraining`)."""

from __future__ import annotations

import contextlib
import math
import resource
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import get_linear_schedule_with_warmup

from hiersearch.model.classifier import LayerwiseClassifier
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.session import Session

# Devices where AdamW runs torch's fused kernel (`build_optimizer`).
FUSED_DEVICES = ("cuda", "cpu")


@dataclass
class EpochTraining:
    """One epoch's training on this rank."""

    batches: int
    loss: float = math.nan  # the mean training loss of its micro-batches
    finite: bool = True
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    peak_reserved_mb: float = 0.0


class LossTally:
    """The training loss summed where it is computed, and whether anything went non-finite.

    Nothing here reads a tensor on the host: `float(loss)` or `if torch.isfinite(loss)` after
    every micro-batch would make the CPU wait for the GPU queue to drain each time. The host
    reads `finite()` at the divergence checks (through `all_ranks_true`) and `mean()` at the
    epoch's end only."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.bad = torch.zeros((), dtype=torch.int32, device=device)
        self.count = 0
        # a failure the host saw itself (Adam's step size overflowing float32)
        self.host_ok = True

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss
        self.count += 1
        self.expect_finite(loss)

    def expect_finite(self, value: torch.Tensor) -> None:
        self.bad += (~torch.isfinite(value)).int()

    def finite(self) -> torch.Tensor:
        """On the device: whether every loss and checked value so far was finite."""
        ok = self.bad == 0
        return ok if self.host_ok else torch.zeros_like(ok)

    def mean(self) -> float:
        return float(self.loss_sum) / max(1, self.count)


def head_rate(config: TrialConfig, warm: bool) -> float:
    """The heads' peak rate: `warm_head_lr` (null: `lr`) for heads that start trained
    (trial/warm_start.py), `head_lr` (null: `lr`) for new ones."""
    if warm:
        return config.warm_head_lr or config.lr
    return config.head_lr or config.lr


def build_optimizer(
    core: LayerwiseClassifier,
    model: torch.nn.Module,
    config: TrialConfig,
    device: torch.device,
    warm: bool = False,
) -> torch.optim.Optimizer:
    """AdamW: the encoder's trainable parameters at lr, the heads at `head_rate` (frozen
    layers left out). `model`: what trains (`core` itself, or its DDP wrapper); `warm`: the
    heads start trained."""
    heads = list(core.heads.parameters())
    head_ids = {id(p) for p in heads}
    encoder = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    return torch.optim.AdamW(
        [
            {"params": encoder},
            {"params": heads, "lr": head_rate(config, warm)},
        ],
        lr=config.lr,
        weight_decay=config.weight_decay,
        # One pass over each parameter's memory (AdamW's math, up to rounding), where the
        # for-loop AdamW makes about ten with two temporaries: on the CPU it took two fifths
        # of a head-only step at 10,000 labels (bench/head_speed.py). On a GPU one kernel for
        # all parameters, and with fp16's GradScaler a skipped step decided on the device.
        fused=device.type in FUSED_DEVICES,
    )


def clip_gradients(parameters: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`clip_grad_norm_`: the gradients' total norm, and the gradients scaled down to
    `max_norm` when it is over. torch scales them by min(1, max_norm / norm) at every step so
    that a GPU never waits for the host; on the CPU nothing waits, and a step within the norm
    (most steps of a head-only trial) keeps its gradients as they are instead of multiplying
    each by 1.0: the same gradients, one pass less over the heads' memory."""
    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    # torch's own coefficient, compared as torch's clamp would (a NaN norm still scales)
    if norm.device.type == "cpu" and bool(max_norm / (norm + 1e-6) >= 1.0):
        return norm
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    return norm


def steps_per_epoch(config: TrialConfig, train_docs: int, world_size: int) -> int:
    """Optimizer steps in an epoch on every rank (`max_steps_per_epoch` at most)."""
    per_rank = math.ceil(train_docs / world_size)
    micro_batches = math.ceil(per_rank / config.batch_size)
    steps = max(1, micro_batches // config.grad_accum)
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)
    return steps


def build_schedule(
    optimizer: torch.optim.Optimizer, config: TrialConfig, steps_per_epoch: int
) -> Any:
    """A linear schedule with warm-up over all of the trial's steps."""
    total_steps = steps_per_epoch * config.epochs
    return get_linear_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * total_steps), total_steps
    )


def apply_rates(
    optimizer: torch.optim.Optimizer, scheduler: Any, config: TrialConfig, warm: bool = False
) -> None:
    """`config`'s rates and weight decay over a restored optimizer and schedule, at the
    restored step: a PBT exploit restores another trial's, and what PBT mutated must take
    effect (dropout, warm-up, clipping and the loss read the config as they go). A trial's
    own checkpoint holds its own values: nothing changes then. `warm`: as `build_optimizer`."""
    groups = optimizer.param_groups
    rates = [config.lr, head_rate(config, warm)]
    for group, rate in zip(groups, rates, strict=True):
        group["weight_decay"] = config.weight_decay
        group["initial_lr"] = rate
    scheduler.base_lrs = list(rates)
    step = scheduler.last_epoch
    for group, rate, factor in zip(groups, rates, scheduler.lr_lambdas, strict=True):
        group["lr"] = rate * factor(step)
    scheduler._last_lr = [group["lr"] for group in groups]


def optimizer_step(optimizer: torch.optim.Optimizer) -> bool:
    """One optimizer step; False when the step size itself overflows float32.

    The for-loop AdamW (an optimizer restored from a checkpoint written before AdamW was
    fused on the CPU) turns an absurd learning rate (around 1e38) into a step size that torch
    cannot convert to float and raises; that is the same divergence as a non-finite loss, and
    retrying it (Ray Train's FailureConfig) would only fail again. The fused one writes the
    non-finite weights instead, which the divergence checks find."""
    try:
        optimizer.step()
    except RuntimeError as exc:
        if "without overflow" not in str(exc):
            raise
        return False
    return True


def parameters_finite(model: torch.nn.Module) -> torch.Tensor:
    """On the parameters' device: whether every parameter is finite (one tensor, one read)."""
    return torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()


def wrap_ddp(model: torch.nn.Module, session: Session, compression: str) -> torch.nn.Module:
    """DDP with gradients that are views into its all-reduce buckets (no second copy of
    every gradient, no copy in and out of the buckets each step), compressed to bf16 on the
    wire when asked (half the bytes between nodes).

    A `head_norm: batchnorm` head stays a per-rank BatchNorm, not SyncBatchNorm: it
    standardizes by the statistics of each rank's batch of `batch_size` documents, as the
    one-worker trial it is compared with does, without an all-gather per head in every
    forward; the running statistics a rank evaluates with are rank 0's
    (`broadcast_buffers_from_rank0` before every evaluation)."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [session.device.index] if session.device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)
    if compression == "bf16":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        ddp.register_comm_hook(state=None, hook=default_hooks.bf16_compress_hook)
    return ddp


def no_sync(model: torch.nn.Module, skip: bool) -> Any:
    """DDP's `no_sync` (gradients accumulate without an all-reduce) when `skip` is asked."""
    if skip and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def fresh_device_memory(device: torch.device) -> None:
    """A trial starting in a process that ran another one (Tune's reuse_actors): the cached
    blocks of the last trial go back to the GPU, which trials sharing it (fractional GPUs)
    can then use, and the peak statistics start from this trial."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> tuple[float, float]:
    """(allocated, reserved) peak memory so far, MiB: on the GPU what tensors held and what
    the caching allocator held for them; on the CPU the process's peak resident set, twice
    (an earlier trial in the same process counts in it too)."""
    if device.type == "cuda":
        allocated = torch.cuda.max_memory_allocated(device) / 2**20
        return allocated, torch.cuda.max_memory_reserved(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, else KiB
    return peak_mb, peak_mb
