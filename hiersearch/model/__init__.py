"""Model: layer-to-level assignments and the named variants, the backbone encoder, the
layer-wise classifier (one head per level) and utilization measurements."""

from __future__ import annotations

from hiersearch.model.assignment import (
    LayerAssignment,
    named_variant,
    named_variants,
    variant_names,
)
from hiersearch.model.classifier import LayerwiseClassifier, loss_weights
from hiersearch.model.encoder import (
    PACKAGED_MINILM,
    PACKAGED_MPNET,
    TINY_PREFIX,
    encoder_depth,
    load_encoder,
    num_encoder_layers,
    tokenizer_path,
)
from hiersearch.model.utilization import (
    Utilization,
    heatmap_figure,
    measure_utilization,
    save_heatmap,
)

__all__ = [
    "LayerAssignment",
    "LayerwiseClassifier",
    "PACKAGED_MINILM",
    "PACKAGED_MPNET",
    "TINY_PREFIX",
    "Utilization",
    "encoder_depth",
    "heatmap_figure",
    "load_encoder",
    "loss_weights",
    "measure_utilization",
    "named_variant",
    "named_variants",
    "num_encoder_layers",
    "save_heatmap",
    "tokenizer_path",
    "variant_names",
]
