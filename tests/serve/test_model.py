"""An exported model loaded for prediction: a fresh process without Ray gives the scores of the
model it was exported from, and early exit by level gives the full forward's scores for those
levels while running fewer layers.

The models here are untrained (random heads, random batchnorm statistics): equality does not
need training, and test_export.py covers a trained trial.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hiersearch.data.corpus import load_corpus_dir, write_corpus
from hiersearch.data.synth import SynthConfig, synthesize
from hiersearch.data.vocabularies import eurovoc_hierarchy
from hiersearch.errors import InputError
from hiersearch.files import atomic_directory
from hiersearch.model.classifier import LayerwiseClassifier
from hiersearch.serve.export import write_model_dir
from hiersearch.serve.model import ExportedModel
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.recipe import build_classifier

TEXTS = ["agriculture and fisheries policy", "customs union and trade", "a", "energy " * 80]


def _export(root: Path, name: str, **changes: object) -> tuple[Path, LayerwiseClassifier]:
    """Export an untrained model of the corpus under `root`; then move it away from the corpus
    and delete the corpus: the directory must stand on its own."""
    corpus_dir = root / "corpus"
    if not corpus_dir.exists():
        write_corpus(synthesize(eurovoc_hierarchy(), SynthConfig(docs=30, seed=2, max_leaves=9)),
                     corpus_dir)
    options = {"model": "tiny:12x32", **changes}
    config = TrialConfig(corpus=str(corpus_dir), max_length=32, seed=3,
                         **options)  # type: ignore[arg-type]
    corpus = load_corpus_dir(corpus_dir)
    core = build_classifier(config, corpus.hierarchy.label_counts()).eval()
    generator = torch.Generator().manual_seed(5)
    for norm in core.norms:  # statistics that are not the defaults: they must travel too
        if isinstance(norm, torch.nn.BatchNorm1d):
            norm.running_mean.copy_(torch.randn(norm.running_mean.shape, generator=generator))
            norm.running_var.copy_(torch.rand(norm.running_var.shape, generator=generator) + 0.5)
    with atomic_directory(root / "staging" / name) as tmp:
        write_model_dir(tmp, core, config, corpus.hierarchy, corpus.synthetic, {}, "exp", "t1",
                        "nowhere")
    target = root / "models" / name
    target.parent.mkdir(exist_ok=True)
    shutil.move(str(root / "staging" / name), target)
    return target, core


@pytest.fixture(scope="module")
def models(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, LayerwiseClassifier]]:
    root = tmp_path_factory.mktemp("serve-model")
    out = {
        "layerwise": _export(root, "layerwise", assignment="ONE-BY-ONE", pooling="mean",
                             head_norm="batchnorm"),
        "flat": _export(root, "flat", assignment="FLAT", pooling="cls_mean", head_hidden=8),
    }
    shutil.rmtree(root / "corpus")
    return out


def _expected_scores(core: LayerwiseClassifier, model: ExportedModel) -> np.ndarray:
    """Sigmoid of the original classifier's logits, level by level (as `scores` takes it)."""
    batch = model.tokenize(TEXTS)
    with torch.inference_mode():
        logits = core(batch["input_ids"], batch["attention_mask"])
    levels = [torch.sigmoid(logits[:, s].contiguous()).numpy() for s in core.level_slices]
    return np.concatenate(levels, axis=1)


