"""On a real GPU (marker `gpu`: skipped without CUDA; `bench/gpu_check.sh` runs them): every
precision trains a trial, the heads' logits stay float32 under autocast, a one-worker Tune
trial gets its GPU, and predict on the GPU gives the CPU's scores within bf16's rounding.
`tests/trial/test_gpu_paths.py` checks the same code paths on the CPU."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hiersearch import metrics as M
from hiersearch.data.corpus import load_corpus_dir, write_corpus
from hiersearch.data.encode import encode
from hiersearch.data.synth import SynthConfig, synthesize
from hiersearch.data.vocabularies import eurovoc_hierarchy
from hiersearch.files import atomic_directory
from hiersearch.model.assignment import named_variant
from hiersearch.model.classifier import LayerwiseClassifier
from hiersearch.model.encoder import load_encoder, tokenizer_path
from hiersearch.serve.export import write_model_dir
from hiersearch.serve.model import ExportedModel
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.recipe import STOP_COMPLETED, TrialRecipe, build_classifier
from hiersearch.trial.session import LocalSession, TuneSession

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda", 0)
TEXTS = ["agriculture and fisheries policy", "customs union and trade", "energy " * 40]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gpu") / "corpus"
    write_corpus(synthesize(eurovoc_hierarchy(), SynthConfig(docs=80, seed=1, max_leaves=12)),
                 path)
    return path


@pytest.fixture(scope="module")
def encoded(corpus_dir: Path) -> str:
    corpus = load_corpus_dir(corpus_dir)
    return str(encode(corpus, tokenizer_path("minilm"), 64, corpus_dir / ".cache").path)


def _config(**changes: object) -> TrialConfig:
    base = TrialConfig(model="tiny:6x384", assignment="ONE-BY-ONE", epochs=2, batch_size=8,
                       lr=1e-3, max_length=64, util_docs=8, use_gpu=True, pooling="mean",
                       head_norm="batchnorm")
    return base.replace(**changes)


@pytest.mark.parametrize("precision", ["bf16", "fp16", "tf32", "fp32"])
def test_every_precision_trains_a_trial_on_the_gpu(
    encoded: str, tmp_path: Path, precision: str
) -> None:
    (tmp_path / "ckpt").mkdir()
    session = LocalSession(checkpoint_root=tmp_path / "ckpt", device=CUDA)
    recipe = TrialRecipe(_config(precision=precision), session)
    recipe.setup(encoded)
    assert recipe.optimizer.defaults["fused"] is True
    assert (recipe.scaler is not None) == (precision == "fp16")
    assert all(p.dtype == torch.float32 for p in recipe.core.parameters())  # master weights
    final = recipe.train()
    assert final[M.TRIAL_STOP_REASON] == STOP_COMPLETED
    assert math.isfinite(final[M.rp_macro_key("test")])
    report = session.reports[0]
    assert report[M.PEAK_RESERVED_MB] >= report[M.PEAK_MEMORY_MB] > 0
    assert M.UTIL_ENTROPY_MEAN in final  # the utilization pass ran in this precision
    saved = torch.load(session.checkpoints[0] / "train_state.pt", weights_only=False)
    assert saved["rng"]["cuda"].dtype == torch.uint8  # the GPU's dropout stream is kept


def test_logits_are_float32_under_bf16_autocast() -> None:
    counts = [4, 6, 8]
    model = LayerwiseClassifier(load_encoder("tiny:6x64"), named_variant("LAST-THREE", 6, 3,
                                counts), counts).to(CUDA)
    ids = torch.randint(1000, 2000, (4, 16), device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(ids, torch.ones_like(ids))
    assert logits.dtype == torch.float32


def test_a_one_worker_tune_trial_trains_on_its_gpu() -> None:
    assert TuneSession(use_gpu=True).device == CUDA


def test_predict_on_the_gpu_gives_the_cpus_scores_within_bf16_rounding(
    corpus_dir: Path, tmp_path: Path
) -> None:
    config = TrialConfig(corpus=str(corpus_dir), model="tiny:6x384", max_length=64,
                         assignment="ONE-BY-ONE", pooling="mean", precision="bf16")
    corpus = load_corpus_dir(corpus_dir)
    core = build_classifier(config, corpus.hierarchy.label_counts()).eval()
    with atomic_directory(tmp_path / "model") as staging:
        write_model_dir(staging, core, config, corpus.hierarchy, True, {}, "exp", "t1", "-")
    cpu = np.concatenate(ExportedModel.load(tmp_path / "model").scores(TEXTS), axis=1)
    gpu_model = ExportedModel.load(tmp_path / "model", device="cuda")
    assert gpu_model.precision.autocast_dtype == torch.bfloat16
    gpu = np.concatenate(gpu_model.scores(TEXTS), axis=1)
    assert gpu.dtype == np.float32
    np.testing.assert_allclose(gpu, cpu, atol=0.02)
    shutil.rmtree(tmp_path / "model")
