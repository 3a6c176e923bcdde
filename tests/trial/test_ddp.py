"""The recipe under DDP without Ray: two gloo processes, as a two-worker trial's ranks run.

What a GPU cluster would show only as a hang or a slow drift: a divergence on one rank must
stop both ranks together (not leave one waiting in the gradient all-reduce until NCCL's
watchdog fires), and every rank must evaluate with the running statistics its checkpoint keeps.
"""

from __future__ import annotations

import json
import multiprocessing
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from hiersearch.data.encode import encode
from hiersearch.data.synth import SynthConfig, synthesize
from hiersearch.data.vocabularies import eurovoc_hierarchy
from hiersearch.model.encoder import tokenizer_path
from hiersearch.trial.config import TrialConfig

pytestmark = pytest.mark.slow

# Long enough for two processes to import torch and train a tiny model on a loaded 2-core
# machine; a rank left waiting in a collective times out (gloo) well after it.
JOIN_TIMEOUT_S = 240
COLLECTIVE_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> str:
    corpus = synthesize(eurovoc_hierarchy(), SynthConfig(docs=60, seed=1, max_leaves=12))
    return str(encode(corpus, tokenizer_path("minilm"), 32, tmp_path_factory.mktemp("c")).path)


@pytest.fixture(scope="module")
def mpnet_encoded(tmp_path_factory: pytest.TempPathFactory, tiny_mpnet: str) -> str:
    corpus = synthesize(eurovoc_hierarchy(), SynthConfig(docs=60, seed=1, max_leaves=12))
    return str(encode(corpus, tokenizer_path(tiny_mpnet), 32, tmp_path_factory.mktemp("m")).path)


def _config(**changes: Any) -> TrialConfig:
    # 42 training documents: 21 a rank, in 7 batches of 3 (a last batch of one document would
    # leave the running statistics alone, and every rank would hold rank 0's by chance)
    return TrialConfig(
        model="tiny:4x32", assignment="LAST-THREE", epochs=2, batch_size=3, lr=1e-3,
        max_length=32, util_docs=0, eval_batch_size=16, pooling="mean", head_norm="batchnorm",
        divergence_check_steps=2, **changes,
    )


def _rank(rank: int, world: int, init: str, encoded: str, config: dict[str, Any],
          nan_rank: int | None, out: str) -> None:
    """One rank: train the trial, then write what it saw to `out/rank<N>.json`."""
    import torch
    import torch.distributed as dist

    from hiersearch import metrics as M
    from hiersearch.model.classifier import LayerwiseClassifier
    from hiersearch.trial.recipe import TrialRecipe
    from hiersearch.trial.session import LocalSession

    result: dict[str, Any] = {"rank": rank}
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                                timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        if nan_rank == rank:  # this rank's second micro-batch diverges, no other rank's
            calls = {"n": 0}
            real_loss = LayerwiseClassifier.loss

            def loss(self: LayerwiseClassifier, logits: Any, labels: Any) -> Any:
                calls["n"] += 1
                value = real_loss(self, logits, labels)
                return value * float("nan") if calls["n"] >= 2 else value

            LayerwiseClassifier.loss = loss  # type: ignore[method-assign]
        root = Path(out) / f"checkpoints{rank}"
        root.mkdir(parents=True)
        session = LocalSession(checkpoint_root=root, rank=rank, world_size=world)
        recipe = TrialRecipe(TrialConfig.from_dict(config), session)
        recipe.setup(encoded)
        final = recipe.train()
        result.update(
            stop=final[M.TRIAL_STOP_REASON],
            epochs=[r[M.EPOCH] for r in session.reports],
            bucket_view=recipe.model.gradient_as_bucket_view,
            buffers=[b.double().sum().item() for b in recipe.core.buffers()
                     if b.dtype.is_floating_point],
            weights=sum(p.double().sum().item() for p in recipe.core.parameters()),
            cached=type(recipe.sources["train"]).__name__ == "CachedSplit",
        )
        dist.destroy_process_group()
    except Exception:  # the parent reads why a rank failed
        result["error"] = traceback.format_exc()
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(result))


