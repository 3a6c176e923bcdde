"""The archived one-off studies (archive/bench/: their figures are in BENCHMARKS.md) on toy
sizes, so that the commands BENCHMARKS.md prints still run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "archive" / "bench"))

import ensemble  # noqa: E402
import ensemble_variants  # noqa: E402
import f1_consistency  # noqa: E402
import layer_probe  # noqa: E402
import screen_correlation  # noqa: E402

from hiersearch import metrics as M  # noqa: E402


def test_probe_normalizations_use_train_statistics() -> None:
    import torch

    generator = torch.Generator().manual_seed(0)
    # an offset every document shares, much larger than the spread between documents (as in
    # MiniLM's lower-layer [CLS] vectors)
    offset = 5.0 * torch.randn(8, generator=generator)
    train = offset + 0.1 * torch.randn(50, 8, generator=generator)
    dev = offset + 0.1 * torch.randn(10, 8, generator=generator)
    standardized, dev_standardized = layer_probe.normalize(train, dev, "batchnorm")
    assert standardized.mean(dim=0).abs().max() < 1e-4
    assert standardized.std(dim=0).sub(1).abs().max() < 0.02
    assert dev_standardized.abs().max() < 10  # dev uses train's statistics, not its own
    per_vector, _ = layer_probe.normalize(train, dev, "layernorm")
    # each vector is standardized over its own features: the shared offset stays, and the
    # documents still differ by a small fraction of each feature's scale
    assert per_vector.std(dim=0).max() < 0.1
    assert layer_probe.normalize(train, dev, "none")[0] is train
    assert layer_probe.feature_spread(train) == pytest.approx(0.1, rel=0.3)


def test_probe_mean_pooling_ignores_padding() -> None:
    import numpy as np
    import torch

    from hiersearch.data.encode import Split
    from hiersearch.model.encoder import load_encoder

    encoder = load_encoder("tiny:2x16", seed=0)
    ids = np.array([[101, 2000, 2001, 102, 0, 0], [101, 2002, 102, 0, 0, 0]])
    split = Split(ids, np.array([4, 3]), [np.array([0]), np.array([1])])
    wide = Split(np.pad(ids, ((0, 0), (0, 4))), split.lengths, split.label_ids)
    features = layer_probe.extract_features(encoder, split, batch=1)
    padded = layer_probe.extract_features(encoder, wide, batch=2)
    assert features["mean"].shape == (2, 2, 16)
    assert torch.allclose(features["mean"], padded["mean"], atol=1e-5)
    assert torch.allclose(features["cls"], padded["cls"], atol=1e-5)


def test_layer_probe_quick_scores_every_layer_pooling_and_norm(tmp_path: Path) -> None:
    out = layer_probe.main(["--quick", "--steps", "3", "--threads", "1",
                            "--json", str(tmp_path / "probe.json")])
    levels = len(out["label_counts"])
    layers = int(layer_probe.QUICK.encoder.split(":")[1].split("x")[0])
    assert len(out["probes"]) == layers * len(layer_probe.POOLINGS) * len(layer_probe.NORMS)
    for row in out["probes"]:
        values = [row[f"rp_l{n}"] for n in range(1, levels + 1)]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert row["rp_macro"] == pytest.approx(sum(values) / levels)
    assert 0.0 < out["label_prior"]["rp_l1"] <= 1.0
    text = layer_probe.table(out["probes"], levels)
    assert len(text.splitlines()) == (levels + 1) * (1 + 6)  # a header and 6 rows per metric
    assert json.loads((tmp_path / "probe.json").read_text())["bench"] == "layer_probe"


def test_f1_consistency_gold_and_rule_figures_on_a_toy_hierarchy() -> None:
    from hiersearch.data.hierarchy import Hierarchy, Node
    from hiersearch.serve.consistency import LabelRule, ParentIndex

    index = [["A", "B"], ["a", "b"]]
    hierarchy = Hierarchy([Node("A", "", (), 1), Node("B", "", (), 1),
                           Node("a", "", ("A",), 2), Node("b", "", ("B",), 2)])
    golds = f1_consistency.gold_levels([["A", "a", "elsewhere"], ["B"]], index)
    assert [g.tolist() for g in golds] == [[[True, False], [False, True]],
                                           [[True, False], [False, False]]]
    scores = [np.array([[0.2, 0.1], [0.9, 0.1]]), np.array([[0.8, 0.1], [0.1, 0.1]])]
    parents = ParentIndex.build(hierarchy, index, [1, 2])
    # document 0: a is predicted without A; document 1: A without gold
    drop = f1_consistency.rule_figures(golds, scores, LabelRule((0.5, 0.5), "drop", parents),
                                       "dev")
    add = f1_consistency.rule_figures(golds, scores, LabelRule((0.5, 0.5), "add", parents),
                                      "dev")
    assert drop["dropped_per_doc"] == 0.5 and drop["added_per_doc"] == 0.0
    assert drop["dropped_gold_share"] == 1.0 and drop["raw_precision"] == 0.5
    assert add["added_per_doc"] == 0.5 and add["added_gold_share"] == 1.0
    assert add[M.f1_micro_key("dev")] > drop[M.f1_micro_key("dev")]


def test_probe_pairs_are_parsed_and_unknown_ones_refused() -> None:
    assert layer_probe.parse_probes(None) == layer_probe.ALL_PROBES
    assert layer_probe.parse_probes("cls:none,mean:batchnorm") == (
        ("cls", "none"), ("mean", "batchnorm"))
    with pytest.raises(SystemExit, match="unknown pairs"):
        layer_probe.parse_probes("cls:whiten")


@pytest.mark.slow
def test_layer_probe_on_hpo_probes_the_pairs_asked_for(tmp_path: Path) -> None:
    out = layer_probe.main(["--quick", "--corpus", "hpo", "--probes", "cls:none,mean:batchnorm",
                            "--steps", "2", "--threads", "1"])
    layers = int(layer_probe.QUICK.encoder.split(":")[1].split("x")[0])
    assert len(out["label_counts"]) == 4 and out["docs"]["train"] == 40
    assert {(r["pooling"], r["norm"]) for r in out["probes"]} == {
        ("cls", "none"), ("mean", "batchnorm")}
    assert len(out["probes"]) == 2 * layers
    assert len(layer_probe.table(out["probes"], 4).splitlines()) == 5 * (1 + 2)


def test_screen_correlation_pairs_the_assignments_both_stages_finished() -> None:
    import pandas as pd

    table = pd.DataFrame({
        "stage": ["screen"] * 4 + ["finetune"] * 4 + [None],
        "status": ["terminated"] * 8 + ["baseline"],
        "assignment": ["A", "B", "C", "D", "A", "B", "C", "C", None],
        M.rp_macro_key("dev"): [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.2, 0.4, 0.99],
    })
    both = screen_correlation.paired(table, M.rp_macro_key("dev"))
    assert list(both.index) == ["A", "B", "C"]  # D was never fine-tuned
    assert both.loc["C", "finetune"] == pytest.approx(0.3)  # the mean of its seeds
    assert screen_correlation.correlation(both)["spearman_rho"] == pytest.approx(1.0)


def test_ensemble_study_ranks_rows_into_zero_one_with_ties_sharing_a_rank() -> None:
    import numpy as np

    ranks = ensemble._rank(np.array([[0.0, 0.0, 0.5, 2.0], [3.0, 1.0, 2.0, 0.0]]))
    expected = [[1 / 6, 1 / 6, 2 / 3, 1.0], [1.0, 1 / 3, 2 / 3, 0.0]]
    np.testing.assert_allclose(ranks, expected, rtol=1e-6)
    assert ranks.dtype == np.float32


def test_ensemble_variants_dense_vectors_are_unit_means_of_unit_layer_vectors() -> None:
    pooled = np.zeros((2, 3, 2, 2), dtype=np.float32)  # [layers, docs, view, hidden]
    pooled[0, :, 1] = [[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]]
    pooled[1, :, 1] = [[0.0, 5.0], [0.0, 1.0], [1.0, 1.0]]
    top = ensemble_variants.dense_vectors(pooled, (2,), 1)
    np.testing.assert_allclose(top, [[0, 1], [0, 1], [2**-0.5, 2**-0.5]], atol=1e-6)
    both = ensemble_variants.dense_vectors(pooled, (1, 2), 1)
    np.testing.assert_allclose(both[0], [2**-0.5, 2**-0.5], atol=1e-6)  # halfway
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, atol=1e-6)


def test_ensemble_variants_reports_dev_cross_validated_and_test_figures() -> None:
    from hiersearch.report.ensemble import KIND_TRIAL, PER_LEVEL, EnsembleMember

    rng = np.random.default_rng(0)
    golds = {s: [rng.random((30, 6)) < 0.2, rng.random((30, 9)) < 0.1] for s in ("dev", "test")}
    scores = {s: [[g + rng.normal(0, 0.7, g.shape) for g in golds[s]] for _ in range(3)]
              for s in golds}
    members = [EnsembleMember(KIND_TRIAL, str(m), "exp", None) for m in range(3)]
    row = ensemble_variants.evaluate_variant(members, scores, golds, M.DEFAULT_METRIC,
                                             PER_LEVEL, sorted_init=True, bags=2)
    assert len(row["test_levels"]) == 2
    assert 0 < row["dev_cv_macro"] <= 1 and 0 < row["test_macro"] <= 1
    assert 1 <= row["members_used"] <= 3 and row["weights"]
