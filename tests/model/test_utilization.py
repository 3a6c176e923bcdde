from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from hiersearch.model.utilization import (
    Utilization,
    attention_entropy,
    cls_angular_distance,
    head_kl,
    heatmap_figure,
    layer_kl,
    measure_utilization,
    save_heatmap,
)


@pytest.fixture
def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
    )
    return BertModel(config)


def _softmax_attention(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention like a model's: padding keys get ~0 probability."""
    masked = logits.masked_fill(mask[None, :, None, None, :] == 0, -1e9)
    return masked.softmax(dim=-1)


# ----------------------------------------------------------------------------- [CLS] angles


def test_identical_cls_vectors_have_zero_angle() -> None:
    vector = torch.randn(1, 5, 16)
    assert np.allclose(cls_angular_distance(vector.repeat(3, 1, 1)), 0.0, atol=1e-12)


def test_opposite_cls_vectors_have_angle_one_and_orthogonal_half() -> None:
    base = torch.tensor([[[1.0, 0.0]], [[-3.0, 0.0]], [[0.0, 2.0]]])
    angles = cls_angular_distance(base)
    assert angles[0, 1] == pytest.approx(1.0)
    assert angles[0, 2] == pytest.approx(0.5)
    assert np.allclose(angles, angles.T)


def test_cls_angle_is_mean_over_documents() -> None:
    cls = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [-1.0, 0.0]]])
    assert cls_angular_distance(cls)[0, 1] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- attention


def test_uniform_attention_over_real_keys_has_entropy_log_n() -> None:
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]] * 2)
    attn = _softmax_attention(torch.zeros(3, 2, 4, 8, 8), mask)
    assert np.allclose(attention_entropy(attn, mask), math.log(5))


def test_entropy_pools_real_queries_of_all_documents() -> None:
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    attn = torch.full((1, 2, 1, 4, 4), 0.25)  # padding keys not even masked: renormalized
    expected = (4 * math.log(4) + 2 * math.log(2)) / 6
    assert attention_entropy(attn, mask)[0] == pytest.approx(expected)


def test_peaked_attention_has_lower_entropy_than_uniform() -> None:
    mask = torch.ones(1, 6)
    logits = torch.zeros(2, 1, 2, 6, 6)
    logits[1, ..., 0] = 10.0
    entropy = attention_entropy(_softmax_attention(logits, mask), mask)
    assert entropy[1] < entropy[0] == pytest.approx(math.log(6))


def test_identical_heads_have_zero_head_kl() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    one_head = torch.randn(2, 2, 1, 4, 4)
    attn = _softmax_attention(one_head.repeat(1, 1, 3, 1, 1), mask)
    assert np.allclose(head_kl(attn, mask), 0.0, atol=1e-9)


def test_different_heads_have_their_pairwise_kl() -> None:
    mask = torch.ones(1, 2)
    p, q = torch.tensor([0.9, 0.1]), torch.tensor([0.5, 0.5])
    attn = torch.stack([p, q])[None, None, :, None, :].expand(1, 1, 2, 2, 2)
    kl_pq = float((p * (p / q).log()).sum())
    kl_qp = float((q * (q / p).log()).sum())
    assert head_kl(attn, mask)[0] == pytest.approx((kl_pq + kl_qp) / 2, rel=1e-5)


def test_identical_layers_have_zero_layer_kl() -> None:
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    layer = _softmax_attention(torch.randn(1, 2, 2, 5, 5), mask)
    other = _softmax_attention(torch.randn(1, 2, 2, 5, 5), mask)
    kl = layer_kl(torch.cat([layer, layer, other]), mask)
    assert kl.shape == (3, 3)
    assert np.allclose(np.diag(kl), 0.0)
    assert kl[0, 1] == pytest.approx(0.0, abs=1e-9) and kl[1, 0] == pytest.approx(0.0, abs=1e-9)
    assert kl[0, 2] > 0 and kl[2, 0] > 0


def test_attention_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="expected attn"):
        attention_entropy(torch.ones(2, 1, 1, 3, 3), torch.ones(1, 4))


# ----------------------------------------------------------------------------- measurement


