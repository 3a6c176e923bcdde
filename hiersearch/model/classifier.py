"""The layer-wise model: a Hugging Face encoder plus one head per hierarchy level.

Head n reads the concatenated vectors of the layers assigned to level n and predicts the labels
of that level; FLAT is one head on the last layer over all labels, whose output is sliced per
level for evaluation. The loss is sum_n w_n * BCE_n with w_n = |L_n| / |L| (the paper's) or
uniform.

The paper's head is dropout + one linear layer on the [CLS] vectors. The head options widen it:
`pooling` (the [CLS] vector, the mean over the real tokens, or both), `head_norm` (a per-feature
standardization across documents, or LayerNorm within each vector), `head_hidden` (a bottleneck)
and `freeze_layers` (the embeddings and the lowest k layers get no gradient). On small sentence
encoders such as MiniLM-L6 the lower layers' [CLS] barely varies across documents (per-feature
std ~0.001), so a linear head on it stays at the label prior; mean-pooled, standardized features
carry the information at every layer.

Training keeps the encoder's fast SDPA attention (where its class has it: MPNet's is eager) and
never asks for attention maps; hidden states are captured by forward hooks on the layers in use
only, and layers above the highest one in use are dropped (they could not influence any head).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
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


# How a head reads a layer's hidden states: the [CLS] vector (the paper's), the mean over the
# real tokens (padding masked), or both concatenated.
POOLINGS = ("cls", "mean", "cls_mean")
# A head's input normalization: none (the paper's); "batchnorm": each feature standardized
# across the documents of the batch (running statistics at evaluation), no affine parameters;
# "layernorm": each vector standardized over its own features (does not remove an offset that
# all documents share), no affine parameters.
HEAD_NORMS = ("none", "batchnorm", "layernorm")
# `freeze_layers: all`: the whole encoder frozen, the heads alone train (a head-only trial).
FREEZE_ALL = "all"


def loss_weights(label_counts: Sequence[int], weighting: str) -> list[float]:
    """w_n = |L_n| / |L| ("proportional", the paper's) or 1 / levels ("uniform")."""
    if weighting == "proportional":
        total = sum(label_counts)
        return [count / total for count in label_counts]
    if weighting == "uniform":
        return [1.0 / len(label_counts)] * len(label_counts)
    raise InputError(f"unknown loss weighting {weighting!r}", where="loss_weighting")


def _head(width: int, labels: int, hidden: int | None) -> nn.Module:
    """One linear layer (the paper's), or a bottleneck: linear, GELU, linear."""
    if hidden is None:
        return nn.Linear(width, labels)
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, labels))


