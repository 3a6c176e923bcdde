"""The one place metric keys are named: what trials report, searches optimize and tables show.

A metric key is `<namespace>/<name>`: a split ("dev", "test", "train") for the ranking metrics,
the F1 of label sets and losses, "train/" for the training loop's rates and times, "util/" for
the utilization metrics, "cost/" for what the trial's model costs at inference (the encoder
layers it runs, its forward time per document). A split's `f1_threshold_L{n}` (the level's
tuned threshold) is reported with the metrics and shown as a column, but is no metric a search
may optimize. Keys under "trial/" describe a trial rather than measure it
and are not metrics.
"""

from __future__ import annotations

import re

__all__ = [
    "COST_ENCODER_LAYERS",
    "COST_FORWARD_MS",
    "DEFAULT_METRIC",
    "DEFAULT_MODE",
    "EPOCH",
    "EPOCH_SECONDS",
    "LEARNING_RATE",
    "METRIC_NAMESPACES",
    "PBT_DONOR",
    "PBT_DONOR_EPOCH",
    "PBT_EXPLOITS",
    "PBT_LINEAGE",
    "PEAK_MEMORY_MB",
    "PEAK_RESERVED_MB",
    "SAMPLES_PER_SECOND",
    "TRAIN_STEP",
    "TRIAL_ASSIGNMENT",
    "TRIAL_BEST_EPOCH",
    "TRIAL_FINAL",
    "TRIAL_NODE_ID",
    "TRIAL_STOP_REASON",
    "TRIAL_VARIANT",
    "TRIAL_WARM_START",
    "TRIAL_WORLD_SIZE",
    "UTIL_CLS_ANGLE_MEAN",
    "UTIL_ENTROPY_MEAN",
    "UTIL_HEAD_KL_MEAN",
    "UTIL_LAYER_KL_MEAN",
    "eval_seconds_key",
    "f1_macro_key",
    "f1_micro_key",
    "f1_threshold_key",
    "in_epoch_reports",
    "is_metric_column",
    "is_metric_key",
    "is_timing_key",
    "loss_key",
    "mode_of",
    "ndcg_at_k_key",
    "rp_at_k_key",
    "rp_level_key",
    "rp_level_keys",
    "rp_macro_key",
    "rp_micro_key",
    "skipped_key",
    "util_entropy_key",
    "util_head_kl_key",
]

DEFAULT_METRIC = "dev/rp_macro"
DEFAULT_MODE = "max"

EPOCH = "epoch"
SAMPLES_PER_SECOND = "train/samples_per_s"
LEARNING_RATE = "train/lr"
TRAIN_STEP = "train/step"
EPOCH_SECONDS = "train/epoch_s"
# The trial's peak memory (MiB): on a GPU what its tensors held at most
# (`max_memory_allocated`), on the CPU the process's peak resident set.
PEAK_MEMORY_MB = "train/peak_mem_mb"
# On a GPU, the most the caching allocator held for them (`max_memory_reserved`): what
# another trial sharing the GPU (fractional GPUs) could not use. CPU: the resident set again.
PEAK_RESERVED_MB = "train/peak_reserved_mb"

# reported with the metrics but describing the trial, not measuring it ("trial/" prefix)
TRIAL_BEST_EPOCH = "trial/best_epoch"
TRIAL_VARIANT = "trial/variant"
TRIAL_ASSIGNMENT = "trial/assignment"
TRIAL_STOP_REASON = "trial/stop_reason"
TRIAL_NODE_ID = "trial/node_id"
TRIAL_WORLD_SIZE = "trial/world_size"
TRIAL_FINAL = "trial/final"
# A trial asked to start from trained heads (`init_heads_from`, trial/warm_start.py): "yes",
# or "no: <why>" when they did not fit (absent when not asked).
TRIAL_WARM_START = "trial/warm_start"

# Population-based training (`scheduler: pbt`): how many times the trial went on from another
# trial's checkpoint (an exploit), the last donor's trial id and the epoch of its checkpoint;
# and the lineage of its weights: every exploit they went through, oldest first
# ("<trial>@<epoch>" joined by " > "; a recipient inherits its donor's lineage, as Ray's
# pbt_policy files do).
PBT_EXPLOITS = "pbt/exploits"
PBT_DONOR = "pbt/donor"
PBT_DONOR_EPOCH = "pbt/donor_epoch"
PBT_LINEAGE = "pbt/lineage"

# The encoder layers the trial's model runs: layers above the highest one a head reads are
# dropped (as in an exported model), so a LAST-SIX model of a 12-layer encoder runs 12, an
# assignment that stops at layer 4 runs 4. Known from the start: every report carries it.
COST_ENCODER_LAYERS = "cost/encoder_layers"
# Milliseconds per document of the trial's final model, forward pass only, measured on dev
# documents at the end of the trial (wall time: it depends on the machine and its load).
COST_FORWARD_MS = "cost/forward_ms_per_doc"

UTIL_CLS_ANGLE_MEAN = "util/cls_angle_mean"
UTIL_LAYER_KL_MEAN = "util/layer_kl_mean"
UTIL_ENTROPY_MEAN = "util/entropy_mean"
UTIL_HEAD_KL_MEAN = "util/head_kl_mean"

# Namespaces of metric columns in a results table, in the order the table shows them.
METRIC_NAMESPACES = ("dev", "test", "train", "util", "cost")

