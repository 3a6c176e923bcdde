"""An exported model directory (see `export.py`) loaded for prediction, with early exit by
level: the levels asked for are answered by encoder layers 1..k only, k the highest layer their
heads read (BERTer's early exiting; a coarse level's head sits on a low layer). Layer i's output
does not depend on the layers above it, so the scores equal those of the full forward.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hiersearch.data.batching import batches, by_length
from hiersearch.data.hierarchy import Hierarchy, read_json_object
from hiersearch.errors import InputError
from hiersearch.model.classifier import LayerwiseClassifier
from hiersearch.model.encoder import PRETRAINED_OPTIONS, without_pooler
from hiersearch.serve.export import (
    ENCODER_DIR,
    ENCODER_PREFIX,
    HEADS_FILE,
    HIERARCHY_FILE,
    LABELS_FILE,
    MODEL_FILE,
    MODEL_FORMAT,
    TOKENIZER_DIR,
)
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.precision import Precision
from hiersearch.trial.recipe import resolve_assignment


def _read_model_file(path: Path, directory: Path) -> dict[str, Any]:
    """One of an exported model's JSON files; a missing one says the directory is none."""
    if not path.is_file():
        raise InputError(f"not an exported model (no {path.name})", where=str(directory))
    return read_json_object(path)


def _labels(raw: dict[str, Any], path: Path, counts: list[int]) -> tuple[list, list]:
    try:
        levels = raw["levels"]
        ids = [[str(x) for x in level["ids"]] for level in levels]
        descriptions = [[str(x) for x in level["descriptions"]] for level in levels]
    except (KeyError, TypeError) as exc:
        raise InputError(f"expected levels with ids and descriptions ({exc})",
                         where=str(path)) from None
    if [len(x) for x in ids] != counts or [len(x) for x in descriptions] != counts:
        raise InputError(f"label counts differ from {MODEL_FILE}'s {counts}", where=str(path))
    return ids, descriptions


def _thresholds(info: dict[str, Any], path: Path, levels: int) -> list[float] | None:
    """model.json's per-level F1 thresholds; None in an export without them (older ones)."""
    values = info.get("thresholds")
    if values is None:
        return None
    ok = isinstance(values, list) and len(values) == levels and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in values
    )
    if not ok:
        raise InputError(f"thresholds must be {levels} numbers, one per level (got {values!r})",
                         where=str(path))
    return [float(v) for v in values]


def _load_encoder(directory: Path) -> Any:
    from transformers import AutoModel

    path = directory / ENCODER_DIR
    if not (path / "config.json").is_file():
        raise InputError(f"not an exported model (no {ENCODER_DIR}/config.json)",
                         where=str(directory))
    # loaded as a trial's backbone is (model/encoder.py): float32 weights, the attention its
    # class has; the trial's precision applies as autocast on a GPU, as in training
    options = {**PRETRAINED_OPTIONS, "local_files_only": True}
    try:  # no pooler: the export has none (BERT-likes take the option, others ignore it)
        encoder = AutoModel.from_pretrained(path, add_pooling_layer=False, **options)
    except TypeError:
        encoder = AutoModel.from_pretrained(path, **options)
    except OSError as exc:
        raise InputError(f"cannot load the encoder: {exc}", where=str(path)) from None
    return without_pooler(encoder)


def _load_heads(core: LayerwiseClassifier, path: Path) -> None:
    """heads.pt into the classifier: every head and norm key present, nothing else."""
    try:
        state = torch.load(path, map_location="cpu")
    except (OSError, RuntimeError) as exc:
        raise InputError(f"cannot read: {exc}", where=str(path)) from None
    try:
        missing, unexpected = core.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes differ
        raise InputError(f"does not fit the model: {str(exc).splitlines()[0]}",
                         where=str(path)) from None
    missing = [k for k in missing if not k.startswith(ENCODER_PREFIX)]
    if missing or unexpected:
        raise InputError(f"missing keys {missing}, unexpected keys {unexpected}",
                         where=str(path))


class LevelsOfLabels:
    """What every served model (a trial's export, an ensemble's) says of its levels; a
    dataclass below it holds `directory` and `label_index`."""

    directory: Path
    label_index: list[list[str]]

    @property
    def num_levels(self) -> int:
        return len(self.label_index)

    def hierarchy(self) -> Hierarchy:
        """The hierarchy the model was trained on (`hierarchy.json`, cut to its levels): the
        labels' parents for the consistency rule. Read when asked for."""
        path = self.directory / HIERARCHY_FILE
        return Hierarchy.from_json(_read_model_file(path, self.directory), where=str(path))

    def _check_levels(self, levels: Sequence[int] | None) -> list[int]:
        chosen = list(range(1, self.num_levels + 1)) if levels is None else list(levels)
        bad = [n for n in chosen if not 1 <= n <= self.num_levels]
        if bad or not chosen:
            raise InputError(f"levels must be in 1..{self.num_levels} (got {chosen})",
                             where="--levels")
        return chosen


