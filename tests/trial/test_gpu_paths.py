"""The recipe's GPU code paths, checked on the CPU: precision modes (forced on with CPU
autocast), loss scaling, host syncs, fused AdamW, the GPU's random state and memory figures
(torch.cuda mocked), what a checkpoint restores where. `tests/test_gpu.py` runs the same paths
on a real GPU when there is one."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from hiersearch import metrics as M
from hiersearch.data.encode import encode
from hiersearch.data.synth import SynthConfig, synthesize
from hiersearch.data.vocabularies import eurovoc_hierarchy
from hiersearch.model.encoder import tokenizer_path
from hiersearch.trial import checkpoint, evaluation, training
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.precision import Precision
from hiersearch.trial.recipe import STOP_COMPLETED, TrialRecipe, fit
from hiersearch.trial.session import LocalSession

CUDA = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> str:
    corpus = synthesize(eurovoc_hierarchy(), SynthConfig(docs=60, seed=1, max_leaves=12))
    return str(encode(corpus, tokenizer_path("minilm"), 32, tmp_path_factory.mktemp("c")).path)


def _config(**changes: Any) -> TrialConfig:
    base = TrialConfig(model="tiny:4x32", assignment="LAST-THREE", epochs=2, batch_size=6,
                       lr=1e-3, max_length=32, util_docs=0, eval_batch_size=16)
    return base.replace(**changes)


def _session(tmp_path: Path) -> LocalSession:
    (tmp_path / "checkpoints").mkdir(parents=True, exist_ok=True)
    return LocalSession(checkpoint_root=tmp_path / "checkpoints")


@pytest.fixture
def reduced_precision_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Precision modes take effect on the CPU as on a GPU: CPU autocast and a CPU GradScaler
    stand in for CUDA's; TF32 switches are left alone (the CPU has none)."""
    monkeypatch.setattr(Precision, "of", classmethod(lambda cls, name, device: cls(
        name, device, active=True)))
    monkeypatch.setattr(Precision, "apply_matmul_settings", lambda self: None)


def test_precision_means_autocast_and_loss_scaling_on_a_gpu_and_float32_on_the_cpu() -> None:
    cpu = torch.device("cpu")
    assert [Precision.of(p, CUDA).autocast_dtype for p in ("bf16", "fp16", "tf32", "fp32")] == [
        torch.bfloat16, torch.float16, None, None]
    assert all(Precision.of(p, cpu).autocast_dtype is None for p in ("bf16", "fp16"))
    assert Precision.of("fp16", cpu).grad_scaler() is None
    assert Precision("fp16", cpu, active=True).grad_scaler() is not None
    assert Precision("bf16", cpu, active=True).grad_scaler() is None


@pytest.mark.parametrize(("mode", "matmul"), [("bf16", "high"), ("tf32", "high"),
                                              ("fp16", "highest"), ("fp32", "highest")])
def test_tf32_matmuls_are_on_for_bf16_and_tf32_only(mode: str, matmul: str) -> None:
    before = torch.get_float32_matmul_precision()
    try:
        Precision.of(mode, CUDA).apply_matmul_settings()
        assert torch.get_float32_matmul_precision() == matmul
        torch.set_float32_matmul_precision("medium")
        Precision.of(mode, torch.device("cpu")).apply_matmul_settings()  # CPU: left alone
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.usefixtures("reduced_precision_on_cpu")
def test_fp16_trains_with_a_grad_scaler_whose_state_the_checkpoint_keeps(
    encoded: str, tmp_path: Path
) -> None:
    session = _session(tmp_path)
    final = fit(_config(precision="fp16", util_docs=4), encoded, session)
    assert final[M.TRIAL_STOP_REASON] == STOP_COMPLETED
    saved = torch.load(session.checkpoints[0] / "train_state.pt", weights_only=False)
    assert saved["scaler"]["scale"] > 0  # a scaler's state, restored on resume