class _BatchStandardize(nn.BatchNorm1d):
    """BatchNorm1d without affine parameters. A training batch of one document (an epoch's
    last, a DDP shard's) has no spread to standardize by: it uses the running statistics."""

    def __init__(self, width: int) -> None:
        super().__init__(width, affine=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.training and features.shape[0] < 2:
            return nn.functional.batch_norm(
                features, self.running_mean, self.running_var, training=False, eps=self.eps
            )
        return super().forward(features)


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "batchnorm":
        return _BatchStandardize(width)
    if kind == "layernorm":
        return nn.LayerNorm(width, elementwise_affine=False)
    return nn.Identity()


def check_head_options(
    pooling: str, head_norm: str, head_hidden: int | None, freeze_layers: int | str
) -> None:
    """The head options' own ranges (the encoder's depth bounds `freeze_layers` further)."""
    if pooling not in POOLINGS:
        raise InputError(
            f"must be one of {', '.join(POOLINGS)} (got {pooling!r})", where="pooling"
        )
    if head_norm not in HEAD_NORMS:
        raise InputError(
            f"must be one of {', '.join(HEAD_NORMS)} (got {head_norm!r})", where="head_norm"
        )
    if head_hidden is not None and head_hidden < 1:
        raise InputError(f"must be >= 1 or null (got {head_hidden!r})", where="head_hidden")
    if isinstance(freeze_layers, str):
        if freeze_layers != FREEZE_ALL:
            raise InputError(
                f"must be a layer count or {FREEZE_ALL!r} (got {freeze_layers!r})",
                where="freeze_layers",
            )
    elif freeze_layers < 0:
        raise InputError(f"must be >= 0 (got {freeze_layers!r})", where="freeze_layers")


def frozen_count(freeze_layers: int | str, num_layers: int) -> int:
    """How many of the encoder's `num_layers` layers `freeze_layers` freezes."""
    return num_layers if freeze_layers == FREEZE_ALL else int(freeze_layers)


def pool_views(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's ([CLS] vector, mean over the real tokens), float32: every pooling's parts
    (the feature cache stores both, so one pass serves every head option)."""
    return hidden[:, 0].float(), _pool(hidden, mask, "mean")


def compose_pooling(cls: torch.Tensor, mean: torch.Tensor, pooling: str) -> torch.Tensor:
    """`pool_views`' parts -> the vector `pooling` makes (as `_pool` does from the states)."""
    if pooling == "cls":
        return cls
    return mean if pooling == "mean" else torch.cat([cls, mean], dim=-1)


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[batch, tokens, features] -> [batch, features (x2 for cls_mean)]. The mean is taken in
    float32: a sum over hundreds of tokens in bf16 (autocast on GPU) loses the low bits."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).float()
    mean = (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    return mean if pooling == "mean" else torch.cat([hidden[:, 0].float(), mean], dim=-1)


class LayerwiseClassifier(nn.Module):
    """Encoder + per-level heads over the pooled vectors of the assigned layers."""

    def __init__(
        self,
        encoder: Any,
        assignment: LayerAssignment,
        label_counts: Sequence[int],
        dropout: float = 0.1,
        loss_weighting: str = "proportional",
        pooling: str = "cls",
        head_norm: str = "none",
        head_hidden: int | None = None,
        freeze_layers: int | str = 0,
    ) -> None:
        super().__init__()
        check_head_options(pooling, head_norm, head_hidden, freeze_layers)
        num_layers = num_encoder_layers(encoder)
        assignment.validate(num_layers, len(label_counts))
        freeze_layers = frozen_count(freeze_layers, num_layers)
        if freeze_layers > num_layers:
            raise InputError(
                f"the encoder has {num_layers} layers (got {freeze_layers})", where="freeze_layers"
            )
        self.assignment = assignment
        self.pooling = pooling
        self.label_counts = [int(c) for c in label_counts]
        self.used_layers = assignment.layers_used(num_layers)
        layers = _layer_modules(encoder)
        top = max(self.used_layers)
        if top < len(layers):  # layers above the top one in use cannot reach any head
            encoder.encoder.layer = nn.ModuleList(list(layers)[:top])
        self.encoder = encoder
        self.frozen_layers = _freeze(encoder, freeze_layers)
        width = int(encoder.config.hidden_size) * (2 if pooling == "cls_mean" else 1)
        self.dropout = nn.Dropout(dropout)
        if assignment.flat:
            self.head_layers: list[tuple[int, ...]] = [(num_layers,)]
            outputs = [sum(self.label_counts)]
        else:
            self.head_layers = [tuple(group) for group in assignment.groups]
            outputs = self.label_counts
        widths = [width * len(group) for group in self.head_layers]
        # Parameter-free: the paper's head keeps its state-dict keys (heads.N.weight).
        self.norms = nn.ModuleList(_norm(head_norm, w) for w in widths)
        self.heads = nn.ModuleList(
            _head(w, n, head_hidden) for w, n in zip(widths, outputs, strict=True)
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
        # A weak reference: the hook sits on a layer the classifier owns, and a strong one
        # would make classifier -> encoder -> layer -> hook -> classifier a reference cycle,
        # which only the cyclic collector frees. A process that runs trial after trial
        # (Tune's reuse_actors) would then hold a model per trial until a full collection.
        owner = weakref.ref(self)

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            classifier = owner()
            if classifier is None:  # the layer outlived its classifier
                return
            hidden = output[0] if isinstance(output, tuple) else output
            # [CLS] only unless pooling needs every token: keeps the paper's head as it was
            classifier._captured[layer] = hidden[:, 0] if classifier.pooling == "cls" else hidden

        return hook

    @property
    def head_only(self) -> bool:
        """No layer that a head reads trains: the heads read frozen features only."""
        return self.frozen_layers >= max(self.used_layers)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor,
        pooled: dict[int, torch.Tensor] | None = None,
        hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [batch, all labels], levels concatenated in order: from the token ids, or
        (`pooled` given) from what the frozen layers computed once (`trial/features.py`):
        `pooled` holds the vector of every frozen layer a head reads, as `pooling` makes it,
        and `hidden` the token states after the top frozen layer, which the trained layers
        above it take on from there (None for a head-only model)."""
        self._captured = {}
        if pooled is None:
            self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        elif hidden is not None:
            with _upper_layers(self.encoder, self.frozen_layers):
                self.encoder(inputs_embeds=hidden, attention_mask=attention_mask, return_dict=True)
        captured = self._captured
        self._captured = {}
        features = self.pool(captured, attention_mask)
        if pooled is not None:
            features.update(pooled)
        outputs = [self.head_logits(index, features) for index in range(len(self.heads))]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)

    def pool(
        self, captured: dict[int, torch.Tensor], attention_mask: torch.Tensor
    ) -> dict[int, torch.Tensor]:
        """Each captured layer's hidden states -> the vector its heads read."""
        return {
            layer: h if self.pooling == "cls" else _pool(h, attention_mask, self.pooling)
            for layer, h in captured.items()
        }

    def head_logits(self, index: int, pooled: dict[int, torch.Tensor]) -> torch.Tensor:
        """Head `index` on its layers' pooled vectors: float32 logits, computed in float32
        outside any autocast. Under bf16 the encoder's features keep ~3 significant digits;
        logits rounded as coarsely would tie among thousands of labels and change the ranking
        R-Precision reads, and the heads are a sliver of the compute."""
        features = [pooled[layer] for layer in self.head_layers[index]]
        with torch.autocast(features[0].device.type, enabled=False):
            features = self.norms[index](torch.cat([f.float() for f in features], dim=-1))
            return self.heads[index](self.dropout(features))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """sum_n w_n * mean BCE over the labels of level n, over the whole batch."""
        # the batch mean first: the mean of `document_losses` up to rounding, in fewer operations
        return self.level_mean(_bce(logits, labels).mean(dim=0))

    def document_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of each document on its own: [batch] (dev and test losses)."""
        return self.level_mean(_bce(logits, labels))

    def level_mean(self, per_label: torch.Tensor) -> torch.Tensor:
        """sum_n w_n * (the mean of `per_label` over the labels of level n), on the last dim:
        how the loss weighs per-label values (and SMART's divergences, trial/smart.py)."""
        levels = torch.stack([per_label[..., s].mean(dim=-1) for s in self.level_slices], dim=-1)
        return (self.weights * levels).sum(dim=-1)


class _StatesIn(nn.Module):
    """Stands in for the embeddings: hands on the states it is given (`inputs_embeds`), and
    ignores the position and token type ids that BERT's embeddings would add (MPNet has no
    token types; the frozen layers' states already hold the positions)."""

    def forward(self, inputs_embeds: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        assert inputs_embeds is not None
        return inputs_embeds


@contextlib.contextmanager
def _upper_layers(encoder: Any, frozen: int) -> Iterator[None]:
    """The encoder as layers frozen+1.. only, fed the states after layer `frozen` in place of
    its embeddings. The model's own forward still builds the attention mask as it does for
    token ids (whatever the attention implementation), MPNet's encoder its relative position
    bias (from the sequence length alone, which the states share with the token ids; frozen
    with the lower layers, see `_freeze`), and the capture hooks sit on the layer modules
    themselves, so they fire as in the full forward."""
    bert = encoder.encoder
    layers, embeddings = bert.layer, encoder.embeddings
    bert.layer = nn.ModuleList(list(layers)[frozen:])
    encoder.embeddings = _StatesIn()
    try:
        yield
    finally:
        bert.layer = layers
        encoder.embeddings = embeddings


def _freeze(encoder: Any, layers: int) -> int:
    """Everything but layers `layers`+1.. gets no gradient (k >= 1): the embeddings, the
    lowest `layers` layers and what the encoder shares across its layers, such as MPNet's
    relative position bias (trained, it would change what the frozen layers compute, and
    the feature cache would no longer hold their outputs). The optimizer skips them and
    autograd records nothing below the first trained layer, so backward stops there."""
    if layers == 0:
        return 0
    above = list(_layer_modules(encoder))[layers:]
    trained = {id(p) for layer in above for p in layer.parameters()}
    for parameter in encoder.parameters():
        if id(parameter) not in trained:
            parameter.requires_grad_(False)
    return layers


def _bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(
        logits.float(), labels.float(), reduction="none"
    )
