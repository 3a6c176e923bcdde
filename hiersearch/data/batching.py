"""Which documents go into which batch: the one home of a trial's training order (shards per
rank, batches of similar length) and of length-sorted evaluation and prediction.

A batch is padded to its longest document, so random batches of documents whose lengths
vary pay for the padding of the longest one in every batch. Training batches are therefore
drawn from windows of `window` batches sorted by length (Hugging Face's `group_by_length`
uses windows of 50): each batch pads little, every document still comes once per epoch, the
windows are cut from a seeded permutation and the batches of the whole epoch are shuffled, so
no length comes first. Evaluation and prediction sort by length outright: their order does
not matter, as their results go back to document order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np


def shard(n: int, rank: int, world: int, seed: int, epoch: int) -> np.ndarray:
    """This rank's training indices for an epoch: a seeded permutation, padded by wrapping so
    every rank takes the same number of steps (as DistributedSampler does)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    per_rank = math.ceil(n / world)
    order = np.resize(order, per_rank * world)
    return order[rank::world]


def batches(index: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """`index` cut into consecutive batches of `size` (the last one may be shorter)."""
    for start in range(0, len(index), size):
        yield index[start : start + size]


def length_grouped(
    index: np.ndarray, lengths: np.ndarray, size: int, window: int, seed: list[int]
) -> list[np.ndarray]:
    """`index` (already in a random order) as batches of `size` whose documents have similar
    `lengths`: each window of `window * size` documents is sorted by length and cut into
    batches, and all batches are then shuffled by `seed`. The batch count equals
    `batches(index, size)`'s, so every rank of a DDP trial takes the same steps; `window`
    <= 1 keeps the random batches as they are."""
    if window <= 1:
        return list(batches(index, size))
    out: list[np.ndarray] = []
    span = window * size
    for start in range(0, len(index), span):
        chunk = index[start : start + span]
        # stable: documents of equal length keep the permutation's random order
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out.extend(batches(chunk, size))
    # a short batch only at the very end, as `batches` has it: a window that does not end on a
    # whole batch is the last one
    rng = np.random.default_rng(seed)
    last = out.pop() if len(out) > 1 and len(out[-1]) < size else None
    out = [out[i] for i in rng.permutation(len(out))]
    if last is not None:
        out.append(last)
    return out


def by_length(index: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """`index` sorted by document length (stable): batches cut from it pad little."""
    return index[np.argsort(lengths[index], kind="stable")]
