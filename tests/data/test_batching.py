"""Training order and length-sorted batches (`hiersearch.data.batching`)."""

from __future__ import annotations

import numpy as np

from hiersearch.data.batching import batches, by_length, length_grouped, shard


def test_shards_cover_every_document_with_equal_steps_per_rank() -> None:
    shards = [shard(10, rank, 3, seed=0, epoch=1) for rank in range(3)]
    assert {len(s) for s in shards} == {4}
    assert set(np.concatenate(shards)) == set(range(10))
    assert not np.array_equal(shard(10, 0, 3, 0, 1), shard(10, 0, 3, 0, 2))


def _lengths(n: int = 203) -> np.ndarray:
    return np.random.default_rng(7).integers(3, 128, size=n)


def test_grouped_batches_hold_every_document_once_in_as_many_batches_as_random_ones() -> None:
    lengths = _lengths()
    index = np.random.default_rng(0).permutation(len(lengths))
    grouped = length_grouped(index, lengths, 8, 5, [0, 1])
    assert len(grouped) == len(list(batches(index, 8)))
    assert sorted(np.concatenate(grouped).tolist()) == list(range(len(lengths)))
    assert all(len(b) == 8 for b in grouped[:-1])  # a short batch only at the end


def test_grouped_batches_pad_less_than_random_ones() -> None:
    lengths = _lengths()
    index = np.random.default_rng(0).permutation(len(lengths))

    def padded(groups: list[np.ndarray]) -> int:
        return sum(int(lengths[b].max()) * len(b) for b in groups)

    assert padded(length_grouped(index, lengths, 8, 5, [0, 1])) < 0.7 * padded(
        list(batches(index, 8))
    )


def test_grouped_batches_are_deterministic_per_seed_and_shuffled_across_windows() -> None:
    lengths = _lengths()
    index = np.random.default_rng(0).permutation(len(lengths))
    first = length_grouped(index, lengths, 8, 5, [0, 1])
    again = length_grouped(index, lengths, 8, 5, [0, 1])
    other = length_grouped(index, lengths, 8, 5, [0, 2])
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    # not longest-last: the order of the batches' lengths is shuffled
    tops = [int(lengths[b].max()) for b in first]
    assert tops != sorted(tops) and tops != sorted(tops, reverse=True)


def test_a_window_of_one_batch_keeps_the_random_batches() -> None:
    lengths = _lengths(20)
    index = np.arange(20)[::-1]
    kept = length_grouped(index, lengths, 6, 1, [0, 0])
    assert [b.tolist() for b in kept] == [b.tolist() for b in batches(index, 6)]


def test_by_length_sorts_stably() -> None:
    lengths = np.array([5, 2, 5, 1])
    assert by_length(np.arange(4), lengths).tolist() == [3, 1, 0, 2]
