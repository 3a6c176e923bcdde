from __future__ import annotations

import pytest

import hiersearch.metrics
from hiersearch.metrics import keys, ranking


def test_metric_keys_are_spelled_once_here() -> None:
    assert keys.DEFAULT_METRIC == keys.rp_macro_key("dev") == "dev/rp_macro"
    assert keys.DEFAULT_MODE == "max"
    assert keys.rp_level_key("dev", 1) == "dev/rp_L1"
    assert keys.rp_level_keys("test", 2) == ["test/rp_L1", "test/rp_L2"]
    assert keys.rp_micro_key("test") == "test/rp_micro"
    assert keys.rp_at_k_key("dev", 5) == "dev/rp@5"
    assert keys.rp_at_k_key("dev", 5, level=2) == "dev/rp@5_L2"
    assert keys.ndcg_at_k_key("dev", 5, 2) == "dev/ndcg@5_L2"
    assert keys.loss_key("train") == "train/loss"
    assert keys.skipped_key("dev") == "dev/rp_skipped_docs"
    assert keys.util_entropy_key(1) == "util/entropy_layer01"
    assert keys.util_head_kl_key(12) == "util/head_kl_layer12"


def test_trial_keys_are_not_metrics() -> None:
    assert keys.TRIAL_BEST_EPOCH == "trial/best_epoch"
    assert not keys.is_metric_key(keys.TRIAL_STOP_REASON)
    assert not keys.is_metric_key(keys.EPOCH)


def test_is_metric_key_knows_every_built_key() -> None:
    built = [
        keys.rp_level_key("dev", 3),
        keys.rp_macro_key("test"),
        keys.ndcg_at_k_key("dev", 10, 6),
        keys.skipped_key("dev", 2),
        keys.util_head_kl_key(7),
        keys.UTIL_CLS_ANGLE_MEAN,
        keys.LEARNING_RATE,
    ]
    assert all(keys.is_metric_key(key) for key in built)
    assert not keys.is_metric_key("dev/rp_macr0")


def test_mode_of_minimizes_losses_and_maximizes_ranking_metrics() -> None:
    assert keys.mode_of(keys.loss_key("dev")) == "min"
    assert keys.mode_of(keys.DEFAULT_METRIC) == keys.DEFAULT_MODE == "max"


def test_key_builders_reject_bad_parts() -> None:
    with pytest.raises(ValueError):
        keys.rp_level_key("dev/x", 1)
    with pytest.raises(ValueError):
        keys.rp_at_k_key("dev", 0)


def test_trial_keys_and_unnamespaced_keys_are_not_metric_columns() -> None:
    assert not keys.is_metric_column(keys.TRIAL_BEST_EPOCH)
    assert not keys.is_metric_column(keys.EPOCH)
    assert not keys.is_metric_column("dev")
    assert not keys.is_metric_column("config/lr")


def test_metric_columns_include_metrics_no_longer_named_here() -> None:
    # results of older versions reported "util/angular_mean": still a metric in a table
    assert keys.is_metric_column("util/angular_mean")
    assert not keys.is_metric_key("util/angular_mean")


def test_every_named_metric_of_a_table_split_is_a_metric_column() -> None:
    named = [
        *keys.rp_level_keys("test", 3),
        keys.rp_micro_key("dev"),
        keys.rp_at_k_key("dev", 3, 2),
        keys.skipped_key("test"),
        keys.eval_seconds_key("dev"),
        keys.loss_key("train"),
        keys.SAMPLES_PER_SECOND,
        keys.PEAK_MEMORY_MB,
        keys.PEAK_RESERVED_MB,
        keys.util_entropy_key(3),
        keys.UTIL_LAYER_KL_MEAN,
    ]
    assert all(keys.is_metric_key(key) and keys.is_metric_column(key) for key in named)


def test_times_are_minimized() -> None:
    assert keys.mode_of(keys.EPOCH_SECONDS) == "min"
    assert keys.mode_of(keys.PEAK_RESERVED_MB) == keys.mode_of(keys.PEAK_MEMORY_MB) == "min"
    assert keys.mode_of(keys.eval_seconds_key("dev")) == "min"
    assert keys.mode_of(keys.skipped_key("dev", 2)) == "min"


def test_the_package_names_every_key_and_computation_of_its_modules() -> None:
    for module in (ranking, keys):
        for name in module.__all__:
            assert getattr(hiersearch.metrics, name) is getattr(module, name)
    assert set(hiersearch.metrics.__all__) >= set(ranking.__all__) | set(keys.__all__)


def test_wall_time_measurements_are_timing_keys_and_results_are_not() -> None:
    timings = [keys.EPOCH_SECONDS, keys.SAMPLES_PER_SECOND, keys.eval_seconds_key("test"),
               keys.COST_FORWARD_MS]
    assert all(keys.is_timing_key(k) for k in timings)
    results = [keys.loss_key("dev"), keys.rp_macro_key("test"), keys.PEAK_MEMORY_MB,
               keys.skipped_key("dev", 1), keys.COST_ENCODER_LAYERS]
    assert not any(keys.is_timing_key(k) for k in results)


def test_inference_costs_are_searchable_and_minimized() -> None:
    for key in (keys.COST_ENCODER_LAYERS, keys.COST_FORWARD_MS):
        assert keys.is_metric_key(key) and keys.is_metric_column(key)
        assert keys.mode_of(key) == "min"
    assert not keys.is_metric_key("cost/dollars")  # a cost no trial reports cannot be searched
