"""How much of the encoder a fine-tuned model uses (the paper's section 5), on a fixed sample.

- [CLS] angles: for each pair of layers, the mean over documents of the angle between their
  L2-normalized [CLS] vectors, divided by pi (0 = same direction, 0.5 = orthogonal).
- Attention entropy per layer: entropy (nats) of the head-averaged attention distribution of a
  query over the real keys, averaged over all real query tokens of all documents (pooled, so
  longer documents weigh more).
- Head KL per layer: the mean over ordered head pairs (i != j) of KL(head_i || head_j),
  averaged over real query tokens like the entropy. NaN for a single-head model.
- Layer KL: KL(layer_i || layer_j) of the head-averaged attention, averaged over real queries.

Attention over padding keys is dropped and each distribution renormalized over the real keys.
Probabilities are clamped at 1e-12 inside logarithms, which bounds a KL where one distribution
underflows to 0.

This is the only place attention maps are requested, with eager attention switched on just
for the measurement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hiersearch import metrics
from hiersearch.files import atomic_open

if TYPE_CHECKING:
    import os

    import transformers

_EPS = 1e-12
# columns per float64 slice of the layer-by-layer products (bounds their memory: ~100 MB)
_SLICE = 1 << 20


@dataclass(frozen=True)
class Utilization:
    """Utilization measurements of one encoder (layers are 1-based in keys, 0-based here)."""

    cls_angle: np.ndarray  # [layers, layers], symmetric, 0 on the diagonal
    entropy: np.ndarray  # [layers]
    head_kl: np.ndarray  # [layers]
    layer_kl: np.ndarray  # [layers, layers], 0 on the diagonal; row = P, column = Q of KL(P||Q)

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": int(self.entropy.shape[0]),
            "cls_angle": self.cls_angle.tolist(),
            "entropy": self.entropy.tolist(),
            "head_kl": self.head_kl.tolist(),
            "layer_kl": self.layer_kl.tolist(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Utilization:
        return cls(
            cls_angle=np.asarray(obj["cls_angle"], dtype=np.float64),
            entropy=np.asarray(obj["entropy"], dtype=np.float64),
            head_kl=np.asarray(obj["head_kl"], dtype=np.float64),
            layer_kl=np.asarray(obj["layer_kl"], dtype=np.float64),
        )

    def scalar_metrics(self) -> dict[str, float]:
        """Per-layer entropy and head KL, and means (off-diagonal for the pairwise matrices)."""
        layers = self.entropy.shape[0]
        off = ~np.eye(layers, dtype=bool)
        out: dict[str, float] = {}
        for layer in range(1, layers + 1):
            out[metrics.util_entropy_key(layer)] = float(self.entropy[layer - 1])
            out[metrics.util_head_kl_key(layer)] = float(self.head_kl[layer - 1])
        out[metrics.UTIL_ENTROPY_MEAN] = float(np.mean(self.entropy))
        out[metrics.UTIL_HEAD_KL_MEAN] = float(np.mean(self.head_kl))
        out[metrics.UTIL_CLS_ANGLE_MEAN] = _off_mean(self.cls_angle, off)
        out[metrics.UTIL_LAYER_KL_MEAN] = _off_mean(self.layer_kl, off)
        return out


def _off_mean(matrix: np.ndarray, off: np.ndarray) -> float:
    return float(matrix[off].mean()) if off.any() else 0.0


# ----------------------------------------------------------------------------- [CLS] angles


def _cls_angle_sum(cls: torch.Tensor) -> torch.Tensor:
    """Sum over documents of angle/pi between layers' [CLS] vectors: [layers, layers].

    Uses 2 * atan2(|u - v|, |u + v|) on unit vectors: the same angle as arccos(u . v) but exact
    near 0 and pi, where arccos of a rounded cosine is off by ~1e-4.
    """
    unit = torch.nn.functional.normalize(cls.double(), dim=-1)
    diff = (unit[:, None] - unit[None, :]).norm(dim=-1)
    total = (unit[:, None] + unit[None, :]).norm(dim=-1)
    return (2 * torch.atan2(diff, total) / math.pi).sum(dim=-1)


def cls_angular_distance(cls: torch.Tensor) -> np.ndarray:
    """cls [layers, docs, hidden] -> [layers, layers] mean angular distance in [0, 1]."""
    if cls.ndim != 3 or cls.shape[1] == 0:
        raise ValueError(f"expected [layers, docs, hidden] with docs > 0, got {tuple(cls.shape)}")
    return (_cls_angle_sum(cls) / cls.shape[1]).numpy()


# ----------------------------------------------------------------------------- attention


class _AttentionSums:
    """Running sums over batches: every statistic is a sum over real query tokens."""

    def __init__(self, layers: int) -> None:
        self.queries = 0.0
        self.entropy = torch.zeros(layers, dtype=torch.float64)
        self.head_kl = torch.zeros(layers, dtype=torch.float64)
        # cross[i, j] = sum of a_i . log a_j; self terms on the diagonal
        self.cross = torch.zeros(layers, layers, dtype=torch.float64)
        self.heads = 0

    def add(
        self, attentions: Sequence[torch.Tensor], mask: torch.Tensor, masked: bool = False
    ) -> None:
        """attentions: per layer [docs, heads, q, k]; mask [docs, seq], 1 = real token.
        `masked`: the maps already give padding keys exactly 0 (an encoder's own attention
        does), so the renormalization over real keys is skipped.

        Computed where the maps are (the GPU in training); only the sums come to the CPU.
        Each layer's maps are gone over a few times only: they are the bulk of the work.
        """
        device = attentions[0].device
        real = mask.to(device=device, dtype=torch.float32)
        keys = real[:, None, None, :]
        queries = real.bool()  # [docs, seq]
        self.queries += float(queries.sum())
        averaged, logs = [], []
        for layer, attn in enumerate(attentions):
            p = attn.float()
            if not masked:
                p = p * keys
                p = p / p.sum(dim=-1, keepdim=True).clamp_min(_EPS)
            heads = p.shape[1]
            self.heads = heads
            # sum_{i != j} KL(p_i || p_j) = H sum_i p_i . l_i - (sum_i p_i) . (sum_j l_j) for
            # l = log p minus any per-key vector; minus head 0's logs, agreeing heads give 0
            relative = p.clamp_min(_EPS).log_()
            relative -= relative[:, :1].clone()
            mean_p = p.mean(dim=1)  # [docs, q, k]
            cross = (mean_p * relative.sum(dim=1)).sum(dim=-1)
            own = relative.mul_(p).sum(dim=(1, 3))  # in place: the maps' size, once more
            pairs = heads * (own - cross) / max(heads * (heads - 1), 1)
            self.head_kl[layer] += pairs[queries].double().sum().cpu()
            a = mean_p[queries]  # [real queries, keys]
            log_a = a.clamp_min(_EPS).log()
            self.entropy[layer] -= (a.double() * log_a.double()).sum().cpu()
            averaged.append(a.flatten())
            logs.append(log_a.flatten())
        flat_a, flat_log = torch.stack(averaged), torch.stack(logs)
        # float64 products in column slices: float32 sums over millions of terms would leave
        # KL(i || j) of identical layers visibly non-zero
        for start in range(0, flat_a.shape[1], _SLICE):
            part_a = flat_a[:, start : start + _SLICE].double()
            part_log = flat_log[:, start : start + _SLICE].double()
            self.cross += (part_a @ part_log.T).cpu()

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = max(self.queries, 1.0)
        entropy = (self.entropy / n).numpy()
        head_kl = (self.head_kl / n).numpy() if self.heads > 1 else np.full(len(entropy), np.nan)
        # KL(i || j) = sum a_i log a_i - sum a_i log a_j; exact zeros on the diagonal
        layer_kl = ((self.cross.diagonal()[:, None] - self.cross) / n).numpy()
        np.fill_diagonal(layer_kl, 0.0)
        return entropy, head_kl, layer_kl


def _sums(attn: torch.Tensor, mask: torch.Tensor) -> _AttentionSums:
    if attn.ndim != 5 or mask.shape != (attn.shape[1], attn.shape[-1]):
        raise ValueError(
            f"expected attn [layers, docs, heads, q, k] and mask [docs, k], "
            f"got {tuple(attn.shape)} and {tuple(mask.shape)}"
        )
    sums = _AttentionSums(attn.shape[0])
    sums.add(list(attn.unbind(0)), mask)
    return sums


def attention_entropy(attn: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Per layer: entropy of head-averaged attention, mean over real queries of real docs."""
    return _sums(attn, mask).result()[0]