def test_measure_utilization_on_tiny_bert(tiny_bert: BertModel) -> None:
    tiny_bert.train()
    before = tiny_bert.config._attn_implementation
    ids = torch.randint(0, 100, (5, 9))
    mask = torch.ones(5, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[3, 3:] = 0
    util = measure_utilization(tiny_bert, ids, mask, batch_size=2)
    assert util.cls_angle.shape == (4, 4) and util.layer_kl.shape == (4, 4)
    assert util.entropy.shape == (4,) and util.head_kl.shape == (4,)
    assert np.allclose(np.diag(util.cls_angle), 0.0) and np.all(util.cls_angle >= 0)
    assert np.all(util.entropy > 0) and np.all(util.entropy <= math.log(9) + 1e-6)
    assert tiny_bert.config._attn_implementation == before != "eager"
    assert tiny_bert.training


def test_measure_utilization_ignores_batching_and_padding(tiny_bert: BertModel) -> None:
    ids = torch.randint(0, 100, (4, 7))
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[:, 5:] = 0
    whole = measure_utilization(tiny_bert, ids, mask, batch_size=4)
    batched = measure_utilization(tiny_bert, ids[:, :5], mask[:, :5], batch_size=3)
    for name in ("cls_angle", "entropy", "head_kl", "layer_kl"):
        assert np.allclose(getattr(whole, name), getattr(batched, name), atol=1e-5)


def test_measure_utilization_on_an_mpnet_ignores_batching_and_padding(tiny_mpnet: str) -> None:
    """MPNet's attention is eager already (transformers has no SDPA for it), and its relative
    position bias depends on distances only: padding and batching change nothing."""
    from hiersearch.model.encoder import load_encoder

    encoder = load_encoder(tiny_mpnet)
    ids = torch.randint(5, 100, (4, 7))  # no <pad> (id 1): MPNet's positions skip it
    ids[:, 0] = 0
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[:, 5:] = 0
    whole = measure_utilization(encoder, ids, mask, batch_size=4)
    batched = measure_utilization(encoder, ids[:, :5], mask[:, :5], batch_size=3)
    assert whole.cls_angle.shape == (6, 6) and whole.entropy.shape == (6,)
    for name in ("cls_angle", "entropy", "head_kl", "layer_kl"):
        assert np.allclose(getattr(whole, name), getattr(batched, name), atol=1e-5)
    assert encoder.config._attn_implementation == "eager"


def test_batches_group_documents_of_similar_length(tiny_bert: BertModel) -> None:
    ids = torch.randint(0, 100, (4, 7))
    mask = torch.zeros(4, 7, dtype=torch.long)
    for row, length in enumerate([2, 7, 3, 6]):
        mask[row, :length] = 1
    widths: list[tuple[int, ...]] = []
    hook = tiny_bert.register_forward_pre_hook(
        lambda _m, _a, kwargs: widths.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        paired = measure_utilization(tiny_bert, ids, mask, batch_size=2)
    finally:
        hook.remove()
    assert widths == [(2, 3), (2, 7)]  # the short pair pads to 3, not 7
    one_by_one = measure_utilization(tiny_bert, ids, mask, batch_size=1)
    for name in ("cls_angle", "entropy", "head_kl", "layer_kl"):
        assert np.allclose(getattr(paired, name), getattr(one_by_one, name), atol=1e-5)


def test_scalar_metrics_and_json_round_trip(tiny_bert: BertModel) -> None:
    ids = torch.randint(0, 100, (3, 6))
    util = measure_utilization(tiny_bert, ids, torch.ones_like(ids))
    scalars = util.scalar_metrics()
    assert {"util/entropy_layer01", "util/head_kl_layer04", "util/cls_angle_mean"} <= set(scalars)
    assert scalars["util/entropy_layer02"] == pytest.approx(float(util.entropy[1]))
    back = Utilization.from_json(util.to_json())
    assert np.array_equal(back.layer_kl, util.layer_kl)


# ----------------------------------------------------------------------------- heatmaps


def test_save_heatmap_writes_a_png(tmp_path: Path) -> None:
    matrix = np.random.default_rng(0).random((4, 4))
    path = save_heatmap(matrix, tmp_path / "plots" / "angle.png", "[CLS] angle")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["angle.png"]  # no temporary left


def test_heatmap_figure_annotates_cells_and_labels_ticks() -> None:
    figure = heatmap_figure(np.arange(6.0), "entropy", tick_labels=list("abcdef"))
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == list("abcdef")
    assert len(axes.texts) == 6 and axes.texts[5].get_text() == "5.00"
    assert len(figure.axes) == 2  # the heatmap and its colorbar