_SPLIT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def _split(split: str) -> str:
    if not _SPLIT_RE.match(split):
        raise ValueError(f"bad split name {split!r}")
    return split


def positive(value: int, what: str) -> int:
    """`value` as an int; ValueError naming `what` unless it is a whole number >= 1."""
    if int(value) != value or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def rp_level_key(split: str, level: int) -> str:
    return f"{_split(split)}/rp_L{positive(level, 'level')}"


def rp_level_keys(split: str, num_levels: int) -> list[str]:
    return [rp_level_key(split, level) for level in range(1, num_levels + 1)]


def rp_micro_key(split: str) -> str:
    return f"{_split(split)}/rp_micro"


def rp_macro_key(split: str) -> str:
    return f"{_split(split)}/rp_macro"


def _level_suffix(level: int | None) -> str:
    return "" if level is None else f"_L{positive(level, 'level')}"


def rp_at_k_key(split: str, k: int, level: int | None = None) -> str:
    return f"{_split(split)}/rp@{positive(k, 'k')}{_level_suffix(level)}"


def ndcg_at_k_key(split: str, k: int, level: int | None = None) -> str:
    return f"{_split(split)}/ndcg@{positive(k, 'k')}{_level_suffix(level)}"


def f1_micro_key(split: str, level: int | None = None) -> str:
    """Micro-F1 at the tuned thresholds: of one level, or of all levels (`metrics/f1.py`)."""
    return f"{_split(split)}/f1_micro{_level_suffix(level)}"


def f1_macro_key(split: str, level: int | None = None) -> str:
    """Macro-F1 at the tuned thresholds: over one level's labels, or over all labels."""
    return f"{_split(split)}/f1_macro{_level_suffix(level)}"


def f1_threshold_key(split: str, level: int) -> str:
    """A level's F1 threshold tuned on `split` (dev): what the trial's label sets and the
    exported model's `predict` use. Reported, not a metric a search may optimize."""
    return f"{_split(split)}/f1_threshold{_level_suffix(positive(level, 'level'))}"


def loss_key(split: str) -> str:
    return f"{_split(split)}/loss"


def skipped_key(split: str, level: int | None = None) -> str:
    """Documents skipped by R-Precision (R = 0): micro by default, or of one level."""
    return f"{_split(split)}/rp_skipped_docs{_level_suffix(level)}"


def eval_seconds_key(split: str) -> str:
    return f"{_split(split)}/eval_s"


def util_entropy_key(layer: int) -> str:
    return f"util/entropy_layer{positive(layer, 'layer'):02d}"


def util_head_kl_key(layer: int) -> str:
    return f"util/head_kl_layer{positive(layer, 'layer'):02d}"


_METRIC_RE = re.compile(
    r"^[A-Za-z][A-Za-z0-9_-]*/(rp_L\d+|rp_micro|rp_macro|(rp|ndcg)@\d+(_L\d+)?|loss"
    r"|f1_(micro|macro)(_L\d+)?"
    r"|rp_skipped_docs(_L\d+)?|eval_s)$"
    r"|^util/((entropy|head_kl)_layer\d+|(cls_angle|layer_kl|entropy|head_kl)_mean)$"
)
_TRAIN_KEYS = {
    SAMPLES_PER_SECOND, LEARNING_RATE, TRAIN_STEP, EPOCH_SECONDS, PEAK_MEMORY_MB, PEAK_RESERVED_MB
}
_COST_KEYS = {COST_ENCODER_LAYERS, COST_FORWARD_MS}
_LOWER_IS_BETTER = re.compile(
    r"/(loss|rp_skipped_docs(_L\d+)?|eval_s|epoch_s|peak_mem_mb|peak_reserved_mb)$|^cost/"
)


def is_metric_key(key: str) -> bool:
    """Whether `key` is a metric named by this module (what a search may optimize)."""
    return key in _TRAIN_KEYS or key in _COST_KEYS or bool(_METRIC_RE.match(key))


def is_metric_column(key: str) -> bool:
    """Whether a results table shows `key` as a metric: any key in a metric namespace.

    Wider than `is_metric_key` on purpose: a table also reads results written by other versions
    (e.g. "util/angular_mean"), whose metrics stay metrics there but cannot be searched on.
    """
    namespace, slash, _ = key.partition("/")
    return bool(slash) and namespace in METRIC_NAMESPACES


# Wall-clock measurements of a run (seconds, throughput): two runs of the same seeded trial
# agree on every other metric, never on these.
_TIMING = re.compile(r"/(eval_s|epoch_s|samples_per_s|forward_ms_per_doc)$")


def is_timing_key(key: str) -> bool:
    """Whether `key` measures wall time: it differs between runs of the same seeded trial."""
    return bool(_TIMING.search(key))


def in_epoch_reports(key: str) -> bool:
    """Whether a trial's every epoch report carries `key` (what a scheduler can stop trials
    on): dev and training metrics and the encoder layers. Test, utilization and the forward
    time are measured once, in the trial's final report."""
    return key.startswith(("dev/", "train/")) or key == COST_ENCODER_LAYERS


def mode_of(key: str) -> str:
    """ "min" for losses, counts of skipped documents, times and costs; "max" otherwise."""
    return "min" if _LOWER_IS_BETTER.search(key) else "max"
