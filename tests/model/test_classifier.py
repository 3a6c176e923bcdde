from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from hiersearch.errors import InputError
from hiersearch.model.assignment import LayerAssignment, named_variants
from hiersearch.model.classifier import LayerwiseClassifier, loss_weights
from hiersearch.model.encoder import encoder_depth, load_encoder, tokenizer_path

COUNTS = [3, 5, 7, 4, 6, 2]


def _batch(size: int = 3, length: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 1000, (size, length))
    mask = torch.ones(size, length, dtype=torch.long)
    mask[0, 6:] = 0
    return ids, mask


@pytest.mark.parametrize("name", ["FLAT", "LAST-SIX", "ONE-BY-ONE", "IN-PAIRS", "HYBRID"])
def test_forward_gives_one_logit_per_label_for_every_variant(name: str) -> None:
    variant = named_variants(12, 6, COUNTS)[name]
    model = LayerwiseClassifier(load_encoder("tiny:12x32"), variant, COUNTS)
    logits = model(*_batch())
    assert logits.shape == (3, sum(COUNTS))
    assert [logits[:, s].shape[1] for s in model.level_slices] == COUNTS


def test_heads_read_the_concatenated_cls_of_their_layers() -> None:
    variant = named_variants(12, 6, COUNTS)["IN-PAIRS"]
    model = LayerwiseClassifier(load_encoder("tiny:12x32"), variant, COUNTS)
    assert [head.in_features for head in model.heads] == [64] * 6


def test_flat_has_one_head_over_all_labels() -> None:
    model = LayerwiseClassifier(load_encoder("tiny:12x32"), LayerAssignment.make_flat(), COUNTS)
    assert len(model.heads) == 1 and model.heads[0].out_features == sum(COUNTS)


def test_layers_above_the_highest_used_are_dropped() -> None:
    assignment = LayerAssignment.from_string("L1:2|L2:3|L3:4|L4:5|L5:6|L6:7")
    model = LayerwiseClassifier(load_encoder("tiny:12x32"), assignment, COUNTS)
    assert len(model.encoder.encoder.layer) == 7
    assert model(*_batch()).shape == (3, sum(COUNTS))


def test_no_head_on_unused_layers_and_every_parameter_gets_a_gradient() -> None:
    assignment = LayerAssignment.from_string("L1:3|L2:5|L3:6|L4:8|L5:9|L6:10")
    model = LayerwiseClassifier(load_encoder("tiny:12x32"), assignment, COUNTS)
    labels = torch.randint(0, 2, (3, sum(COUNTS))).float()
    model.loss(model(*_batch()), labels).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    # token_type embeddings are used (zeros); nothing else may be left without a gradient
    assert unused == []


def test_training_keeps_sdpa_attention() -> None:
    model = LayerwiseClassifier(load_encoder("tiny:12x32"), LayerAssignment.make_flat(), COUNTS)
    assert model.encoder.config._attn_implementation == "sdpa"


def test_proportional_loss_weights_are_label_shares_summing_to_one() -> None:
    weights = loss_weights([21, 127, 567, 3861, 2284, 481], "proportional")
    assert weights[0] == pytest.approx(21 / 7341)
    assert sum(weights) == pytest.approx(1.0)


def test_uniform_loss_weights() -> None:
    assert loss_weights([1, 10, 100], "uniform") == pytest.approx([1 / 3] * 3)


def test_loss_is_the_weighted_sum_of_per_level_bce() -> None:
    counts = [2, 3]
    model = LayerwiseClassifier(
        load_encoder("tiny:4x32"), LayerAssignment.from_string("L1:3|L2:4"), counts
    )
    logits = torch.randn(4, 5)
    labels = torch.randint(0, 2, (4, 5)).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = 0.4 * bce(logits[:, :2], labels[:, :2]) + 0.6 * bce(logits[:, 2:], labels[:, 2:])
    assert model.loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_document_losses_are_each_documents_weighted_bce_and_average_to_the_loss() -> None:
    model = LayerwiseClassifier(
        load_encoder("tiny:4x32"), LayerAssignment.from_string("L1:3|L2:4"), [2, 3]
    )
    logits = torch.randn(4, 5)
    labels = torch.randint(0, 2, (4, 5)).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = [
        0.4 * bce(logits[i, :2], labels[i, :2]) + 0.6 * bce(logits[i, 2:], labels[i, 2:])
        for i in range(4)
    ]
    per_doc = model.document_losses(logits, labels)
    assert per_doc.tolist() == pytest.approx([e.item() for e in expected], rel=1e-6)
    assert per_doc.mean().item() == pytest.approx(model.loss(logits, labels).item(), rel=1e-6)


