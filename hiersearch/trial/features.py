"""The feature cache: what a trial's frozen layers compute, computed once.

A trial with `freeze_layers: k` gets the same outputs from the embeddings and layers 1..k at
every step of every epoch, and so does every other trial on the same corpus and backbone.
They are computed once, in eval mode (no dropout), and kept beside the encoded corpus under a
key of (the encoded corpus: corpus content, tokenizer, max_length; the backbone's weights; the
precision the pass ran in):

    <cache>/features-<key>/pooled/{train,dev,test}.npy   [layers, docs, 2, hidden] float32:
        every layer's [CLS] vector and mean over the real tokens (every pooling's parts), from
        one pass of the whole encoder;
    <cache>/features-<key>/states-L<k>/{split}.npy       [tokens, hidden] float32: the token
        states after layer k, documents concatenated (`{split}-offsets.npy` says where each
        starts), for trials that train layers above k.

A trial then runs layers k+1.. on the states (the heads on frozen layers read the pooled
vectors), and a head-only trial (no layer that a head reads trains) runs no encoder layer.

Each directory is written whole under a temporary name and renamed into place (never seen
half-written); its `meta.json` holds every file's size and CRC-32, checked before a process
first uses it, so a truncated or corrupt cache is rebuilt, never trusted. Concurrent trials on
a node share one build: the first takes an exclusive lock on the cache and builds, the others
wait for it and memory-map what it wrote (the page cache then holds one copy for all of them).
A cache that would outgrow `feature_cache_gb` is not built: the trial runs uncached and says
so once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap

from hiersearch.data.batching import batches, by_length
from hiersearch.data.corpus import Corpus
from hiersearch.data.encode import (
    EncodedCorpus,
    Split,
    attention_mask,
    load_encoded,
    multi_hot,
)
from hiersearch.data.prepare import encode_corpus
from hiersearch.errors import InputError
from hiersearch.files import atomic_directory, atomic_write_json, exclusive_lock, make_dirs
from hiersearch.model.classifier import LayerwiseClassifier, compose_pooling, pool_views
from hiersearch.model.encoder import (
    backbone_fingerprint,
    encoder_depth,
    load_encoder,
    tokenizer_path,
)
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.precision import Precision

FEATURES_VERSION = 1  # bump when the layout changes, so old caches are not reused
POOLED_DIR = "pooled"
# pooled/{split}.npy's views [layers, docs, view, hidden]: the [CLS] vector, the mean
CLS_VIEW, MEAN_VIEW = 0, 1
META_FILE = "meta.json"
LOCK_FILE = ".lock"
# float32: a cached trial's logits equal the uncached ones (eval mode) to rounding
DTYPE = np.float32
# cache directories this process has checked (path, meta.json's mtime): read once, not per trial
_checked: set[tuple[str, int]] = set()


def states_dir(layer: int) -> str:
    return f"states-L{layer}"


def features_path(encoded: EncodedCorpus, config: TrialConfig, precision: Precision) -> Path:
    """Where the feature cache of this corpus encoding, backbone and precision lives."""
    digest = hashlib.sha256()
    compute = precision.name if precision.active else "fp32"
    for part in (
        f"v{FEATURES_VERSION}",
        encoded.path.name,  # "encoded-<key of corpus content, tokenizer, max_length>"
        backbone_fingerprint(config.model, config.seed),
        compute,
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return encoded.path.parent / f"features-{digest.hexdigest()[:24]}"


@dataclass(frozen=True)
class CachedSplit:
    """A split's cached features, batched as `Split.batch` batches its token ids: the model's
    inputs for `LayerwiseClassifier.forward` (`pooled`, `hidden`, `attention_mask`) plus the
    multi-hot `labels`."""

    split: Split  # the documents: lengths and labels
    pooled: np.ndarray  # [layers, docs, 2, hidden]
    layers: tuple[int, ...]  # the frozen layers a head reads (1-based)
    pooling: str
    states: np.ndarray | None = None  # [tokens, hidden] after the top frozen layer
    offsets: np.ndarray | None = None  # [docs + 1] into `states`

    def __len__(self) -> int:
        return len(self.split)

    @property
    def lengths(self) -> np.ndarray:
        return self.split.lengths

    def batch(self, index: np.ndarray, num_labels: int) -> dict[str, Any]:
        pooled = {}
        for layer in self.layers:
            views = torch.from_numpy(np.ascontiguousarray(self.pooled[layer - 1][index]))
            pooled[layer] = compose_pooling(views[:, 0], views[:, 1], self.pooling)
        out: dict[str, Any] = {"pooled": pooled, "attention_mask": None}
        if self.states is not None and self.offsets is not None:
            lengths = self.split.lengths[index]
            hidden = np.zeros((len(index), int(lengths.max()), self.states.shape[1]), DTYPE)
            starts, ends = self.offsets[index], self.offsets[index + 1]
            for row in range(len(index)):
                hidden[row, : lengths[row]] = self.states[starts[row] : ends[row]]
            out["hidden"] = torch.from_numpy(hidden)
            out["attention_mask"] = attention_mask(lengths, hidden.shape[1])
        out["labels"] = multi_hot([self.split.label_ids[i] for i in index], num_labels)
        return out


def open_features(
    encoded: EncodedCorpus,
    splits: dict[str, Split],
    config: TrialConfig,
    core: LayerwiseClassifier,
    precision: Precision,
    device: torch.device,
) -> dict[str, CachedSplit] | None:
    """The cached features of every split for this trial's model, built first if missing or
    corrupt; None when the trial runs uncached (no frozen layer, `feature_cache: false`, or
    a cache that would outgrow `feature_cache_gb`, which is said on stderr)."""
    frozen = core.frozen_layers
    if not config.feature_cache or frozen == 0:
        return None
    depth = encoder_depth(config.model)
    width = int(core.encoder.config.hidden_size)
    state_layer = None if core.head_only else frozen
    size = _cache_bytes(splits, depth, width, state_layer)
    if size > config.feature_cache_gb * 2**30:
        print(
            f"hiersearch: the feature cache would take {size / 2**30:.1f} GiB, over "
            f"feature_cache_gb: {config.feature_cache_gb:g}; this trial recomputes its "
            f"{frozen} frozen layers at every step",
            file=sys.stderr,
        )
        return None
    path = features_path(encoded, config, precision)
    with _locked(path):
        wanted = [POOLED_DIR] + ([] if state_layer is None else [states_dir(state_layer)])
        missing = [name for name in wanted if not _valid(path / name)]
        if missing:
            _build(path, missing, splits, config, device, precision, depth, state_layer)
    layers = tuple(layer for layer in core.used_layers if layer <= frozen)
    return {
        name: _open_split(path, name, split, layers, config.pooling, state_layer)
        for name, split in splits.items()
    }


def backbone_vectors(config: TrialConfig, corpus: Corpus) -> tuple[int, dict[str, np.ndarray]]:
    """The top encoder layer of `config`'s backbone before any training, and every split's
    mean over the real tokens of it, float32 [docs, hidden] in the encoded corpus's document
    order: what a dense k-NN member reads (report/dense_knn.py). From the pooled vectors of
    the feature cache, built first when missing (one encoder pass over the corpus); an
    InputError when they would outgrow `feature_cache_gb`. The encoding's lines go to stderr:
    stdout may hold a table."""
    with contextlib.redirect_stdout(sys.stderr):
        data = encode_corpus(corpus, config.corpus, tokenizer=tokenizer_path(config.model),
                             num_layers=encoder_depth(config.model),
                             max_length=config.max_length, cache_dir=config.cache_dir)
    encoded = load_encoded(data.encoded_path)
    splits = {name: Split.from_table(encoded.splits[name]) for name in encoded.splits}
    device = torch.device("cuda" if config.use_gpu and torch.cuda.is_available() else "cpu")
    precision = Precision.of(config.precision, device)
    depth = encoder_depth(config.model)
    width = int(load_encoder(config.model, seed=config.seed).config.hidden_size)
    size = _cache_bytes(splits, depth, width, None)
    if size > config.feature_cache_gb * 2**30:
        raise InputError(f"its pooled vectors would take {size / 2**30:.1f} GiB, over "
                         f"feature_cache_gb: {config.feature_cache_gb:g}",
                         where=f"model {config.model}")
    path = features_path(encoded, config, precision)
    with _locked(path):
        if not _valid(path / POOLED_DIR):
            _build(path, [POOLED_DIR], splits, config, device, precision, depth, None)
    return depth, {
        name: np.array(np.load(path / POOLED_DIR / f"{name}.npy", mmap_mode="r")[
            depth - 1, :, MEAN_VIEW])
        for name in splits
    }


def _cache_bytes(
    splits: dict[str, Split], depth: int, width: int, state_layer: int | None
) -> int:
    """The bytes the whole cache a trial needs takes on disk (pooled vectors, token states)."""
    docs = sum(len(s) for s in splits.values())
    tokens = sum(int(s.lengths.sum()) for s in splits.values())
    itemsize = np.dtype(DTYPE).itemsize
    pooled = depth * docs * 2 * width * itemsize
    return pooled + (0 if state_layer is None else tokens * width * itemsize)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the cache directory: one builder, the others wait for it."""
    make_dirs(path)
    with exclusive_lock(path / LOCK_FILE):
        yield


