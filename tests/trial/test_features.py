"""The feature cache (`hiersearch.trial.features`): cached frozen layers and head-only trials
give the logits of the uncached model with its frozen layers in eval mode, are built once and
shared, and a cache that is partial, corrupt or too large is never trusted."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hiersearch.data.encode import Split, encode
from hiersearch.data.synth import SynthConfig, synthesize
from hiersearch.data.vocabularies import eurovoc_hierarchy
from hiersearch.model.encoder import tokenizer_path
from hiersearch.trial import features
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.evaluation import evaluate_split
from hiersearch.trial.features import CachedSplit
from hiersearch.trial.recipe import TrialRecipe, fit
from hiersearch.trial.session import LocalSession

# heads on a frozen layer (2), on trained ones (4, 6) with freeze_layers: 3
ASSIGNMENT = "L1:2|L2:4|L3:6"
# cached and uncached logits differ by float rounding at most (measured: 0.0 on the CPU)
ATOL = 1e-5


@pytest.fixture()
def encoded(tmp_path: Path) -> str:
    corpus = synthesize(eurovoc_hierarchy(), SynthConfig(docs=40, seed=3, max_leaves=10))
    return str(encode(corpus, tokenizer_path("minilm"), 40, tmp_path / "cache").path)


def _config(**changes: object) -> TrialConfig:
    base = TrialConfig(model="tiny:6x32", assignment=ASSIGNMENT, epochs=1, batch_size=8,
                       max_length=40, util_docs=4, eval_batch_size=16, freeze_layers=3)
    return base.replace(**changes)


def _recipe(config: TrialConfig, encoded: str, tmp_path: Path) -> TrialRecipe:
    root = tmp_path / f"ck-{len(list(tmp_path.iterdir()))}"
    root.mkdir()
    recipe = TrialRecipe(config, LocalSession(checkpoint_root=root))
    recipe.setup(encoded)
    return recipe


def _features_dir(encoded: str) -> Path:
    (found,) = Path(encoded).parent.glob("features-*")
    return found


@pytest.mark.parametrize("pooling", ["cls", "mean", "cls_mean"])
@pytest.mark.parametrize("freeze", [3, "all"], ids=["frozen-3", "head-only"])
def test_cached_logits_equal_the_uncached_forward_with_frozen_layers_in_eval_mode(
    encoded: str, tmp_path: Path, pooling: str, freeze: int | str
) -> None:
    recipe = _recipe(_config(pooling=pooling, freeze_layers=freeze), encoded, tmp_path)
    dev = recipe.sources["dev"]
    assert isinstance(dev, CachedSplit) and (dev.states is None) == (freeze == "all")
    args = (recipe.num_labels, recipe.session, 5, contextlib.nullcontext)
    cached = evaluate_split(recipe.core, dev, *args)
    uncached = evaluate_split(recipe.core, recipe.dev, *args)  # token ids, all in eval mode
    assert cached is not None and uncached is not None
    np.testing.assert_allclose(cached[0], uncached[0], rtol=0, atol=ATOL)
    np.testing.assert_allclose(cached[2], uncached[2], rtol=0, atol=ATOL)


@pytest.fixture()
def mpnet_encoded(tmp_path: Path, tiny_mpnet: str) -> str:
    """The corpus encoded with the tiny MPNet's own tokenizer (`<s>` .. `</s>`, pad id 1)."""
    corpus = synthesize(eurovoc_hierarchy(), SynthConfig(docs=40, seed=3, max_leaves=10))
    return str(encode(corpus, tokenizer_path(tiny_mpnet), 40, tmp_path / "cache").path)


def _assert_cached_equals_uncached(recipe: TrialRecipe) -> None:
    args = (recipe.num_labels, recipe.session, 5, contextlib.nullcontext)
    cached = evaluate_split(recipe.core, recipe.sources["dev"], *args)
    uncached = evaluate_split(recipe.core, recipe.dev, *args)
    assert cached is not None and uncached is not None
    np.testing.assert_allclose(cached[0], uncached[0], rtol=0, atol=ATOL)


@pytest.mark.parametrize("freeze", [3, "all"], ids=["frozen-3", "head-only"])
def test_mpnets_cached_logits_equal_the_uncached_forward_before_and_after_training(
    mpnet_encoded: str, tiny_mpnet: str, tmp_path: Path, freeze: int | str
) -> None:
    """MPNet's encoder adds a relative position bias to every layer: computed from the
    states' length on the cached path, and frozen with the lower layers, so the cache still
    holds their outputs after the upper layers trained."""
    config = _config(model=tiny_mpnet, pooling="cls_mean", freeze_layers=freeze, lr=1e-2)
    recipe = _recipe(config, mpnet_encoded, tmp_path)
    assert isinstance(recipe.sources["dev"], CachedSplit)
    _assert_cached_equals_uncached(recipe)
    before = {k: v.clone() for k, v in recipe.core.state_dict().items()}
    assert recipe.train_epoch(0).finite
    changed = {k for k, v in recipe.core.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("heads.") for k in changed)
    assert any(k.startswith("encoder.encoder.layer.3.") for k in changed) == (freeze == 3)
    assert not any(k.startswith(("encoder.embeddings.", "encoder.encoder.layer.0.",
                                 "encoder.encoder.relative")) for k in changed)
    _assert_cached_equals_uncached(recipe)


def _layer_calls(recipe: TrialRecipe) -> list[int]:
    calls: list[int] = []
    for number, layer in enumerate(recipe.core.encoder.encoder.layer, 1):
        layer.register_forward_hook(lambda *_a, n=number: calls.append(n))
    return calls