def test_flat_proportional_loss_equals_plain_bce_over_all_labels() -> None:
    model = LayerwiseClassifier(load_encoder("tiny:4x32"), LayerAssignment.make_flat(), [2, 3])
    logits, labels = torch.randn(4, 5), torch.randint(0, 2, (4, 5)).float()
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    assert model.loss(logits, labels).item() == pytest.approx(plain.item(), rel=1e-6)


def test_assignment_beyond_the_encoder_depth_is_refused() -> None:
    with pytest.raises(InputError, match="13"):
        LayerwiseClassifier(load_encoder("tiny:12x32"), LayerAssignment.from_string("L1:13"), [4])


def test_tiny_encoder_is_deterministic_for_a_seed() -> None:
    a, b = load_encoder("tiny:2x32", seed=3), load_encoder("tiny:2x32", seed=3)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_packaged_minilm_loads_offline_with_six_layers() -> None:
    encoder = load_encoder("minilm")
    assert encoder.config.num_hidden_layers == 6 and encoder.config.hidden_size == 384
    assert encoder_depth("minilm") == 6
    counts = [3, 4, 5]
    model = LayerwiseClassifier(encoder, named_variants(6, 3, counts)["LAST-THREE"], counts)
    assert model(*_batch()).shape == (3, 12)


def test_missing_model_dir_is_an_input_error_without_hub_access(tmp_path) -> None:
    with pytest.raises(InputError, match="model"):
        load_encoder(str(tmp_path / "no-such-model"))
    with pytest.raises(InputError, match="model"):
        tokenizer_path(str(tmp_path / "no-such-model"))


# ------------------------------------------------------------------------------ head options

# Each option's every value (the others at the paper's), and all non-default at once.
HEAD_OPTIONS = [
    *({"pooling": value} for value in ("cls", "mean", "cls_mean")),
    *({"head_norm": value} for value in ("batchnorm", "layernorm")),
    {"head_hidden": 8},
    {"freeze_layers": 2},
    {"pooling": "cls_mean", "head_norm": "batchnorm", "head_hidden": 8, "freeze_layers": 1},
]


@pytest.fixture(scope="module")
def small_encoder() -> torch.nn.Module:
    return load_encoder("tiny:6x16")


@pytest.mark.parametrize("options", HEAD_OPTIONS, ids=lambda o: ",".join(map(str, o.values())))
def test_every_head_option_gives_every_variant_its_logits_and_gradients(
    options: dict[str, object], small_encoder: torch.nn.Module
) -> None:
    counts = COUNTS[:3]
    for name, variant in named_variants(6, 3, counts).items():
        model = LayerwiseClassifier(copy.deepcopy(small_encoder), variant, counts, **options)
        logits = model(*_batch())
        assert logits.shape == (3, sum(counts)), name
        model.loss(logits, torch.zeros_like(logits)).backward()
        for key, parameter in model.named_parameters():
            if parameter.requires_grad:
                assert parameter.grad is not None, (name, key)
                assert parameter.grad.shape == parameter.shape, (name, key)


def test_mean_pooling_ignores_padding() -> None:
    variant = named_variants(12, 6, COUNTS)["IN-PAIRS"]
    for pooling in ("mean", "cls_mean"):
        model = LayerwiseClassifier(load_encoder("tiny:12x32"), variant, COUNTS, pooling=pooling)
        model.eval()
        ids, mask = _batch(length=10)
        padded_ids = torch.cat([ids, torch.randint(1, 1000, (3, 7))], dim=1)
        padded_mask = torch.cat([mask, torch.zeros(3, 7, dtype=torch.long)], dim=1)
        with torch.no_grad():
            torch.testing.assert_close(model(padded_ids, padded_mask), model(ids, mask))