@dataclass
class ExportedModel(LevelsOfLabels):
    """A model directory written by `hiersearch export`, ready to score documents."""

    directory: Path
    config: TrialConfig
    label_index: list[list[str]]
    descriptions: list[list[str]]
    max_length: int
    core: LayerwiseClassifier = field(repr=False)
    tokenizer: Any = field(repr=False)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    info: dict[str, Any] = field(default_factory=dict, repr=False)
    # per level, the F1 threshold tuned on dev; None: an export of a trial without them
    thresholds: list[float] | None = None

    @property
    def precision(self) -> Precision:
        """The trial's precision on this device: on a GPU its encoder runs under the autocast
        it was trained with; on the CPU in float32."""
        return Precision.of(self.config.precision, self.device)

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> ExportedModel:
        """Load from a model directory; InputError naming the directory or file when it is not
        one. Needs no Ray, no encoding cache, no experiment directory."""
        from transformers import AutoTokenizer

        directory = Path(directory)
        if not directory.is_dir():
            raise InputError("no such model directory", where=str(directory))
        info = _read_model_file(directory / MODEL_FILE, directory)
        _check_format(info, directory)
        encoder = _load_encoder(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory / TOKENIZER_DIR)
        return cls.on_encoder(directory, encoder, tokenizer, device)

    @classmethod
    def on_encoder(
        cls, directory: Path, encoder: Any, tokenizer: Any, device: str = "cpu"
    ) -> ExportedModel:
        """The model directory's heads (and labels, thresholds) on an encoder loaded already:
        its own, or one an ensemble's members share, which may hold more layers than this
        model's (`encoder_layers` in its model.json) and is left as it was. The heads' capture
        hooks sit on its layer modules: one forward of it feeds every model built on it."""
        info = _read_model_file(directory / MODEL_FILE, directory)
        _check_format(info, directory)
        config = TrialConfig.from_dict(info["config"], where=str(directory / MODEL_FILE))
        counts = [int(c) for c in info["label_counts"]]
        labels, descriptions = _labels(
            _read_model_file(directory / LABELS_FILE, directory), directory / LABELS_FILE, counts
        )
        layers = int(info.get("encoder_layers") or encoder.config.num_hidden_layers)
        with _cut_to(encoder, layers, directory):
            core = LayerwiseClassifier(
                encoder, resolve_assignment(str(info["assignment"]), layers, counts), counts,
                config.dropout, config.loss_weighting, pooling=config.pooling,
                head_norm=config.head_norm, head_hidden=config.head_hidden,
            )
        _load_heads(core, directory / HEADS_FILE)
        torch_device = torch.device(device)
        core.to(torch_device).eval()
        thresholds = _thresholds(info, directory / MODEL_FILE, len(counts))
        return cls(directory, config, labels, descriptions, int(info["max_length"]), core,
                   tokenizer, torch_device, info, thresholds)

    @property
    def num_layers(self) -> int:
        """Encoder layers in the export (the top one is the highest any head reads)."""
        return len(self.core.encoder.encoder.layer)

    def layers_needed(self, levels: Sequence[int]) -> int:
        """The highest encoder layer the heads of these (1-based) levels read; FLAT: its one
        head's (the top layer of the model)."""
        chosen = self._check_levels(levels)
        heads = [0] if self.core.assignment.flat else [n - 1 for n in chosen]
        return max(max(self.core.head_layers[i]) for i in heads)

    def logits_of_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        levels: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Logits [batch, labels of the requested levels, in level order], computing encoder
        layers 1..layers_needed(levels) only."""
        chosen = self._check_levels(levels)
        return shared_logits([self], input_ids, attention_mask, [chosen])[0]

    def level_logits(
        self, captured: dict[int, torch.Tensor], attention_mask: torch.Tensor,
        levels: Sequence[int],
    ) -> torch.Tensor:
        """The requested levels' logits from the hidden states the heads' hooks captured."""
        core = self.core
        pooled = core.pool(captured, attention_mask)
        if core.assignment.flat:  # one head over all labels: slice the levels out
            logits = core.head_logits(0, pooled)
            return torch.cat([logits[:, core.level_slices[n - 1]] for n in levels], dim=-1)
        return torch.cat([core.head_logits(n - 1, pooled) for n in levels], dim=-1)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """A level's scores from its logits (`shared_scores`): sigmoid probabilities."""
        return torch.sigmoid(logits)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and mask as training encoded them (truncated to max_length), padded to
        the batch's longest document."""
        batch = self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                               padding=True, return_tensors="pt")
        return {k: batch[k].to(self.device) for k in ("input_ids", "attention_mask")}

    def _length_order(self, texts: Sequence[str]) -> np.ndarray:
        """The documents' indices by token count: batches cut from it pad little."""
        if not texts:
            return np.zeros(0, dtype=np.int64)
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        lengths = np.array([len(x) for x in ids["input_ids"]], dtype=np.int64)
        return by_length(np.arange(len(texts)), lengths)

    def scores(
        self, texts: Sequence[str], levels: Sequence[int] | None = None, batch_size: int = 32
    ) -> list[np.ndarray]:
        """Per requested level (all if None): float32 sigmoid probabilities [docs, labels]."""
        return shared_scores([self], texts, self._check_levels(levels), batch_size)[0]