def _run_two_ranks(tmp_path: Path, encoded: str, config: TrialConfig,
                   nan_rank: int | None = None) -> list[dict[str, Any]]:
    context = multiprocessing.get_context("spawn")
    init = f"file://{tmp_path / 'rendezvous'}"
    ranks = [
        context.Process(target=_rank, args=(rank, 2, init, encoded, config.to_json(), nan_rank,
                                            str(tmp_path)))
        for rank in range(2)
    ]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(JOIN_TIMEOUT_S)
    hung = [p.pid for p in ranks if p.is_alive()]
    for process in ranks:
        process.kill()
    assert not hung, f"ranks {hung} still running after {JOIN_TIMEOUT_S} s: DDP hangs"
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for result in results:
        assert "error" not in result, result["error"]
    return results


def test_a_divergence_on_one_rank_stops_every_rank_in_the_same_epoch(
    tmp_path: Path, encoded: str
) -> None:
    results = _run_two_ranks(tmp_path, encoded, _config(), nan_rank=1)
    assert [r["stop"] for r in results] == ["nan_loss", "nan_loss"]
    assert [r["epochs"] for r in results] == [[1], [1]]  # the diverged report only


def test_ddp_ranks_evaluate_with_rank_zeros_running_statistics(
    tmp_path: Path, encoded: str
) -> None:
    """Each rank's batchnorm head updates its running statistics with its own last batch;
    before evaluating, rank 0's reach every rank. Gradients are views into DDP's buckets."""
    results = _run_two_ranks(tmp_path, encoded, _config())
    assert [r["stop"] for r in results] == ["completed", "completed"]
    assert results[0]["buffers"] == results[1]["buffers"] and results[0]["buffers"]
    assert all(r["bucket_view"] for r in results)


@pytest.mark.parametrize("freeze", [2, "all"], ids=["frozen-2", "head-only"])
def test_ddp_ranks_train_from_one_shared_feature_cache_and_stay_in_step(
    tmp_path: Path, encoded: str, freeze: int | str
) -> None:
    results = _run_two_ranks(tmp_path, encoded, _config(freeze_layers=freeze))
    assert [r["stop"] for r in results] == ["completed", "completed"]
    assert all(r["cached"] for r in results)
    assert results[0]["weights"] == results[1]["weights"]  # the same all-reduced steps
    (features,) = Path(encoded).parent.glob("features-*")
    assert (features / "pooled" / "meta.json").is_file()


@pytest.mark.parametrize("freeze", [0, "all"], ids=["fine-tuned", "head-only"])
def test_ddp_ranks_train_an_mpnet_and_stay_in_step(
    tmp_path: Path, mpnet_encoded: str, tiny_mpnet: str, freeze: int | str
) -> None:
    """Every trained parameter gets a gradient on every rank (DDP refuses one that does not):
    MPNet's shared relative position bias trains with the layers, or is frozen with them."""
    config = _config(freeze_layers=freeze).replace(model=tiny_mpnet)
    results = _run_two_ranks(tmp_path, mpnet_encoded, config)
    assert [r["stop"] for r in results] == ["completed", "completed"]
    assert results[0]["weights"] == results[1]["weights"]


def test_ddp_ranks_with_smart_take_the_same_all_reduced_steps(
    tmp_path: Path, encoded: str
) -> None:
    """SMART's extra forwards run on the model itself (the embeddings' output perturbed by a
    hook), its final term's gradients join the loss's one backward through DDP: every rank
    still takes the same steps."""
    smart = {"smart_weight": 1.0, "smart_bregman_weight": 1.0, "smart_eps": 0.05,
             "smart_step_size": 0.05}
    results = _run_two_ranks(tmp_path, encoded, _config(**smart))
    assert [r["stop"] for r in results] == ["completed", "completed"]
    assert results[0]["weights"] == results[1]["weights"]