def _valid(directory: Path) -> bool:
    """Whether `directory` is a complete cache whose every file has the size and CRC-32 its
    `meta.json` says (checked once per process and version of the directory)."""
    meta_file = directory / META_FILE
    try:
        stamp = (str(directory), meta_file.stat().st_mtime_ns)
        if stamp in _checked:
            return True
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("version") != FEATURES_VERSION:
            return False
        for name, expected in meta["files"].items():
            file = directory / name
            if file.stat().st_size != expected["bytes"] or _crc32(file) != expected["crc32"]:
                _say_rebuilt(directory, f"{name} is not what was written")
                return False
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if directory.exists():
            _say_rebuilt(directory, f"unreadable ({type(exc).__name__})")
        return False
    _checked.add(stamp)
    return True


def _say_rebuilt(directory: Path, why: str) -> None:
    print(f"hiersearch: feature cache {directory}: {why}; rebuilding it", file=sys.stderr)


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            crc = zlib.crc32(block, crc)
    return crc


def _build(
    path: Path,
    names: Sequence[str],
    splits: dict[str, Split],
    config: TrialConfig,
    device: torch.device,
    precision: Precision,
    depth: int,
    state_layer: int | None,
) -> None:
    """One encoder pass over every split writes the missing directories `names` (pooled
    vectors of every layer: the whole encoder; token states only: layers 1..k)."""
    with _every_core(device):
        encoder = load_encoder(config.model, seed=config.seed)
        run = depth if POOLED_DIR in names else int(state_layer or depth)
        encoder.encoder.layer = torch.nn.ModuleList(list(encoder.encoder.layer)[:run])
        encoder.to(device).eval()
        captured: dict[int, torch.Tensor] = {}
        for number, module in enumerate(encoder.encoder.layer, start=1):
            module.register_forward_hook(_keep(captured, number))
        with contextlib.ExitStack() as stack:
            out = {name: stack.enter_context(atomic_directory(path / name)) for name in names}
            for split_name, split in splits.items():
                _encode_split(encoder, split, split_name, out, captured, run, state_layer,
                              config.eval_batch_size, device, precision)
            for directory in out.values():
                _write_cache_meta(directory, config)
        _checked.difference_update({s for s in _checked if s[0].startswith(str(path))})