def _check_format(info: dict[str, Any], directory: Path) -> None:
    if info.get("format") != MODEL_FORMAT:
        raise InputError(f"format {info.get('format')!r} is not {MODEL_FORMAT!r}",
                         where=str(directory / MODEL_FILE))


@contextlib.contextmanager
def _cut_to(encoder: Any, layers: int, directory: Path) -> Iterator[None]:
    """The encoder as its first `layers` layers (as the model's export saved it) while a
    classifier is built on it; then as it was."""
    full, depth = encoder.encoder.layer, encoder.config.num_hidden_layers
    if layers > len(full):
        raise InputError(f"reads {layers} encoder layers; its encoder has {len(full)}",
                         where=str(directory / MODEL_FILE))
    encoder.encoder.layer = nn.ModuleList(list(full)[:layers])
    encoder.config.num_hidden_layers = layers
    try:
        yield
    finally:
        encoder.encoder.layer, encoder.config.num_hidden_layers = full, depth


@contextlib.contextmanager
def _first_layers(encoder: Any, k: int) -> Iterator[None]:
    """Run the encoder on layers 1..k: the capture hooks sit on the layer modules
    themselves, so they fire as in the full forward."""
    bert = encoder.encoder
    full = bert.layer
    bert.layer = nn.ModuleList(list(full)[:k])
    try:
        yield
    finally:
        bert.layer = full


@torch.inference_mode()
def shared_logits(
    models: Sequence[ExportedModel], input_ids: torch.Tensor, attention_mask: torch.Tensor,
    levels: Sequence[Sequence[int]],
) -> list[torch.Tensor]:
    """Each model's logits of its own `levels` (one sequence per model) from ONE forward of
    the encoder they share (the first's; its precision), layers 1..the highest any of them
    needs. Every model built on the encoder captures in that forward: callers pass them all."""
    cores = [m.core for m in models]
    for core in cores:
        core._captured = {}
    top = max(m.layers_needed(own) for m, own in zip(models, levels, strict=True))
    encoder = models[0].core.encoder
    try:
        with _first_layers(encoder, top), models[0].precision.autocast():
            encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        captured = [core._captured for core in cores]
    finally:
        for core in cores:
            core._captured = {}
    return [m.level_logits(c, attention_mask, own)
            for m, c, own in zip(models, captured, levels, strict=True)]


def shared_scores(
    models: Sequence[ExportedModel], texts: Sequence[str], levels: Sequence[int],
    batch_size: int = 32, own_levels: Sequence[Sequence[int]] | None = None,
) -> list[list[np.ndarray]]:
    """[model][requested level] float32 scores [docs, labels] (each model's `activate` of its
    logits: a trial's sigmoid probabilities) of models that share one encoder and tokenizer
    (the first's tokenization, once): batches of similar length, one encoder forward each
    (`shared_logits`). `own_levels`: per model, the requested levels it computes (an
    ensemble's member of weight 0 at a level skips that level's heads); its other levels are
    zeros."""
    if batch_size < 1:
        raise InputError(f"must be >= 1 (got {batch_size})", where="--batch-size")
    first = models[0]
    widths = [len(first.label_index[n - 1]) for n in levels]
    own = [[n for n in levels if own_levels is None or n in own_levels[m]]
           for m in range(len(models))]
    parts: list[list[list[np.ndarray]]] = [[[] for _ in levels] for _ in models]
    order = first._length_order(texts)
    for index in batches(order, batch_size):
        batch = first.tokenize([texts[i] for i in index])
        logits = shared_logits(models, batch["input_ids"], batch["attention_mask"], own)
        for m, model_logits in enumerate(logits):
            start = 0
            for i, n in enumerate(levels):
                if n not in own[m]:
                    continue
                # one level's own tensor: torch's vectorized sigmoid can round an element
                # differently by its place in a longer row, and a level's scores must not
                # depend on which other levels were asked for
                level = model_logits[:, start:start + widths[i]].float().contiguous()
                start += widths[i]
                parts[m][i].append(models[m].activate(level).cpu().numpy())
    inverse = np.argsort(order, kind="stable")  # back to the documents' order
    return [
        [np.concatenate(p)[inverse] if p else np.zeros((len(texts), w), np.float32)
         for p, w in zip(model_parts, widths, strict=True)]
        for model_parts in parts
    ]
