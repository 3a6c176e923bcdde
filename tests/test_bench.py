"""The benchmarks' helpers on toy sizes, so that the scripts in bench/ cannot rot unnoticed.

Each bench is a script (`python bench/NAME.py`); its pure parts are imported from the bench
directory here. Nothing here starts Ray or times anything for real. The GPU check's tooling
(tools/gpu/) is tested in test_gpu_tools.py, the archived studies (archive/bench/) in
test_bench_archive.py.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import _timing  # noqa: E402
import arms  # noqa: E402
import encode_cache  # noqa: E402
import feature_cache  # noqa: E402
import gpu_throughput  # noqa: E402
import head_speed  # noqa: E402
import layerwise_step  # noqa: E402
import metrics_speed  # noqa: E402
import predict_throughput  # noqa: E402
import ray_overhead  # noqa: E402
import smart_cost  # noqa: E402

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
    events = [_event("prepare_data", 0.5, 1.0), _event("trial_with_trainer", 10.0, 42.0, pid=3),
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


def test_ray_overhead_setup_defaults_by_quick_and_rotates_the_runs() -> None:
    args = ray_overhead._parser().parse_args(["--quick"])
    quick = ray_overhead.resolve_setup(args)
    assert (quick.model, quick.docs, quick.reps, quick.trials, quick.launchers) == (
        "tiny:6x64", 60, 1, 0, ("auto",))
    assert quick.kinds == ["local", "auto"]
    full = ray_overhead.resolve_setup(ray_overhead._parser().parse_args(["--trials", "2"]))
    assert full.kinds == ["local", "auto", "train", "multi"] and full.util_docs == 32
    with pytest.raises(ValueError, match="subset of auto,train"):
        ray_overhead.resolve_setup(ray_overhead._parser().parse_args(["--launchers", "x"]))
    assert [ray_overhead.rep_order(full.kinds, rep)[0] for rep in range(5)] == [
        "local", "auto", "train", "multi", "local"]


def test_ray_overhead_launcher_summary_takes_medians_over_repetitions() -> None:
    runs = [{"throughput_ratio_auto": ratio, "local": {"fixed_overhead_s": 2.0},
             "auto": {"fixed_overhead_s": fixed, "phases_s": phases}}
            for ratio, fixed, phases in ((0.9, 8.0, {"a": 1.0}), (1.0, 12.0, {"a": 3.0, "b": 2.0}),
                                         (0.97, 9.0, {"a": 2.0}))]
    out = ray_overhead.launcher_summary(runs, "auto")
    assert out["throughput_ratio_median"] == 0.97 and out["ray_fixed_overhead_s_median"] == 9.0
    assert out["ray_added_overhead_s_median"] == 7.0
    assert out["ray_phases_s_median"] == {"a": 2.0, "b": 0.0}  # missing: took no time
    assert out["target_throughput_0.95"] == ray_overhead.verdict(0.97, 0.95, True)


def test_timing_probe_records_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(_timing.EVENTS_ENV, str(path))
    wrapped = _timing._timed("double", lambda x: 2 * x)
    assert wrapped(3) == 6
    (event,) = _timing.load_events(path)
    assert event["name"] == "double" and event["end"] >= event["start"]


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


def test_predict_throughput_ensemble_ratio_is_its_docs_per_second_over_the_single_trials(
) -> None:
    times = {"single_scores": [1.0, 2.0, 1.0], "ensemble_scores": [1.25, 2.0, 2.0]}
    out = predict_throughput.summarize_ensemble(times, docs=10)
    assert out["ensemble_over_single"] == 0.8 and out["verdict"] == "MET"
    assert out["docs_per_s"] == {"single_scores": 10.0, "ensemble_scores": 5.0}


def test_predict_throughput_a_second_ensemble_gets_its_own_ratio() -> None:
    times = {"single_scores": [1.0, 2.0, 1.0], "ensemble_scores": [1.25, 2.0, 2.0],
             "ensemble_scores_2": [2.0, 4.0, 2.0]}
    out = predict_throughput.summarize_ensemble(times, docs=10)
    assert out["over_single"] == {"ensemble_scores": 0.8, "ensemble_scores_2": 0.5}
    assert out["verdicts"]["ensemble_scores_2"] == "MISSED" and out["verdict"] == "MET"
    assert predict_throughput.ensemble_name(1) == "ensemble_scores_2"


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


def test_gpu_throughput_compares_last_six_with_flat_per_precision() -> None:
    figures = {"FLAT/bf16": {"samples_per_s": 10.0, "step_peak_allocated_gib": 4.0},
               "LAST-SIX/bf16": {"samples_per_s": 15.0, "step_peak_allocated_gib": 3.0},
               "FLAT/fp32": {"samples_per_s": 5.0, "step_peak_allocated_gib": 0.0},
               "LAST-SIX/fp32": {"samples_per_s": 6.0, "step_peak_allocated_gib": 0.0}}
    assert gpu_throughput.variant_ratios(figures, ("bf16", "fp32")) == {
        "last_six_over_flat_throughput_bf16": 1.5,
        "last_six_over_flat_step_peak_memory_bf16": 0.75,
        "last_six_over_flat_throughput_fp32": 1.2,
        "last_six_over_flat_step_peak_memory_fp32": None,
    }


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


def test_metrics_f1_data_has_a_prior_and_a_trained_model() -> None:
    golds, prior, trained = metrics_speed.f1_level_data(30)
    assert [g.shape for g in golds] == [p.shape for p in prior] == [t.shape for t in trained]
    assert all(p.min() >= 0 and p.max() <= 1 and p.dtype == np.float32 for p in prior)
    assert M.tuned_f1(golds, trained, "dev")["dev/f1_micro"] > M.tuned_f1(
        golds, prior, "dev")["dev/f1_micro"]


def test_feature_cache_bench_refuses_an_unknown_section() -> None:
    with pytest.raises(SystemExit, match="unknown"):
        feature_cache.main(["--sections", "steps,speed"])


# --- arms at equal compute (bench/arms.py, bench/arms/*.yaml) ----------------------------------
ARMS = BENCH / "arms"


def _spec(name: str) -> dict:
    return arms.load_arms(ARMS / f"{name}.yaml")


def test_every_arms_file_opens_with_its_launch_command_and_builds_every_arm() -> None:
    files = sorted(ARMS.glob("*.yaml"))
    assert {f.stem for f in files} == {"search_efficiency", "pareto_pruning", "pbt_compare"}
    for path in files:
        assert path.read_text().startswith(
            f"# Launch: python bench/arms.py --arms bench/arms/{path.name} "), path.name
        spec = arms.load_arms(path)
        assert spec["bench"] == path.stem
        for quick in (False, True):
            for arm in spec["arms"]:
                parse_space(arms.arm_space(spec, arm, 1, quick), arm)


def test_an_arms_file_with_an_unknown_key_or_comparison_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("bench: x\ncompare: {how: best_finished}\narms: {a: {sett: {}}}\n")
    with pytest.raises(SystemExit, match=r"unknown keys \['sett'\]"):
        arms.load_arms(bad)
    bad.write_text("bench: x\ncompare: {how: vibes}\narms: {a: {}}\n")
    with pytest.raises(SystemExit, match="compare.how"):
        arms.load_arms(bad)
    with pytest.raises(SystemExit, match="ARM=DIR"):
        arms.parse_from(["nope=/x"], {"a": {}})
    assert arms.parse_from(["a=/x"], {"a": {}}) == {"a": Path("/x")}


def test_layers_copy_from_presets_and_set_or_remove_by_dotted_path() -> None:
    raw = arms.apply_layer({}, {"from": {"trial.epochs": "layerwise"},
                                "set": {"tune.seeds": 2, "trial.lr": 1e-4}})
    assert raw == {"trial": {"epochs": load_space("layerwise").base_config().epochs, "lr": 1e-4},
                   "tune": {"seeds": 2}}
    assert arms.apply_layer(raw, {"set": {"trial.lr": None}})["trial"] == {"epochs": 6}


def test_the_grid_is_the_papers_on_the_main_jobs_corpus_and_the_search_is_the_preset() -> None:
    spec = _spec("search_efficiency")
    grid = parse_space(arms.arm_space(spec, "grid"))
    quick = load_space("quick")
    assert grid.data == quick.data and grid.trial == {**quick.trial, "util_docs": 0}
    points = fixed_points(grid, 6, [21, 94, 200])
    assert len(points) == 30 and {p["lr"] for p in points} == {5e-5, 1e-4, 2e-4}
    search = parse_space(arms.arm_space(spec, "search"))
    layerwise = load_space("layerwise")
    assert (search.search, search.assignment) == (layerwise.search, layerwise.assignment)
    assert search.base_config().epochs == layerwise.base_config().epochs
    assert search.data == quick.data and search.tune.scheduler == "asha"
    assert spec["arms"]["search"]["budget_epochs"] == "grid"
    small = parse_space(arms.arm_space(spec, "grid", quick=True))
    assert len(fixed_points(small, 4, [3, 5, 8])) == 2 and small.data.docs == 90
    assert arms.compare_settings(spec, quick=True)["retrain_seeds"] == 1


def _experiment(path: Path, trials: dict[str, list[tuple[int, float]]]) -> Path:
    """trial -> [(timestamp, dev macro RP) per epoch]; each epoch took 10 s; a final report."""
    for name, epochs in trials.items():
        trial = path / f"trial_{name}"
        trial.mkdir(parents=True)
        lines = [{"timestamp": t, arms.EPOCH_S: 10.0, arms.METRIC: v,
                  "epoch": i + 1} for i, (t, v) in enumerate(epochs)]
        lines.append({"timestamp": epochs[-1][0] + 1, arms.EPOCH_S: 10.0,
                      arms.FINAL: 1, arms.TEST_METRIC: 0.5})
        (trial / "result.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n{\"cut")
        (trial / "config.json").write_text(json.dumps({"lr": float(len(name)),
                                                       "assignment": "FLAT"}))
    return path


def test_the_choice_at_a_budget_is_the_best_of_the_epochs_ended_within_it(
    tmp_path: Path,
) -> None:
    trials = arms.read_trials(
        _experiment(tmp_path, {"a": [(1, 0.2), (4, 0.6)], "b": [(2, 0.3)], "cc": [(3, 0.4)]})
    )
    epochs = arms.epoch_reports(trials)  # the final reports (and cut lines) are no epochs
    assert [(e["trial"], e["cumulative_epochs"]) for e in epochs] == [
        ("trial_a", 1), ("trial_b", 2), ("trial_cc", 3), ("trial_a", 4)]
    assert epochs[-1]["cumulative_s"] == 40.0
    assert arms.choice_at(epochs, 3)["trial"] == "trial_cc"
    assert arms.choice_at(epochs, 4)["dev"] == 0.6
    assert arms.choice_at(epochs, 0) is None
    summary = arms.arm_summary(trials)
    assert (summary["epochs"], summary["trials_per_epochs_trained"]) == (4, {1: 2, 2: 1})
    assert arms.describe(epochs[2], trials)["config"]["lr"] == 2.0
    assert arms.epochs_per_trial(trials) == {"trial_a": 2, "trial_b": 1, "trial_cc": 1}


def test_a_kept_arm_is_reused_only_when_its_space_matches_and_it_trained_the_budget(
    tmp_path: Path,
) -> None:
    spec = _spec("search_efficiency")
    kept = _experiment(tmp_path / "search", {"a": [(1, 0.2), (4, 0.6)], "b": [(2, 0.3)]})
    space = arms.arm_space(spec, "search")
    (kept / "hiersearch.json").write_text(json.dumps({"space": space}))
    assert arms.check_kept(kept, space, "search", 3).path == kept
    with pytest.raises(SystemExit, match="--from search=.*: 3 epochs trained, 4 are needed"):
        arms.check_kept(kept, space, "search", 4)
    other = {**space, "trial": {**space["trial"], "epochs": 3}}
    (kept / "hiersearch.json").write_text(json.dumps({"space": other}))
    with pytest.raises(SystemExit, match=r"another experiment \(trial differs\)"):
        arms.check_kept(kept, space, "search", 3)
    with pytest.raises(SystemExit, match="--from grid="):  # a search is no grid
        arms.check_kept(kept, arms.arm_space(spec, "grid"), "grid", None)
    with pytest.raises(SystemExit, match="run grid first"):
        arms._budget("grid", {}, "search")


def test_retraining_a_choice_fixes_its_config_and_uses_seeds_no_arm_ran() -> None:
    config = {**TrialConfig(assignment="L1:2|L2:4|L3:5", lr=7e-5, epochs=6).to_json(),
              "corpus": "/somewhere/else", "seed": 0}
    data = arms.arm_space(_spec("search_efficiency"), "grid")["data"]
    space = parse_space(arms.retrain_space(config, data, 3, 100, "retrain"))
    points = fixed_points(space, 6, [21, 94, 200])
    assert [p["seed"] for p in points] == [100, 101, 102]
    assert {p["variant"] for p in points} == {"L1:2|L2:4|L3:5"}
    base = space.base_config()
    assert (base.lr, base.epochs, base.util_docs, base.corpus) == (7e-5, 6, 0, "")


def test_verdicts_need_the_search_within_one_point_then_above_by_the_seeds_std() -> None:
    def scores(mean: float, std: float) -> dict:
        return {"retrained": {"mean": mean, "std": std}}

    grid = scores(0.60, 0.01)
    ok = arms.verdicts(grid, {"0.35": scores(0.595, 0.01), "1.00": scores(0.63, 0.02)})
    assert ok["target_35pct_within_1_point"] == "MET"
    assert ok["target_100pct_above_by_more_than_std"] == "MET"
    short = arms.verdicts(grid, {"0.35": None, "1.00": scores(0.615, 0.02)})
    assert short["target_35pct_within_1_point"].startswith("MISSED")
    assert short["target_100pct_above_by_more_than_std"] == "MISSED"  # +1.5 < 2 points


def test_the_arms_are_the_pareto_preset_with_mo_asha_and_without() -> None:
    import dataclasses

    spec = _spec("pareto_pruning")
    unpruned = parse_space(arms.arm_space(spec, "unpruned"))
    pruned = parse_space(arms.arm_space(spec, "mo-asha"))
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
    assert arms.hypervolume(front, (0.0, 7.0)) == pytest.approx(0.69 * 1 + 0.65 * 3)
    dominated = np.vstack([front, [[-0.60, 4.0]]])  # adds nothing
    assert arms.hypervolume(dominated, (0.0, 7.0)) == pytest.approx(0.69 + 1.95)
    assert arms.hypervolume(np.array([[0.1, 8.0]]), (0.0, 7.0)) == 0.0


def test_pbt_compare_gives_each_arm_the_pbt_presets_corpus_and_the_same_epochs() -> None:
    spec = _spec("pbt_compare")
    spaces = {arm: parse_space(arms.arm_space(spec, arm, 1), arm) for arm in spec["arms"]}
    assert {s.tune.scheduler for s in spaces.values()} == {"none", "asha", "pbt"}
    for space in spaces.values():
        assert space.data == spaces["pbt"].data and space.trial == spaces["pbt"].trial
        assert space.tune.sampler_seed == 1
    fixed = spaces["fixed"]
    points = fixed_points(fixed, 6, [22, 88, 285, 933])
    epochs = fixed.base_config().epochs
    budget = spec["arms"]["asha"]["budget_epochs"]
    assert len(points) * epochs == budget
    assert {p["seed"] for p in points} == {2, 3}
    assert spaces["pbt"].tune.num_samples * epochs == budget
    assert spaces["asha"].search == spaces["pbt"].search
    assert arms.arm_space(spec, "pbt", 2)["name"] == "pbt-2"


def test_pbt_compare_answers_with_the_best_finished_trial_on_dev() -> None:
    rows = [
        {"trial_id": "a", "status": "terminated", "dev/rp_macro": 0.8, "test/rp_macro": 0.7},
        {"trial_id": "b", "status": "stopped early", "dev/rp_macro": 0.9, "test/rp_macro": None},
        {"trial_id": "c", "status": "terminated", "dev/rp_macro": 0.85, "test/rp_macro": 0.6},
        {"trial_id": "x", "status": "baseline", "dev/rp_macro": 0.99, "test/rp_macro": 0.99},
    ]
    got = arms.answer(rows)
    assert got["best_trial"] == "c" and got["test_macro"] == 0.6 and got["trials"] == 3
    out = arms.summary({"pbt": [{"test_macro": 0.6, "epochs": 40, "seconds": 10},
                                {"test_macro": 0.8, "epochs": 42, "seconds": 12}]})
    assert out["pbt"]["test_macro_mean"] == pytest.approx(0.7)
    assert out["pbt"]["epochs_mean"] == 41


# --- SMART's cost per step (bench/smart_cost.py) ------------------------------------------------
def test_smart_cost_pairs_each_arm_with_off_in_the_same_round() -> None:
    per_step = {"off": [1.0, 2.0, 4.0], "adversarial": [2.0, 5.0, 8.0], "both": [1.0, 2.0, 4.0]}
    assert smart_cost.ratios(per_step) == {"adversarial": 2.0, "both": 1.0}


def test_smart_cost_arms_are_trials_with_and_without_each_term() -> None:
    terms = {arm: smart_cost.arm_config("tiny:3x32", 1, 2, smart).smart_terms()
             for arm, smart in smart_cost.ARMS.items()}
    assert terms == {"off": [], "adversarial": ["smart_weight"],
                     "bregman": ["smart_bregman_weight"],
                     "both": ["smart_weight", "smart_bregman_weight"]}


# --- a corpus you import yourself: ICD-10-CM (bench/corpora/icd10cm.py) -------------------------
def _icd10cm() -> ModuleType:
    sys.path.insert(0, str(BENCH / "corpora"))
    import icd10cm

    return icd10cm


def _icd10cm_records(count: int) -> list[dict]:
    return list(itertools.islice(_icd10cm().icd10cm_records(), count))


def test_icd10cm_documents_are_4_and_5_character_codes_labelled_with_themselves() -> None:
    records = {r["id"]: r for r in _icd10cm_records(400)}
    assert all(r["labels"] == [code] for code, r in records.items())
    assert "A01" not in records and "A01.0" in records and "A01.01" in records  # category: no
    assert records["A01.0"]["text"] == "Typhoid fever. Infection due to Salmonella typhi"
    assert records["A00.9"]["text"] == "Cholera, unspecified"  # no inclusion term


def test_icd10cm_leaves_out_extension_codes_and_codes_of_6_characters() -> None:
    import simple_icd_10_cm as cm

    from hiersearch.data.vocabularies import icd10_hierarchy

    codes = ("S00.00", "S00.00XA", "T07.XXXA", "E11.35", "E11.351", "E11.3511")
    kept = {c: _icd10cm().is_document(cm, icd10_hierarchy().node(c)) for c in codes}
    assert kept == {"S00.00": True, "S00.00XA": False, "T07.XXXA": False, "E11.35": True,
                    "E11.351": False, "E11.3511": False}


def test_icd10cm_records_import_with_their_ancestors(tmp_path: Path) -> None:
    from hiersearch.data.loaders import load_jsonl
    from hiersearch.data.vocabularies import icd10_hierarchy

    records = _icd10cm_records(90)
    for split, part in zip(("train", "dev", "test"), (records[:60], records[60:75],
                                                       records[75:]), strict=True):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    corpus = load_jsonl(tmp_path, icd10_hierarchy()).truncate(1, 4)
    typhoid = next(d for d in corpus.splits["train"] if d.id == "A01.01")
    assert set(typhoid.labels) == {"1", "A00-A09", "A01", "A01.0"}


def test_head_speed_before_arm_is_the_for_loop_adamw_and_the_clip_over_every_module() -> None:
    import types

    import torch

    from hiersearch.trial import training

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].requires_grad_(False)  # a frozen "encoder" the old clip still walked
    core = types.SimpleNamespace(heads=model[1])
    recipe = types.SimpleNamespace(model=model, trained=list(model[1].parameters()))
    config = TrialConfig(head_lr=1e-2)
    cpu = torch.device("cpu")
    with head_speed.step_as_before(recipe):
        assert not training.build_optimizer(core, model, config, cpu).defaults["fused"]
        assert training.clip_gradients is torch.nn.utils.clip_grad_norm_
        assert len(list(recipe.trained)) == len(list(recipe.trained)) == 4
    assert training.build_optimizer(core, model, config, cpu).defaults["fused"]
    assert recipe.trained == list(model[1].parameters())


def test_head_speed_summary_sets_each_arm_against_befores_seeds() -> None:
    def rows(dev: list[float], rate: float) -> list[dict[str, object]]:
        return [{"seed": i, "dev_rp_macro": d, "test_rp_macro": d - 0.1,
                 "train_docs_per_s": [rate, rate], "dev_eval_s": [1.0], "trial_s": 10.0,
                 "trial_cpu_s": 5.0} for i, d in enumerate(dev)]

    summary = head_speed.quality_summary({
        "before": rows([0.50, 0.52, 0.54], 100.0),
        "after": rows([0.51, 0.52, 0.53], 180.0),
        "after_batch64": rows([0.40, 0.41, 0.42], 400.0),
    })
    assert summary["before"]["dev"]["spread"] == pytest.approx(0.04)
    assert summary["after"]["dev"]["within_before_spread"] is True
    assert summary["after_batch64"]["test"]["within_before_spread"] is False
    assert summary["after"]["speedup_vs_before"] == 1.8
    assert summary["after_batch64"]["dev"]["paired_diff"] == [-0.1, -0.11, -0.12]