def _write_cache_meta(directory: Path, config: TrialConfig) -> None:
    """`meta.json`, written last: what was built, and every file's size and CRC-32."""
    files = sorted(directory.iterdir())
    atomic_write_json(
        directory / META_FILE,
        {
            "version": FEATURES_VERSION,
            "model": config.model,
            "max_length": config.max_length,
            "pid": os.getpid(),  # which process built it (concurrent trials share one)
            "files": {f.name: {"bytes": f.stat().st_size, "crc32": _crc32(f)} for f in files},
        },
    )


@contextlib.contextmanager
def _every_core(device: torch.device) -> Iterator[None]:
    """The pass runs once while the node's other trials of this corpus wait on the lock: on
    the CPU it may use every core this process can run on, not just the trial's share."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(threads, _usable_cpus()))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _usable_cpus() -> int:
    """The cores this process may run on (its affinity where the system has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def _keep(captured: dict[int, torch.Tensor], number: int) -> Any:
    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        captured[number] = output[0] if isinstance(output, tuple) else output

    return hook


@torch.no_grad()
def _encode_split(
    encoder: Any,
    split: Split,
    split_name: str,
    out: dict[str, Path],
    captured: dict[int, torch.Tensor],
    layers: int,
    state_layer: int | None,
    batch_size: int,
    device: torch.device,
    precision: Precision,
) -> None:
    """Run `split` through the encoder in length-sorted batches into memory-mapped files."""
    from tqdm import tqdm

    width = int(encoder.config.hidden_size)
    docs = len(split)
    pooled = states = None
    if POOLED_DIR in out:
        pooled = open_memmap(out[POOLED_DIR] / f"{split_name}.npy", mode="w+", dtype=DTYPE,
                             shape=(layers, docs, 2, width))
    offsets = np.concatenate([[0], np.cumsum(split.lengths)]).astype(np.int64)
    if state_layer is not None and states_dir(state_layer) in out:
        directory = out[states_dir(state_layer)]
        np.save(directory / f"{split_name}-offsets.npy", offsets)
        states = open_memmap(directory / f"{split_name}.npy", mode="w+", dtype=DTYPE,
                             shape=(int(offsets[-1]), width))
    order = by_length(np.arange(docs), split.lengths)
    progress = tqdm(total=docs, desc=f"feature cache: {split_name}", unit=" docs",
                    disable=None, file=sys.stderr)
    for index in batches(order, batch_size):
        inputs = split.inputs(index)
        mask = inputs["attention_mask"].to(device)
        with precision.autocast():
            encoder(input_ids=inputs["input_ids"].to(device), attention_mask=mask)
        if pooled is not None:
            for layer in range(1, layers + 1):
                cls, mean = pool_views(captured[layer], mask)
                pooled[layer - 1, index] = torch.stack([cls, mean], dim=1).cpu().numpy()
        if states is not None and state_layer is not None:
            hidden = captured[state_layer].float().cpu().numpy()
            for row, doc in enumerate(index):
                states[offsets[doc] : offsets[doc + 1]] = hidden[row, : split.lengths[doc]]
        captured.clear()
        progress.update(len(index))
    progress.close()
    for array in (pooled, states):
        if array is not None:
            array.flush()


def _open_split(
    path: Path,
    name: str,
    split: Split,
    layers: tuple[int, ...],
    pooling: str,
    state_layer: int | None,
) -> CachedSplit:
    pooled = np.load(path / POOLED_DIR / f"{name}.npy", mmap_mode="r")
    states = offsets = None
    if state_layer is not None:
        directory = path / states_dir(state_layer)
        states = np.load(directory / f"{name}.npy", mmap_mode="r")
        offsets = np.load(directory / f"{name}-offsets.npy")
    return CachedSplit(split, pooled, layers, pooling, states, offsets)
