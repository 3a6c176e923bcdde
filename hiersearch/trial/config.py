"""Trial configuration: one frozen dataclass holds everything a trial needs.

The resolved config is written as `config.json` beside every trial's results and inside every
checkpoint, so that any number on the leaderboard can be traced back to what produced it.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from typing import Any

from hiersearch.errors import InputError
from hiersearch.model.classifier import FREEZE_ALL, check_head_options
from hiersearch.model.encoder import PACKAGED_MINILM
from hiersearch.typed import as_mapping, from_mapping

LAUNCHERS = ("auto", "train")
LOSS_WEIGHTINGS = ("proportional", "uniform")
# How a trial computes on a GPU (trial/precision.py says what each one does).
PRECISIONS = ("bf16", "fp16", "tf32", "fp32")
# DDP's gradient all-reduce: float32 as computed, or compressed to bf16 on the wire.
GRAD_COMPRESSIONS = ("none", "bf16")
# Batches per sorting window of the training order when `length_window` is null (the value of
# Hugging Face's group_by_length).
DEFAULT_LENGTH_WINDOW = 50
# The SMART terms of the loss, by their weights' fields (trial/smart.py); 0 turns one off.
SMART_TERMS = ("smart_weight", "smart_bregman_weight")
# The key `precision` replaced; still read (a boolean), with a note saying what to write.
DEPRECATED_BF16 = "bf16"


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs; every field can be fixed or searched in a space file."""

    # Corpus directory ({train,dev,test}.jsonl + hierarchy.json), as written by `data synth`.
    corpus: str = ""
    # Keep hierarchy levels first..last (1-based); None keeps all (the paper drops some).
    levels: tuple[int, int] | None = None
    # Backbone: "minilm" or "mpnet" (packaged; mpnet with its extra), "tiny:<layers>x<hidden>"
    # (random init), or a model dir (docs/backbones.md).
    model: str = PACKAGED_MINILM
    # Tokens per document; the paper uses 512, 128 keeps CPU runs affordable.
    max_length: int = 128
    # Where encoded datasets are cached; None = `<corpus>/.hiersearch-cache`.
    cache_dir: str | None = None
    # Layer-to-level assignment: a variant name ("LAST-SIX") or a string like "L1:7|L2:8".
    assignment: str = "FLAT"
    # Peak learning rate of AdamW (the paper grid-searches 2e-5, 3e-5, 5e-5).
    lr: float = 5e-5
    # Learning rate of the classification heads; null: `lr` (the paper's single rate). A new,
    # randomly initialized head learns slowly at a rate that suits the pretrained encoder.
    head_lr: float | None = None
    # A finished trial's final checkpoint (a path or URI) whose heads (weights and a
    # batchnorm head's running statistics) this trial starts from, the encoder starting from
    # the backbone as always: linear probing, then fine-tuning (Kumar et al., ICLR 2022). Heads
    # of other options than this trial's start new instead (trial/warm_start.py says which
    # options, and the reports why). A two-stage search sets it for each fine-tune to its
    # screen trial's (`screen: warm_start`); not searchable. null: new heads.
    init_heads_from: str | None = None
    # The peak rate of heads that start trained (`init_heads_from`); null: `lr`, one rate for
    # the whole model as LP-FT fine-tunes, so that trained heads do not run ahead of an
    # encoder still warming up. `head_lr` stays the rate of new heads.
    warm_head_lr: float | None = None
    # SMART (Jiang et al., ACL 2020; trial/smart.py): the weight of the smoothness-inducing
    # adversarial term, the symmetric KL (per label, of Bernoulli outputs) between the
    # model's outputs on its trained layers' inputs and on those inputs perturbed within
    # `smart_eps` in the direction that moves the outputs most. 0: off (the paper: 1 to 10).
    smart_weight: float = 0.0
    # Projected gradient-ascent steps that find the perturbation (the paper's K: 1); each
    # costs a forward and a backward of the trained layers.
    smart_steps: int = 1
    # The size of an ascent step, in each token vector's largest coordinate: 1e-2, a
    # hundredth of the perturbed states' scale (LayerNorm outputs). The paper states eta 1e-3
    # with epsilon 1e-5; its reference code rescales the perturbation to a largest coordinate
    # of 1 (docs/fine-tuning.md has the term's size at each radius).
    smart_step_size: float = 1e-2
    # The perturbation's radius: the most it moves any coordinate of the perturbed states.
    smart_eps: float = 1e-2
    # SMART's Bregman proximal point term: the weight of the symmetric KL between the model's
    # outputs and those of an exponential moving average of its weights (the paper's
    # "momentum Bregman proximal point", mu: 1), which keeps each step near the recent
    # weights. 0: off.
    smart_bregman_weight: float = 0.0
    # The moving average's momentum (the paper's beta: 0.99, a memory of about 100 steps).
    smart_momentum: float = 0.99
    # Dropout before every head (the paper grid-searches 0 and 0.1).
    dropout: float = 0.1
    # How a head reads a layer: "cls" (its [CLS] vector, the paper's), "mean" (the mean over
    # the real tokens) or "cls_mean" (both, concatenated).
    pooling: str = "cls"
    # A head's input normalization: "none" (the paper's), "batchnorm" (each feature
    # standardized across documents, no affine parameters) or "layernorm" (within each vector).
    head_norm: str = "none"
    # Width of a bottleneck in every head (linear, GELU, linear); null: one linear layer (the
    # paper's).
    head_hidden: int | None = None
    # Freeze the embeddings and the lowest k encoder layers (0: fine-tune every layer, the
    # paper's), or "all": the heads alone train (a head-only trial). Frozen layers get no
    # gradient, and with `feature_cache` they are not even run: see there.
    freeze_layers: int | str = 0
    # With freeze_layers k >= 1: the frozen layers' outputs (every layer's pooled vectors, the
    # token states after layer k) are computed once per corpus, backbone and max_length, in
    # eval mode (no dropout), and read from a cache beside the encoded corpus by every epoch,
    # evaluation and trial; train and evaluate run layers k+1.. only, and a head-only trial
    # runs no encoder layer at all. false: the frozen layers run at every step, in train mode
    # (dropout on), as before the cache.
    feature_cache: bool = True
    # The most disk (and page cache) a feature cache may take, GiB: it is memory-mapped and
    # read at random every epoch, and once it outgrows the memory that caches it every read
    # goes to disk, slower than recomputing the layers. 8 fits a third of a 24 GiB node
    # beside its trials (MiniLM-L6 on all 12,674 HPO documents at max_length 48: 0.9 GB, of
    # which 0.23 the pooled vectors of every layer, 0.67 one layer's token states).
    # A larger cache is not built: the trial runs uncached and says so.
    feature_cache_gb: float = 8.0
    # Training batches come from windows of this many batches sorted by length (batches of
    # similar length pad little), shuffled across the epoch; 1: batches of random documents.
    # null: 50 (Hugging Face's group_by_length), except with `head_norm: batchnorm`, whose
    # batch statistics a batch of one length skews (IN-PAIRS on HPO: dev macro RP 38.5
    # against 45.4 with random batches; layernorm heads 53.2 against 53.5): random batches
    # there. Head-only trials pad nothing: random batches.
    length_window: int | None = None
    # Per-worker batch size; the global batch is batch_size * workers * grad_accum.
    batch_size: int = 16
    # Micro-batches accumulated per optimizer step.
    grad_accum: int = 1
    # Maximum epochs; early stopping on dev loss usually ends sooner.
    epochs: int = 3
    # Caps optimizer steps per epoch (None = full epoch); smoke runs use 1-2.
    max_steps_per_epoch: int | None = None
    # Fraction of all optimizer steps spent warming up linearly from 0 to `lr`.
    warmup_ratio: float = 0.1
    # AdamW decoupled weight decay; 0 is plain Adam as in the paper.
    weight_decay: float = 0.0
    # Gradient clipping by global norm (0 disables).
    max_grad_norm: float = 1.0
    # Epochs without dev-loss improvement before stopping, as in the paper.
    patience: int = 2
    # "proportional": w_n = |L_n| / |L| (the paper's); "uniform": w_n = 1 / levels.
    loss_weighting: str = "proportional"
    # Seed of model init, data order and dropout.
    seed: int = 0
    # Ray Train DDP workers per trial.
    num_workers: int = 1
    # How a one-worker trial runs. "auto": in the Ray Tune trial's own process, with no Ray
    # Train run (no controller, placement group or worker spawn: tens of seconds less per
    # trial, and Tune reuses the process with torch already imported); Tune's max_failures
    # then covers worker loss. "train": always a Ray Train TorchTrainer (worker_failures
    # restarts apply). Two or more workers always run under Ray Train (DDP).
    launcher: str = "auto"
    # GPU workers (NCCL) when true; CPU workers with gloo otherwise.
    use_gpu: bool = False
    # The share of a GPU each worker holds when use_gpu (ignored on CPU), in (0, 1]: 0.25 lets
    # four one-worker trials share one GPU, as Ray Tune's fractional GPUs do. A worker trains
    # on one GPU, so a DDP trial (num_workers >= 2) needs 1: NCCL refuses two ranks on one GPU;
    # more GPUs for a trial are more workers.
    gpus_per_worker: float = 1.0
    # The GPU type every worker of a trial runs on, as Ray names it (e.g. "A100", "A10G",
    # "H100"; Ray's accelerator_type resource); null: any GPU. A DDP trial whose workers mix
    # types runs at the pace of the slowest and measures no single type.
    accelerator_type: str | None = None
    # CPUs reserved per worker (also its torch thread count).
    cpus_per_worker: float = 1.0
    # How the trial computes on a GPU: "bf16" (the encoder under bfloat16 autocast, TF32
    # matmuls elsewhere: Ampere and newer), "fp16" (float16 autocast with loss scaling: V100,
    # T4), "tf32" (float32 with TF32 matmuls) or "fp32" (no reduced precision). The heads and
    # their logits stay float32 in every mode; weights are float32 masters. CPU runs fp32.
    precision: str = "bf16"
    # DDP's gradient all-reduce: "none" (float32) or "bf16" (torch's bf16 compression hook,
    # NCCL only: half the bytes between nodes, for multi-node trials on a slow network).
    grad_compression: str = "none"
    # Optimizer steps between checks that every rank's training loss stayed finite (one
    # all-reduce and one host sync each; the GPU queue runs free in between): a divergence
    # costs at most this many steps before every rank stops together. Epoch ends always check.
    divergence_check_steps: int = 50
    # Dev documents used for the utilization metrics at the end of the trial.
    util_docs: int = 64
    # Batch size for evaluation (no gradients, so it can be larger).
    eval_batch_size: int = 64
    # Keep at most this many checkpoints per trial (the best by dev loss is always kept).
    keep_checkpoints: int = 2
    # Keep the best weights' dev and test scores in the final checkpoint (`scores.npz`, what an
    # ensemble of the search's trials is fitted on): 4 bytes x (dev + test documents) x labels,
    # 13.6 MB a trial on HPO, ~350 MB at EuroVoc's scale. false: none written, and the
    # ensemble skips the trial (it says which).
    keep_scores: bool = True

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str, str]] = [
            (self.lr > 0, "lr", "must be > 0"),
            (self.head_lr is None or self.head_lr > 0, "head_lr", "must be > 0 or null"),
            (0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)"),
            *self._warm_start_and_smart_checks(),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.grad_accum >= 1, "grad_accum", "must be >= 1"),
            (self.epochs >= 1, "epochs", "must be >= 1"),
            (
                self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
                "max_steps_per_epoch",
                "must be >= 1 or null",
            ),
            (0.0 <= self.warmup_ratio < 1.0, "warmup_ratio", "must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0"),
            (self.patience >= 1, "patience", "must be >= 1"),
            (
                self.loss_weighting in LOSS_WEIGHTINGS,
                "loss_weighting",
                f"must be one of {', '.join(LOSS_WEIGHTINGS)}",
            ),
            (self.num_workers >= 1, "num_workers", "must be >= 1"),
            (self.launcher in LAUNCHERS, "launcher", f"must be one of {', '.join(LAUNCHERS)}"),
            (self.cpus_per_worker >= 0.05, "cpus_per_worker", "must be >= 0.05"),
            (
                0 < self.gpus_per_worker <= 1,
                "gpus_per_worker",
                "must be in (0, 1]: a worker trains on one GPU; for more GPUs per trial raise "
                "num_workers (DDP)",
            ),
            (
                not self.use_gpu or self.num_workers == 1 or self.gpus_per_worker == 1,
                "gpus_per_worker",
                f"must be 1 with num_workers: {self.num_workers} and use_gpu: DDP ranks cannot "
                "share a GPU (NCCL: Duplicate GPU detected); fractions suit one-worker trials",
            ),
            (
                self.accelerator_type is None or bool(self.accelerator_type.strip()),
                "accelerator_type",
                "must be a GPU type such as A100, or null",
            ),
            (self.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}"),
            (
                self.grad_compression in GRAD_COMPRESSIONS,
                "grad_compression",
                f"must be one of {', '.join(GRAD_COMPRESSIONS)}",
            ),
            (
                self.use_gpu or self.grad_compression == "none",
                "grad_compression",
                "bf16 compresses NCCL's all-reduce: it needs use_gpu: true",
            ),
            (self.divergence_check_steps >= 1, "divergence_check_steps", "must be >= 1"),
            (self.max_length >= 8, "max_length", "must be >= 8"),
            (self.util_docs >= 0, "util_docs", "must be >= 0"),
            (self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1"),
            (self.feature_cache_gb >= 0, "feature_cache_gb", "must be >= 0"),
            (
                self.length_window is None or self.length_window >= 1,
                "length_window",
                "must be >= 1 or null",
            ),
        ]
        for ok, key, why in checks:
            if not ok:
                raise InputError(f"{why} (got {getattr(self, key)!r})", where=key)
        check_head_options(self.pooling, self.head_norm, self.head_hidden, self.freeze_layers)
        self.check_smart(self.freeze_layers == FREEZE_ALL)

    def _warm_start_and_smart_checks(self) -> list[tuple[bool, str, str]]:
        """`__post_init__`'s checks of the trained-heads start and of SMART's settings."""
        return [
            (
                self.init_heads_from is None or bool(self.init_heads_from.strip()),
                "init_heads_from",
                "must be a trial's final checkpoint (a path or URI) or null",
            ),
            (self.warm_head_lr is None or self.warm_head_lr > 0, "warm_head_lr",
             "must be > 0 or null"),
            (self.smart_weight >= 0, "smart_weight", "must be >= 0 (0: off)"),
            (self.smart_steps >= 1, "smart_steps", "must be >= 1"),
            (self.smart_step_size > 0, "smart_step_size", "must be > 0"),
            (self.smart_eps > 0, "smart_eps", "must be > 0"),
            (self.smart_bregman_weight >= 0, "smart_bregman_weight", "must be >= 0 (0: off)"),
            (0.0 <= self.smart_momentum < 1.0, "smart_momentum", "must be in [0, 1)"),
        ]

    def smart_terms(self) -> list[str]:
        """The SMART terms this trial adds to its loss (`SMART_TERMS` whose weight is > 0)."""
        return [key for key in SMART_TERMS if getattr(self, key) > 0]

    def check_smart(self, head_only: bool) -> None:
        """SMART regularizes what fine-tuning changes: the encoder layers that train (their
        inputs perturbed, their steps kept near their average). A head-only trial has none:
        asking for it there is an InputError naming the term, not a term silently dropped."""
        terms = self.smart_terms()
        if head_only and terms:
            raise InputError(
                "a head-only trial trains no encoder layer, whose inputs SMART perturbs and "
                f"whose steps it keeps near their average (freeze_layers: {self.freeze_layers} "
                f"with assignment {self.assignment}): set it to 0, or train a layer a head reads",
                where=terms[0],
            )

    def batch_window(self) -> int:
        """`length_window` resolved: the batches per sorting window of the training order."""
        if self.length_window is not None:
            return self.length_window
        return 1 if self.head_norm == "batchnorm" else DEFAULT_LENGTH_WINDOW

    def worker_gpus(self) -> float:
        """GPUs one worker holds: `gpus_per_worker` on GPU, 0 on CPU."""
        return self.gpus_per_worker if self.use_gpu else 0.0

    def replace(self, **changes: Any) -> TrialConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.levels is not None:
            out["levels"] = list(self.levels)
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> TrialConfig:
        """Build from plain values (YAML, JSON, a Tune config), checking keys, types and
        ranges; errors name `where` and the key. The deprecated `bf16: true|false` (configs
        and checkpoints written before `precision`) reads as `precision: bf16|fp32`."""
        return from_mapping(cls, resolve_aliases(as_mapping(values, where), where), where)


def resolve_aliases(values: dict[str, Any], where: str) -> dict[str, Any]:
    """`values` with a deprecated `bf16` key turned into the `precision` it meant (and a
    warning naming `where`); anything else is left to `from_dict` to check."""
    if DEPRECATED_BF16 not in values:
        return values
    values = dict(values)
    flag = values.pop(DEPRECATED_BF16)
    if not isinstance(flag, bool):
        raise InputError(f"expected bool, got {flag!r}", where=f"{where}: {DEPRECATED_BF16}")
    meant = "bf16" if flag else "fp32"
    if values.setdefault("precision", meant) != meant:
        raise InputError(
            f"bf16: {str(flag).lower()} contradicts precision: {values['precision']}; "
            "bf16 is deprecated, keep precision only",
            where=f"{where}: {DEPRECATED_BF16}",
        )
    warnings.warn(
        f"{where}: bf16 is deprecated and reads as precision: {meant}; write that instead",
        FutureWarning,
        stacklevel=3,
    )
    return values