def head_kl(attn: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Per layer: mean pairwise KL(h_i || h_j), i != j, between heads, over real queries."""
    return _sums(attn, mask).result()[1]


def layer_kl(attn: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """[layers, layers]: KL(layer i || layer j) of head-averaged attention, over real queries."""
    return _sums(attn, mask).result()[2]


# ----------------------------------------------------------------------------- measurement


@torch.no_grad()
def measure_utilization(
    encoder: transformers.PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    batch_size: int = 16,
) -> Utilization:
    """Run the encoder on a fixed sample and measure its utilization.

    Switches the encoder to eager attention (the only implementation that returns attention
    maps) and eval mode for this call only, and restores both afterwards. Batches stream into
    running sums, so only one batch's attention maps are held at a time.
    """
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape or len(input_ids) == 0:
        raise ValueError(
            f"expected input_ids and attention_mask [docs, seq] with docs > 0, "
            f"got {tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(encoder.parameters()).device
    previous = encoder.config._attn_implementation
    was_training = encoder.training
    sums: _AttentionSums | None = None
    angle: torch.Tensor | None = None
    try:
        if previous != "eager":
            encoder.set_attn_implementation("eager")
        encoder.eval()
        # Documents in order of length, so that a batch pads little: every statistic is a sum
        # over documents, and trailing columns that are padding in every row of a batch are
        # cut (they change nothing for real tokens).
        positions = torch.arange(1, attention_mask.shape[1] + 1, device=attention_mask.device)
        ends = ((attention_mask != 0) * positions).amax(dim=1)
        order = torch.argsort(ends, stable=True)
        for start in range(0, len(input_ids), batch_size):
            rows = order[start : start + batch_size]
            used = max(int(ends[rows].max()), 1)
            mask = attention_mask[rows, :used].to(device)
            ids = input_ids[rows, :used].to(device)
            out = encoder(
                input_ids=ids,
                attention_mask=mask,
                output_attentions=True,
                output_hidden_states=True,
                return_dict=True,
            )
            if not out.attentions:
                raise RuntimeError(
                    f"{type(encoder).__name__} returned no attention maps with eager attention"
                )
            cls = torch.stack([h[:, 0] for h in out.hidden_states[1:]]).float().cpu()
            batch_angle = _cls_angle_sum(cls)
            angle = batch_angle if angle is None else angle + batch_angle
            if sums is None:
                sums = _AttentionSums(len(out.attentions))
            sums.add(out.attentions, mask, masked=True)
    finally:
        if previous != "eager":
            if previous is None:
                encoder.config._attn_implementation = None
            else:
                encoder.set_attn_implementation(previous)
        encoder.train(was_training)
    assert sums is not None and angle is not None
    entropy, kl_heads, kl_layers = sums.result()
    return Utilization(
        cls_angle=(angle / len(input_ids)).numpy(),
        entropy=entropy,
        head_kl=kl_heads,
        layer_kl=kl_layers,
    )


# ----------------------------------------------------------------------------- heatmaps


def heatmap_figure(
    matrix: np.ndarray, title: str, tick_labels: Sequence[str] | None = None
) -> Figure:
    """An annotated heatmap like the paper's figures (a vector is drawn as one row).

    Built on a bare Figure with an Agg canvas: no pyplot, so no global backend state.
    """
    data = np.atleast_2d(np.asarray(matrix, dtype=np.float64))
    rows, cols = data.shape
    columns = list(tick_labels) if tick_labels is not None else [str(i + 1) for i in range(cols)]
    if len(columns) != cols:
        raise ValueError(f"{len(columns)} tick labels for {cols} columns")
    row_labels = columns if rows == cols else [str(i + 1) for i in range(rows)]
    figure = Figure(figsize=(max(4.0, 0.55 * cols + 2.0), max(2.0, 0.5 * rows + 1.5)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    finite = data[np.isfinite(data)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    image = axes.imshow(data, cmap="viridis", vmin=low, vmax=high if high > low else low + 1)
    figure.colorbar(image, ax=axes)
    axes.set_xticks(range(cols), columns)
    axes.set_yticks(range(rows), row_labels)
    axes.set_title(title)
    if rows * cols <= 900:  # readable up to ~30 x 30
        middle = (low + high) / 2
        size = 8 if cols <= 12 else 6
        for (i, j), value in np.ndenumerate(data):
            color = "black" if value > middle else "white"
            axes.text(j, i, f"{value:.2f}", ha="center", va="center", color=color, fontsize=size)
    figure.tight_layout()
    return figure


def save_heatmap(
    matrix: np.ndarray,
    path: str | os.PathLike[str],
    title: str,
    tick_labels: Sequence[str] | None = None,
) -> Path:
    """Write the heatmap as a PNG, atomically."""
    path = Path(path)
    figure = heatmap_figure(matrix, title, tick_labels)
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    return path
