"""Memory across trials in one process: Tune's `reuse_actors` runs trial after trial in the
same worker process, which must not keep what earlier trials built."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from pathlib import Path

import pytest
import torch

from hiersearch.data.encode import encode
from hiersearch.data.synth import SynthConfig, synthesize
from hiersearch.data.vocabularies import eurovoc_hierarchy
from hiersearch.model.encoder import tokenizer_path
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.recipe import fit
from hiersearch.trial.session import Artifacts, LocalSession

# Ten trials may grow the process by this much at most: caches filling, not a model.
MAX_GROWTH_MB = 40
# ~40 MB of weights (a 30522 x 256 embedding, three layers) and twice that in Adam state: a
# model left behind per trial would add ~100 MB a trial, far beyond the bound.
MODEL = "tiny:3x256"


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> str:
    corpus = synthesize(eurovoc_hierarchy(), SynthConfig(docs=30, seed=1, max_leaves=8))
    cache = tmp_path_factory.mktemp("cache")
    return str(encode(corpus, tokenizer_path("minilm"), 16, cache).path)


def _trial(encoded: str, root: Path, seed: int, model: str = MODEL) -> None:
    """One whole trial as a reused Tune process runs it: training, utilization, artifacts."""
    config = TrialConfig(model=model, assignment="ONE-BY-ONE", epochs=1, batch_size=8,
                         lr=1e-3, max_length=16, util_docs=4, seed=seed)
    (root / "checkpoints").mkdir(parents=True)
    session = LocalSession(checkpoint_root=root / "checkpoints")
    fit(config, encoded, session, Artifacts(str(root / "artifacts")))


def _rss_mb() -> float:
    """Resident memory after glibc hands its free pages back: what is still in use, without
    the allocator's pools (which grow and shrink with the size of the last trial's tensors)."""
    libc = ctypes.util.find_library("c")
    if libc is not None and hasattr(ctypes.CDLL(libc), "malloc_trim"):
        ctypes.CDLL(libc).malloc_trim(0)
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc (Linux)")
def test_ten_trials_in_one_process_do_not_grow_its_memory(encoded: str, tmp_path: Path) -> None:
    sizes = []
    for seed in range(10):
        _trial(encoded, tmp_path / f"trial{seed}", seed)
        sizes.append(_rss_mb())
    # from the first trial's end: it pays for the imports and compiled kernels
    assert max(sizes[1:]) - sizes[0] < MAX_GROWTH_MB, [round(s) for s in sizes]


def _torch_objects() -> set[int]:
    kinds = (torch.Tensor, torch.nn.Module, torch.optim.Optimizer)
    return {id(o) for o in gc.get_objects() if isinstance(o, kinds)}


def test_a_finished_trial_leaves_nothing_for_the_cyclic_collector(
    encoded: str, tmp_path: Path
) -> None:
    """A tensor or module in a reference cycle lives on until a full collection, which in a
    process that runs trial after trial may come only after several trials: with the cyclic
    collector off, a finished trial must leave no torch object behind. (The first trial of a
    process is a warm-up: the first import of transformers' modeling code leaves a cycle of
    frames, once per process.)"""
    _trial(encoded, tmp_path / "warm-up", 0, model="tiny:3x32")
    gc.collect()
    before = _torch_objects()
    gc.disable()
    try:
        _trial(encoded, tmp_path / "measured", 1, model="tiny:3x32")
        left = _torch_objects() - before
    finally:
        gc.enable()
    assert not left, f"{len(left)} torch objects outlive the trial"
