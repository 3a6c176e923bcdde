"""The layer-wise model: a Hugging Face encoder plus one linear head per hierarchy level.

Head n reads the concatenated [CLS] vectors of the layers assigned to level n (dropout first)
and predicts the labels of that level; FLAT is one head on the last layer over all labels, whose
output is sliced per level for evaluation. The loss is sum_n w_n * BCE_n with w_n = |L_n| / |L|
(the paper's) or uniform.

Training keeps the encoder's fast SDPA attention and never asks for attention maps; [CLS]
vectors are captured by forward hooks on the layers in use only, and layers above the highest
one in use are dropped (they could not influence any head).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hiersearch.errors import InputError
from hiersearch.model.assignment import LayerAssignment
from hiersearch.model.encoder import num_encoder_layers


def _layer_modules(encoder: Any) -> nn.ModuleList:
    try:
        return encoder.encoder.layer
    except AttributeError as exc:
        raise InputError(
            f"{type(encoder).__name__} is not a BERT-like encoder (no encoder.layer list)",
            where="model",
        ) from exc


def loss_weights(label_counts: Sequence[int], weighting: str) -> list[float]:
    """w_n = |L_n| / |L| ("proportional", the paper's) or 1 / levels ("uniform")."""
    if weighting == "proportional":
        total = sum(label_counts)
        return [count / total for count in label_counts]
    if weighting == "uniform":
        return [1.0 / len(label_counts)] * len(label_counts)
    raise InputError(f"unknown loss weighting {weighting!r}", where="loss_weighting")


class LayerwiseClassifier(nn.Module):
    """Encoder + per-level heads over the [CLS] vectors of the assigned layers."""

    def __init__(
        self,
        encoder: Any,
        assignment: LayerAssignment,
        label_counts: Sequence[int],
        dropout: float = 0.1,
        loss_weighting: str = "proportional",
    ) -> None:
        super().__init__()
        num_layers = num_encoder_layers(encoder)
        assignment.validate(num_layers, len(label_counts))
        self.assignment = assignment
        self.label_counts = [int(c) for c in label_counts]
        self.used_layers = assignment.layers_used(num_layers)
        layers = _layer_modules(encoder)
        top = max(self.used_layers)
        if top < len(layers):  # layers above the top one in use cannot reach any head
            encoder.encoder.layer = nn.ModuleList(list(layers)[:top])
        self.encoder = encoder
        hidden = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        if assignment.flat:
            self.heads = nn.ModuleList([nn.Linear(hidden, sum(self.label_counts))])
            self.head_layers: list[tuple[int, ...]] = [(num_layers,)]
        else:
            self.head_layers = [tuple(group) for group in assignment.groups]
            self.heads = nn.ModuleList(
                nn.Linear(hidden * len(group), count)
                for group, count in zip(self.head_layers, self.label_counts, strict=True)
            )
        self.register_buffer(
            "weights",
            torch.tensor(loss_weights(self.label_counts, loss_weighting)),
            persistent=False,
        )
        bounds = [0]
        for count in self.label_counts:
            bounds.append(bounds[-1] + count)
        self.level_slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self._captured: dict[int, torch.Tensor] = {}
        for layer in self.used_layers:
            _layer_modules(encoder)[layer - 1].register_forward_hook(self._capture_hook(layer))

    def _capture_hook(self, layer: int) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            self._captured[layer] = hidden[:, 0]

        return hook

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits [batch, all labels], levels concatenated in order."""
        self._captured = {}
        self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        cls = self._captured
        self._captured = {}
        outputs = []
        for head, group in zip(self.heads, self.head_layers, strict=True):
            features = torch.cat([cls[layer] for layer in group], dim=-1)
            outputs.append(head(self.dropout(features)))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """sum_n w_n * mean BCE over the labels of level n, over the whole batch."""
        # the batch mean first: the mean of `document_losses` up to rounding, in fewer operations
        return self._weighted_levels(_bce(logits, labels).mean(dim=0))

    def document_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of each document on its own: [batch] (dev and test losses)."""
        return self._weighted_levels(_bce(logits, labels))

    def _weighted_levels(self, per_label: torch.Tensor) -> torch.Tensor:
        """sum_n w_n * (the mean of `per_label` over the labels of level n), on the last dim."""
        levels = torch.stack([per_label[..., s].mean(dim=-1) for s in self.level_slices], dim=-1)
        return (self.weights * levels).sum(dim=-1)


def _bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(
        logits.float(), labels.float(), reduction="none"
    )