@pytest.mark.usefixtures("reduced_precision_on_cpu")
def test_bf16_runs_the_encoder_and_the_utilization_pass_under_autocast(
    encoded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: Counter[str] = Counter()
    measure = evaluation.measure_utilization

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen[str(torch.get_autocast_dtype("cpu"))] += torch.is_autocast_enabled("cpu")
        return measure(*args, **kwargs)

    monkeypatch.setattr(evaluation, "measure_utilization", spy)
    final = fit(_config(epochs=1, util_docs=4), encoded, _session(tmp_path))
    assert seen == Counter({"torch.bfloat16": 1})
    assert M.UTIL_ENTROPY_MEAN in final


def test_a_training_epoch_reads_no_tensor_on_the_host_per_micro_batch(
    encoded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`float(loss)` or `if torch.isfinite(loss)` after each micro-batch would stall a GPU's
    queue each step: hiersearch reads tensors at divergence checks and the epoch's end only
    (what torch's optimizer does inside `step` is its own: fused on a GPU, no reads)."""
    recipe = TrialRecipe(_config(batch_size=2, divergence_check_steps=100), _session(tmp_path))
    recipe.setup(encoded)
    reads: Counter[str] = Counter()
    for name in ("item", "__float__", "__bool__", "__int__", "tolist"):
        real = getattr(torch.Tensor, name)

        def counting(self: torch.Tensor, *args: Any, _real: Any = real, _name: str = name) -> Any:
            if "/hiersearch/" in sys._getframe(1).f_code.co_filename:
                reads[_name] += 1
            return _real(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counting)
    trained = recipe.train_epoch(0)
    monkeypatch.undo()
    assert trained.batches == 21 and trained.finite  # 42 documents, 2 a micro-batch
    # the finite check, the mean loss, and on the CPU only the clip's within-norm test, one a
    # step (`clip_gradients`: a GPU's norm is never read, the next test)
    assert reads == Counter({"item": 1, "__float__": 1, "__bool__": 21})


def test_the_clip_reads_no_norm_off_the_cpu() -> None:
    """Off the CPU the clip scales by torch's coefficient without reading the norm: meta
    tensors, which have no values to read, stand in for a GPU's."""
    grads = [torch.empty(3, device="meta"), torch.empty(2, 2, device="meta")]
    parameters = [torch.nn.Parameter(torch.empty_like(g)) for g in grads]
    for parameter, grad in zip(parameters, grads, strict=True):
        parameter.grad = grad
    norm = training.clip_gradients(parameters, 1.0)
    assert norm.device.type == "meta"


def test_the_clip_on_the_cpu_equals_torchs_over_and_within_the_norm() -> None:
    for scale in (0.01, 100.0):
        ours = [torch.nn.Parameter(torch.ones(3)) for _ in range(2)]
        theirs = [torch.nn.Parameter(torch.ones(3)) for _ in range(2)]
        for p, q in zip(ours, theirs, strict=True):
            p.grad = torch.full((3,), scale)
            q.grad = torch.full((3,), scale)
        norm = training.clip_gradients(ours, 1.0)
        expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
        assert torch.equal(norm, expected)
        assert all(torch.equal(p.grad, q.grad) for p, q in zip(ours, theirs, strict=True))


def test_a_divergence_is_found_at_the_next_check_and_stops_the_epoch_there(
    encoded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hiersearch.model.classifier import LayerwiseClassifier

    calls = {"n": 0}
    real = LayerwiseClassifier.loss

    def loss(self: LayerwiseClassifier, logits: torch.Tensor, labels: torch.Tensor) -> Any:
        calls["n"] += 1
        return real(self, logits, labels) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(LayerwiseClassifier, "loss", loss)
    recipe = TrialRecipe(_config(batch_size=2, divergence_check_steps=4), _session(tmp_path))
    recipe.setup(encoded)
    trained = recipe.train_epoch(0)
    assert not trained.finite and calls["n"] == 4  # stopped at the check after step 4


def test_adamw_is_fused_on_the_cpu_and_a_gpu_and_not_elsewhere(
    encoded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = TrialRecipe(_config(), _session(tmp_path))
    recipe.setup(encoded)
    assert recipe.optimizer.defaults["fused"] is True
    made: list[dict[str, Any]] = []
    monkeypatch.setattr(torch.optim, "AdamW", lambda groups, **kw: made.append(kw) or
                        torch.optim.SGD(groups, lr=kw["lr"]))
    # the optimizer is what is built for the device; nothing runs there
    for device in (CUDA, torch.device("mps")):
        recipe.session.device = device
        recipe._setup_optimizer()
    assert [kw["fused"] for kw in made] == [True, False]


def test_the_gpus_random_state_is_saved_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropout on a GPU draws from the GPU's generator: a resumed trial that started it afresh
    would drop other units than the uninterrupted one."""
    states: dict[str, Any] = {"cuda": torch.tensor([7], dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: states["cuda"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: states.update(
        cuda=state, device=device))
    saved = checkpoint.rng_state(CUDA)
    assert saved["cuda"].tolist() == [7]
    states["cuda"] = torch.tensor([1], dtype=torch.uint8)
    checkpoint.set_rng_state(saved, CUDA)
    assert states["cuda"].tolist() == [7] and states["device"] == CUDA
    assert "cuda" not in checkpoint.rng_state(torch.device("cpu"))
    checkpoint.set_rng_state(checkpoint.rng_state(torch.device("cpu")), CUDA)  # CPU ckpt


def test_a_checkpoint_is_read_onto_the_cpu_or_this_ranks_device_never_the_savers(
    encoded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = _session(tmp_path)
    fit(_config(epochs=1), encoded, session)
    where: list[Any] = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: where.append(kw.get("map_location"))
                        or real(*a, **kw))
    recipe = TrialRecipe(_config(epochs=2), session)
    recipe.setup(encoded)
    recipe._load_checkpoint(session.checkpoints[0])
    assert where and all(w in ("cpu", torch.device("cpu")) for w in where), where


def test_a_trial_frees_the_last_trials_cached_gpu_memory_and_reports_both_peaks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 3 * 2**20)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d: 5 * 2**20)
    training.fresh_device_memory(CUDA)
    assert calls == ["empty_cache", "reset"]
    assert training.peak_memory_mb(CUDA) == (3.0, 5.0)
    training.fresh_device_memory(torch.device("cpu"))
    assert calls == ["empty_cache", "reset"]


def test_every_epoch_reports_the_reserved_memory_beside_the_allocated(
    encoded: str, tmp_path: Path
) -> None:
    session = _session(tmp_path)
    fit(_config(epochs=1), encoded, session)
    report = session.reports[0]
    assert report[M.PEAK_RESERVED_MB] >= report[M.PEAK_MEMORY_MB] > 0


def test_ddp_can_all_reduce_gradients_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn import parallel

    made: list[Any] = []

    class FakeDDP:
        def __init__(self, module: Any, **kwargs: Any) -> None:
            made.append(kwargs)
            self.hooks: list[Any] = []

        def register_comm_hook(self, state: Any, hook: Any) -> None:
            self.hooks.append(hook)

    monkeypatch.setattr(parallel, "DistributedDataParallel", FakeDDP)
    session = LocalSession(checkpoint_root=Path("."), device=CUDA)
    compressed = training.wrap_ddp(torch.nn.Linear(2, 2), session, "bf16")
    plain = training.wrap_ddp(torch.nn.Linear(2, 2), session, "none")
    assert compressed.hooks == [default_hooks.bf16_compress_hook] and plain.hooks == []
    assert made[0] == {"device_ids": [0], "gradient_as_bucket_view": True}