def test_mean_pooling_averages_the_real_tokens_of_the_layer() -> None:
    variant = LayerAssignment.from_string("L1:2|L2:3|L3:4|L4:5|L5:6|L6:7")
    model = LayerwiseClassifier(load_encoder("tiny:12x32"), variant, COUNTS, pooling="mean")
    model.eval()
    seen: list[torch.Tensor] = []
    model.heads[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    ids, mask = _batch()
    with torch.no_grad():
        model(ids, mask)
        states = model.encoder(ids, attention_mask=mask, output_hidden_states=True)
    layer2 = states.hidden_states[2]  # [0] is the embeddings
    expected = torch.stack(
        [layer2[d, mask[d].bool()].mean(dim=0) for d in range(3)]
    )
    torch.testing.assert_close(seen[0], expected)


def test_batchnorm_head_input_is_standardized_per_feature_across_documents() -> None:
    variant = named_variants(12, 6, COUNTS)["ONE-BY-ONE"]
    model = LayerwiseClassifier(
        load_encoder("tiny:12x32"), variant, COUNTS, dropout=0.0, head_norm="batchnorm"
    )
    seen: list[torch.Tensor] = []
    model.heads[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    model(*_batch(size=8))
    features = seen[0]
    torch.testing.assert_close(features.mean(dim=0), torch.zeros(32), atol=1e-5, rtol=0)
    torch.testing.assert_close(features.std(dim=0, unbiased=False), torch.ones(32), atol=1e-3,
                               rtol=0)
    assert list(model.norms[0].state_dict()) == [
        "running_mean", "running_var", "num_batches_tracked"
    ]


def test_a_batchnorm_head_trains_on_a_batch_of_one_document() -> None:
    variant = named_variants(12, 6, COUNTS)["HYBRID"]
    model = LayerwiseClassifier(load_encoder("tiny:12x32"), variant, COUNTS, head_norm="batchnorm")
    logits = model(*_batch(size=1))
    assert torch.isfinite(logits).all()


def test_the_papers_head_keeps_its_parameters_and_their_names() -> None:
    variant = named_variants(12, 6, COUNTS)["LAST-SIX"]
    model = LayerwiseClassifier(load_encoder("tiny:12x32"), variant, COUNTS)
    heads = {k for k in model.state_dict() if not k.startswith("encoder.")}
    assert heads == {f"heads.{n}.{p}" for n in range(6) for p in ("weight", "bias")}


def test_a_bottleneck_head_is_linear_gelu_linear_of_the_given_width() -> None:
    variant = named_variants(12, 6, COUNTS)["FLAT"]
    model = LayerwiseClassifier(load_encoder("tiny:12x32"), variant, COUNTS, head_hidden=16)
    first, activation, last = model.heads[0]
    assert (first.in_features, first.out_features) == (32, 16)
    assert isinstance(activation, torch.nn.GELU)
    assert (last.in_features, last.out_features) == (16, sum(COUNTS))


def test_frozen_layers_and_embeddings_get_no_gradient_and_the_rest_do() -> None:
    variant = named_variants(12, 6, COUNTS)["ONE-BY-ONE"]
    model = LayerwiseClassifier(load_encoder("tiny:12x32"), variant, COUNTS, freeze_layers=3)
    logits = model(*_batch())
    model.loss(logits, torch.zeros_like(logits)).backward()
    layers = model.encoder.encoder.layer
    frozen = [model.encoder.embeddings, *list(layers)[:3]]
    assert all(p.grad is None and not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.grad is not None for m in list(layers)[3:] for p in m.parameters())


@pytest.mark.parametrize(
    ("option", "value"),
    [("pooling", "max"), ("head_norm", "rms"), ("head_hidden", 0), ("freeze_layers", -1),
     ("freeze_layers", 13)],
)
def test_a_head_option_out_of_range_is_an_input_error_naming_it(
    option: str, value: object
) -> None:
    variant = named_variants(12, 6, COUNTS)["FLAT"]
    with pytest.raises(InputError, match=rf"^{option}: "):
        LayerwiseClassifier(load_encoder("tiny:12x32"), variant, COUNTS, **{option: value})


def test_a_classifier_is_freed_without_the_cyclic_collector() -> None:
    """Its capture hooks sit on layers it owns: a hook holding the classifier strongly would
    keep classifier, encoder and weights alive until a full collection (trial after trial in
    one process under Tune's reuse_actors)."""
    import gc
    import weakref

    model = LayerwiseClassifier(
        load_encoder("tiny:12x32"), named_variants(12, 6, COUNTS)["HYBRID"], COUNTS
    )
    model(*_batch())
    alive, encoder = weakref.ref(model), weakref.ref(model.encoder)
    gc.disable()
    try:
        del model
        assert alive() is None and encoder() is None
    finally:
        gc.enable()


def test_a_layer_that_outlives_its_classifier_runs_without_it() -> None:
    encoder = load_encoder("tiny:12x32")
    LayerwiseClassifier(encoder, named_variants(12, 6, COUNTS)["LAST-SIX"], COUNTS)
    out = encoder(*_batch(), return_dict=True)  # the hooks find no classifier and do nothing
    assert out.last_hidden_state.shape[0] == 3


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_heads_and_logits_stay_float32_under_bf16_autocast(pooling: str) -> None:
    """The encoder may run in bf16; the heads read its features in float32 and give float32
    logits (bf16 logits keep ~3 digits: thousands of labels would tie in the ranking)."""
    variant = named_variants(12, 6, COUNTS)["LAST-SIX"]
    model = LayerwiseClassifier(load_encoder("tiny:12x32"), variant, COUNTS, dropout=0.0,
                                pooling=pooling).eval()
    ids, mask = _batch()
    seen: list[torch.dtype] = []
    for head in model.heads:
        head.register_forward_hook(lambda m, i, o: seen.extend([i[0].dtype, o.dtype]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids, mask)
    assert logits.dtype == torch.float32 and set(seen) == {torch.float32}


def test_a_half_precision_checkpoint_loads_as_float32_weights(tmp_path) -> None:
    """transformers 5 loads a checkpoint in its own dtype ("auto"): an fp16 backbone would
    train in fp16 with no float32 master weights."""
    half = load_encoder("tiny:2x32").half()
    half.save_pretrained(tmp_path / "half")
    assert next(iter(half.parameters())).dtype == torch.float16
    loaded = load_encoder(str(tmp_path / "half"))
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}


def test_an_mpnet_directory_loads_with_eager_attention_and_a_bert_one_with_sdpa(
    tiny_mpnet: str, tmp_path: Path
) -> None:
    mpnet = load_encoder(tiny_mpnet)
    assert type(mpnet).__name__ == "MPNetModel" and mpnet.pooler is None
    assert mpnet.config._attn_implementation == "eager"  # transformers' MPNet has no SDPA
    assert encoder_depth(tiny_mpnet) == 6 and tokenizer_path(tiny_mpnet) == tiny_mpnet
    load_encoder("tiny:2x32").save_pretrained(tmp_path / "bert")
    assert load_encoder(str(tmp_path / "bert")).config._attn_implementation == "sdpa"


def test_freezing_mpnet_layers_freezes_its_shared_relative_position_bias(
    tiny_mpnet: str,
) -> None:
    """The bias feeds every layer: trained, it would change what the frozen layers compute."""
    assignment = LayerAssignment.from_string("L1:2|L2:4|L3:6")
    model = LayerwiseClassifier(load_encoder(tiny_mpnet), assignment, [2, 3, 4],
                                freeze_layers=3)
    logits = model(*_batch())
    model.loss(logits, torch.zeros_like(logits)).backward()
    trained = {n for n, p in model.encoder.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in model.encoder.named_parameters()
                       if n.split(".")[:3] in (["encoder", "layer", "3"],
                                               ["encoder", "layer", "4"],
                                               ["encoder", "layer", "5"])}
    assert not model.encoder.encoder.relative_attention_bias.weight.requires_grad
    assert all(p.grad is not None for n, p in model.encoder.named_parameters() if n in trained)
    tuned = LayerwiseClassifier(load_encoder(tiny_mpnet), assignment, [2, 3, 4])
    assert tuned.encoder.encoder.relative_attention_bias.weight.requires_grad  # k = 0


@pytest.mark.parametrize("model", ["tiny:6x32", "mpnet-dir"])
def test_the_upper_layers_on_the_states_of_layer_k_give_the_full_forwards_logits(
    model: str, tiny_mpnet: str
) -> None:
    """The stood-in embeddings: BERT's token types and positions, MPNet's relative position
    bias, the attention mask, all as in the full forward (eval mode, no dropout)."""
    encoder = load_encoder(tiny_mpnet if model == "mpnet-dir" else model)
    core = LayerwiseClassifier(encoder, LayerAssignment.from_string("L1:2|L2:4|L3:6"),
                               [2, 3, 4], pooling="cls_mean", freeze_layers=3).eval()
    ids, mask = _batch(length=12)
    with torch.no_grad():
        full = core(ids, mask)
        states = core.encoder(ids, attention_mask=mask, output_hidden_states=True)
        hidden = states.hidden_states[3] * mask.unsqueeze(-1)  # padding zeroed, as cached
        pooled = core.pool({2: states.hidden_states[2]}, mask)
        cached = core(None, mask, pooled=pooled, hidden=hidden)
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)
