"""A trial's evaluation: scoring a split (every rank a disjoint slice, length-sorted batches,
from token ids or from the feature cache), the metrics of its scores, the model's inference
cost and its utilization.

A split to score is a `Batches`: the documents' token ids (`data.encode.Split`) or their
cached features (`trial.features.CachedSplit`); both give the model's inputs per batch, which
`model_inputs` hands to `LayerwiseClassifier.forward`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from hiersearch import metrics as M
from hiersearch.data.batching import batches, by_length
from hiersearch.data.encode import Split
from hiersearch.files import atomic_write_json
from hiersearch.model.classifier import LayerwiseClassifier
from hiersearch.model.utilization import heatmap_figure, measure_utilization, save_heatmap
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.features import CachedSplit
from hiersearch.trial.session import Artifacts, Session, gather_to_rank0

# What a split is scored from: token ids, or the features its frozen layers cached.
Batches = Split | CachedSplit
# Fixed seed of the dev sample for utilization: the same documents for every trial.
UTIL_SAMPLE_SEED = 1234
# dev documents timed for `cost/forward_ms_per_doc`: a few batches, well under a second on CPU
COST_DOCS = 64
# `split_metrics`' thresholds: each level's best on this split (dev), reported with its F1
TUNE = "tune"


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A batch's tensors (and the per-layer dict of cached vectors) on `device`."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = {k: v.to(device, non_blocking=True) for k, v in value.items()}
        elif isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
        else:
            out[key] = value
    return out


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `LayerwiseClassifier.forward` in a batch of either kind."""
    return {
        "input_ids": batch.get("input_ids"),
        "attention_mask": batch["attention_mask"],
        "pooled": batch.get("pooled"),
        "hidden": batch.get("hidden"),
    }


def _unwrap(model: torch.nn.Module) -> LayerwiseClassifier:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


@torch.no_grad()
def evaluate_split(
    model: torch.nn.Module,
    split: Batches,
    num_labels: int,
    session: Session,
    batch_size: int,
    autocast: Callable[[], Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Score a whole split with every rank taking a disjoint slice, in batches of similar
    length; rank 0 gets (scores in document order, gold multi-hot, per-document loss), other
    ranks None."""
    core = _unwrap(model)
    was_training = model.training
    model.eval()
    index = by_length(np.arange(session.rank, len(split), session.world_size), split.lengths)
    scores, golds, losses = [], [], []
    for batch_index in batches(index, batch_size):
        batch = split.batch(batch_index, num_labels)
        labels = batch["labels"]
        with autocast():
            logits = core(**model_inputs(to_device(batch, session.device))).float()
        per_doc = core.document_losses(logits, labels.to(session.device))
        scores.append(logits.cpu().numpy())
        golds.append(labels.numpy().astype(np.uint8))
        losses.append(per_doc.cpu().numpy())
    model.train(was_training)
    empty = np.zeros((0, num_labels), dtype=np.float32)
    mine = (
        index,
        np.concatenate(scores) if scores else empty,
        np.concatenate(golds) if golds else empty.astype(np.uint8),
        np.concatenate(losses) if losses else np.zeros(0, dtype=np.float32),
    )
    return _in_document_order(gather_to_rank0(session, mine))


def _in_document_order(
    parts: list[tuple[np.ndarray, ...]] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    if parts is None:
        return None
    inverse = np.argsort(np.concatenate([p[0] for p in parts]), kind="stable")
    return (
        np.concatenate([p[1] for p in parts])[inverse],
        np.concatenate([p[2] for p in parts])[inverse],
        np.concatenate([p[3] for p in parts])[inverse],
    )


@torch.no_grad()
def forward_cost(
    core: LayerwiseClassifier,
    split: Split,
    num_labels: int,
    device: torch.device,
    batch_size: int,
    autocast: Callable[[], Any],
    docs: int = COST_DOCS,
) -> dict[str, float]:
    """What the model costs at inference (from token ids, whatever the trial trained from):
    the encoder layers it runs and its forward time per document (ms) over the first `docs`
    documents of `split`, after one untimed batch that warms up the kernels and the
    allocator."""
    was_training = core.training
    core.eval()
    index = np.arange(min(docs, len(split)))
    timed_batches = [split.batch(b, num_labels) for b in batches(index, batch_size)]
    elapsed = float("nan")
    for timed in (False, True):
        started = time.perf_counter()
        for batch in timed_batches if timed else timed_batches[:1]:
            with autocast():
                core(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
    core.train(was_training)
    return {
        M.COST_ENCODER_LAYERS: encoder_layers(core),
        M.COST_FORWARD_MS: 1000.0 * elapsed / len(index) if len(index) else float("nan"),
    }


def encoder_layers(core: LayerwiseClassifier) -> float:
    """The encoder layers the model runs (`cost/encoder_layers`): up to the highest one a
    head reads."""
    return float(max(core.used_layers))


def probabilities(logits: np.ndarray, level_slices: list[slice]) -> list[np.ndarray]:
    """Per level, the sigmoid probabilities of its logits as `hiersearch predict` computes
    them (float32, torch's sigmoid on the level's own contiguous tensor): thresholds tuned
    here compare with the same numbers there."""
    return [
        torch.sigmoid(torch.from_numpy(np.ascontiguousarray(logits[:, s], np.float32))).numpy()
        for s in level_slices
    ]


def split_metrics(
    result: tuple[np.ndarray, np.ndarray, np.ndarray],
    level_slices: list[slice],
    split: str,
    thresholds: list[float] | str | None = TUNE,
) -> dict[str, float]:
    """Ranking metrics and loss of a scored split, and the F1 of its label sets: at each
    level's threshold tuned on this split (`TUNE`: dev, the thresholds reported too), at the
    given `thresholds` (test: dev's), or none (`None`: no thresholds known)."""
    scores, gold, per_doc_loss = result
    golds = [gold[:, s] for s in level_slices]
    out = M.evaluate(golds, [scores[:, s] for s in level_slices], split)
    out[M.loss_key(split)] = float(per_doc_loss.mean()) if len(per_doc_loss) else float("nan")
    if thresholds == TUNE:
        out.update(M.tuned_f1(golds, probabilities(scores, level_slices), split))
    elif thresholds is not None:
        probs = probabilities(scores, level_slices)
        out.update(M.f1_at_thresholds(golds, probs, list(thresholds), split))
    return out


def utilization(
    core: LayerwiseClassifier,
    dev: Split,
    config: TrialConfig,
    session: Session,
    artifacts: Artifacts | None,
) -> dict[str, float]:
    """The utilization metrics on a fixed sample of dev documents (the whole encoder runs on
    their token ids, cached features or not), saved with their heatmaps in the artifacts."""
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