def test_a_fresh_process_without_ray_gives_the_original_models_scores(
    models: dict, tmp_path: Path
) -> None:
    directory, core = models["layerwise"]
    expected = _expected_scores(core, ExportedModel.load(directory))
    script = (
        "import json, sys, numpy as np, torch\n"
        f"torch.set_num_threads({torch.get_num_threads()})\n"
        "from hiersearch.serve.model import ExportedModel\n"
        f"model = ExportedModel.load({str(directory)!r})\n"
        f"scores = model.scores({TEXTS!r}, batch_size={len(TEXTS)})\n"
        f"np.save({str(tmp_path / 'scores.npy')!r}, np.concatenate(scores, axis=1))\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
        "print(json.dumps([s.dtype.name for s in scores]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["float32"] * 3
    got = np.load(tmp_path / "scores.npy")
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_the_loaded_model_keeps_labels_config_and_depth(models: dict) -> None:
    directory, core = models["layerwise"]
    model = ExportedModel.load(directory)
    assert model.num_levels == 3 and model.max_length == 32
    assert [len(x) for x in model.label_index] == core.label_counts
    assert [len(x) for x in model.descriptions] == core.label_counts
    assert model.config.assignment == "ONE-BY-ONE" and model.num_layers == 12
    assert [model.layers_needed([n]) for n in (1, 2, 3)] == [4, 8, 12]
    assert model.layers_needed([1, 2]) == 8
    assert ExportedModel.load(models["flat"][0]).layers_needed([1]) == 12


def _layer_calls(model: ExportedModel) -> tuple[list[int], list]:
    calls: list[int] = []
    handles = [
        layer.register_forward_hook(lambda *_a, i=i: calls.append(i))
        for i, layer in enumerate(model.core.encoder.encoder.layer, 1)
    ]
    return calls, handles


@pytest.mark.parametrize("name", ["layerwise", "flat"])
def test_early_exit_gives_the_full_forwards_scores_for_its_levels(
    models: dict, name: str
) -> None:
    model = ExportedModel.load(models[name][0])
    full = model.scores(TEXTS, batch_size=2)
    calls, handles = _layer_calls(model)
    try:
        part = model.scores(TEXTS, levels=[1, 2], batch_size=2)
    finally:
        for handle in handles:
            handle.remove()
    assert len(part) == 2
    for level in (0, 1):
        np.testing.assert_array_equal(part[level], full[level])
    layers_run = sorted(set(calls))
    if name == "layerwise":  # levels 1-2 read layers 4 and 8: layers 9-12 never run
        assert layers_run == list(range(1, 9))
    else:  # FLAT reads the top layer only
        assert layers_run == list(range(1, 13))
    assert len(model.core.encoder.encoder.layer) == 12  # the full stack is back


def test_scores_of_a_single_level_and_no_documents(models: dict) -> None:
    model = ExportedModel.load(models["layerwise"][0])
    (level3,) = model.scores(TEXTS, levels=[3])
    assert level3.shape == (len(TEXTS), len(model.label_index[2]))
    assert level3.dtype == np.float32 and ((level3 > 0) & (level3 < 1)).all()
    empty = model.scores([], levels=[1, 2])
    assert [e.shape for e in empty] == [(0, len(model.label_index[0])),
                                        (0, len(model.label_index[1]))]
    with pytest.raises(InputError, match="--levels"):
        model.scores(TEXTS, levels=[4])


def test_an_export_without_thresholds_loads_and_its_card_asks_for_top_k(models: dict) -> None:
    path, _ = models["layerwise"]  # exported with no final metrics: as from an older trial
    model = ExportedModel.load(path)
    assert model.thresholds is None
    assert json.loads((path / "model.json").read_text())["thresholds"] is None
    assert "--top-k 5" in (path / "README.md").read_text()
    assert model.hierarchy().label_index() == model.label_index  # the parents predict needs


def test_bad_thresholds_in_model_json_are_named(models: dict, tmp_path: Path) -> None:
    path, _ = models["flat"]
    copy = tmp_path / "m"
    shutil.copytree(path, copy)
    info = json.loads((copy / "model.json").read_text())
    (copy / "model.json").write_text(json.dumps({**info, "thresholds": [0.5]}))
    with pytest.raises(InputError, match=r"model\.json: thresholds must be 3 numbers"):
        ExportedModel.load(copy)


def test_a_damaged_model_directory_is_named(models: dict, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(models["layerwise"][0], broken)
    heads = torch.load(broken / "heads.pt")
    heads.pop("heads.0.weight")
    torch.save(heads, broken / "heads.pt")
    with pytest.raises(InputError, match="heads.pt"):
        ExportedModel.load(broken)
    (broken / "model.json").write_text("{not json")
    with pytest.raises(InputError, match="model.json"):
        ExportedModel.load(broken)


def test_predict_on_a_gpu_runs_the_encoder_in_the_trials_precision(
    models: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU the encoder runs under the autocast it was trained with, its heads in float32;
    on the CPU in float32. Here CPU autocast stands in for the GPU's: the scores stay within
    bf16's rounding of the float32 ones and come back float32."""
    from hiersearch.trial.precision import Precision

    directory, _ = models["layerwise"]
    model = ExportedModel.load(directory)
    assert model.config.precision == "bf16" and model.precision.autocast_dtype is None
    on_gpu = ExportedModel(**{**model.__dict__, "device": torch.device("cuda", 0)})
    assert on_gpu.precision.autocast_dtype == torch.bfloat16
    exact = np.concatenate(model.scores(TEXTS), axis=1)
    seen: list[bool] = []
    model.core.encoder.register_forward_hook(
        lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    monkeypatch.setattr(Precision, "of", classmethod(lambda cls, name, device: cls(
        name, device, active=True)))
    rounded = model.scores(TEXTS)
    assert seen == [True] and {s.dtype for s in rounded} == {np.dtype("float32")}
    np.testing.assert_allclose(np.concatenate(rounded, axis=1), exact, atol=0.05)
    assert not np.array_equal(np.concatenate(rounded, axis=1), exact)  # bf16 did run


def test_scores_come_back_in_input_order_from_batches_sorted_by_length(
    models: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = ExportedModel.load(models["layerwise"][0])
    texts = ["a much longer document about the budget of the union and fisheries", "tax",
             "customs union", "agricultural policy of the member states in the union", "law"]
    batched: list[list[str]] = []
    tokenize = model.tokenize

    def spy(batch: list[str]) -> dict[str, torch.Tensor]:
        batched.append(list(batch))
        return tokenize(batch)

    monkeypatch.setattr(model, "tokenize", spy)
    together = np.concatenate(model.scores(texts, batch_size=2), axis=1)
    alone = np.concatenate([np.concatenate(model.scores([t]), axis=1) for t in texts])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)
    lengths = [len(model.tokenizer(t)["input_ids"]) for t in texts]
    first = [lengths[texts.index(t)] for batch in batched[:3] for t in batch]
    assert first == sorted(lengths)  # the two shortest first, the longest last


def test_an_mpnet_model_exports_loads_scores_and_predicts_as_it_was_trained(
    tiny_mpnet: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MPNet (eager attention, its own tokenizer) through export, load, early exit and the
    `predict` command."""
    from hiersearch.cli import main

    directory, core = _export(tmp_path, "mpnet", model=tiny_mpnet, assignment="L1:2|L2:4|L3:6",
                              pooling="cls_mean", head_norm="batchnorm")
    shutil.rmtree(tmp_path / "corpus")
    model = ExportedModel.load(directory)
    assert type(model.core.encoder).__name__ == "MPNetModel"
    assert model.core.encoder.config._attn_implementation == "eager"
    # <s> a </s> in MPNet's ids: BERT's 1037 for "a" after MPNet's four leading tokens
    assert model.tokenizer("a")["input_ids"] == [0, 1037 + 4, 2]
    full = model.scores(TEXTS, batch_size=2)
    np.testing.assert_allclose(np.concatenate(full, axis=1), _expected_scores(core, model),
                               rtol=0, atol=1e-6)
    calls, handles = _layer_calls(model)
    (level1,) = model.scores(TEXTS, levels=[1], batch_size=2)
    for handle in handles:
        handle.remove()
    assert sorted(set(calls)) == [1, 2]  # level 1's head reads layer 2: layers 3-6 never run
    np.testing.assert_array_equal(level1, full[0])
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                            for i, t in enumerate(TEXTS)))
    capsys.readouterr()
    assert main(["predict", str(directory), "--input", str(docs), "--top-k", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["id"] for row in rows] == ["0", "1", "2", "3"]
    best = rows[0]["levels"][0]["labels"][0]
    index = model.label_index[0].index(best["id"])
    assert best["score"] == pytest.approx(float(full[0][0, index]), abs=1e-6)