@pytest.mark.parametrize(("freeze", "runs"), [(3, {4, 5, 6}), ("all", set())])
def test_training_and_evaluation_run_only_the_layers_above_the_frozen_ones(
    encoded: str, tmp_path: Path, freeze: int | str, runs: set[int]
) -> None:
    recipe = _recipe(_config(freeze_layers=freeze), encoded, tmp_path)
    calls = _layer_calls(recipe)
    trained = recipe.train_epoch(0)
    assert trained.finite and recipe.evaluate(trained) is not None
    assert set(calls) == runs


def test_a_head_only_trial_trains_the_heads_and_leaves_the_encoder_as_loaded(
    encoded: str, tmp_path: Path
) -> None:
    recipe = _recipe(_config(freeze_layers="all", epochs=2), encoded, tmp_path)
    encoder = {k: v.clone() for k, v in recipe.core.encoder.state_dict().items()}
    heads = {k: v.clone() for k, v in recipe.core.heads.state_dict().items()}
    final = recipe.train()
    assert all(torch.equal(v, recipe.core.encoder.state_dict()[k]) for k, v in encoder.items())
    assert any(not torch.equal(v, recipe.core.heads.state_dict()[k]) for k, v in heads.items())
    # the same reporter keys as a fine-tuned trial's
    tuned = fit(_config(freeze_layers=0), encoded, _recipe(_config(), encoded, tmp_path).session)
    assert set(final) == set(tuned)


def test_the_cache_is_built_once_and_read_by_the_next_trial(
    encoded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _recipe(_config(), encoded, tmp_path)
    meta = _features_dir(encoded) / "pooled" / "meta.json"
    built = meta.stat().st_mtime_ns
    again = _recipe(_config(seed=0, lr=1e-3, pooling="mean"), encoded, tmp_path)
    assert meta.stat().st_mtime_ns == built
    assert isinstance(again.sources["train"], CachedSplit)
    assert "rebuilding" not in capsys.readouterr().err
    # another k adds its token states beside the same pooled vectors
    _recipe(_config(freeze_layers=2), encoded, tmp_path)
    assert meta.stat().st_mtime_ns == built
    assert sorted(p.name for p in _features_dir(encoded).iterdir() if not p.name.startswith("."))\
        == ["pooled", "states-L2", "states-L3"]


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "no-meta"])
def test_a_damaged_cache_is_rebuilt_never_trusted(
    encoded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    first = _recipe(_config(), encoded, tmp_path)
    good = np.array(first.sources["train"].pooled)
    target = _features_dir(encoded) / "pooled" / "train.npy"
    if damage == "no-meta":  # as a build that died before its last file
        (target.parent / "meta.json").unlink()
    else:
        data = bytearray(target.read_bytes())
        data = data[:-64] if damage == "truncated" else data[:-64] + bytes(64)
        target.write_bytes(bytes(data))
    features._checked.clear()  # as a new process would: it checks every cache once
    again = _recipe(_config(), encoded, tmp_path)
    np.testing.assert_array_equal(np.asarray(again.sources["train"].pooled), good)
    assert "rebuilding" in capsys.readouterr().err


def test_a_cache_over_the_size_limit_is_not_built_and_the_trial_says_so_once(
    encoded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _recipe(_config(feature_cache_gb=1e-6), encoded, tmp_path)
    assert isinstance(recipe.sources["train"], Split)
    assert not list(Path(encoded).parent.glob("features-*"))
    err = capsys.readouterr().err
    assert err.count("over feature_cache_gb: 1e-06") == 1
    assert "recomputes its 3 frozen layers" in err
    recipe.train_epoch(0)  # and it trains, uncached


def test_feature_cache_false_runs_the_frozen_layers_every_step(
    encoded: str, tmp_path: Path
) -> None:
    recipe = _recipe(_config(feature_cache=False), encoded, tmp_path)
    calls = _layer_calls(recipe)
    recipe.train_epoch(0)
    assert isinstance(recipe.sources["train"], Split) and set(calls) == set(range(1, 7))


_SHARER = """
import hashlib, json, os, sys
from pathlib import Path
from hiersearch.trial import features
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.recipe import TrialRecipe
from hiersearch.trial.session import LocalSession
build = features._build
def counted(*args, **kwargs):
    with open(sys.argv[2], "a") as log:
        log.write(f"{os.getpid()}\\n")
    return build(*args, **kwargs)
features._build = counted
config = TrialConfig(model="tiny:6x32", assignment="L1:2|L2:4|L3:6", max_length=40,
                     freeze_layers=3, eval_batch_size=4)
recipe = TrialRecipe(config, LocalSession(checkpoint_root=Path(sys.argv[3])))
recipe.setup(sys.argv[1])
train = recipe.sources["train"]
print(hashlib.sha256(bytes(train.pooled) + bytes(train.states)).hexdigest())
"""


@pytest.mark.slow
def test_two_concurrent_trials_share_one_build(encoded: str, tmp_path: Path) -> None:
    log = tmp_path / "builds.log"
    procs = []
    for n in range(2):
        (tmp_path / f"ck{n}").mkdir()
        procs.append(subprocess.Popen(
            [sys.executable, "-c", _SHARER, encoded, str(log), str(tmp_path / f"ck{n}")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in outs]
    assert len(log.read_text().split()) == 1  # one built, the other waited and read it
    digests = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(digests) == 1
    meta = json.loads((_features_dir(encoded) / "pooled" / "meta.json").read_text())
    assert str(meta["pid"]) == log.read_text().split()[0]
