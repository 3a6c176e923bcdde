"""Models a trial could not run (missing, offline-unknown, broken config, too shallow for the
levels): one error line naming the model, exit 2, no traceback, refused before Ray starts (the
`no_ray` tripwire), without network and without writing a corpus or cache.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
from refusals import _corpus, _refused, _search, _space


def _model_dir(tmp_path: Path, config: str) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(config)
    return model


def test_model_too_shallow_for_the_levels_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    # LAST-TWO needs a layer per level; a 1-layer model cannot host it
    line = _refused(
        ["search", "--space", str(_space(tmp_path)), "--data", str(_corpus(tmp_path / "c")),
         "--model", "tiny:1x16", "--storage", str(tmp_path / "runs")],
        capsys,
    )
    assert "LAST-TWO" in line and "1 layers < 2 levels" in line
    assert no_ray == []


def test_searched_model_of_another_depth_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    space = _space(
        tmp_path, search={"model": {"type": "categorical", "choices": ["tiny:4x16", "tiny:6x16"]}}
    )
    line = _refused(
        ["search", "--space", str(space), "--data", str(_corpus(tmp_path / "c")),
         "--storage", str(tmp_path / "runs")],
        capsys,
    )
    assert f"{space}: search: model" in line and "'tiny:6x16' has 6 layers" in line
    assert no_ray == []


@pytest.mark.parametrize("model", ["tiny:0x16", "tiny:4x0"])
def test_a_tiny_model_bert_would_refuse_in_a_trial_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None], model: str
) -> None:
    line = _refused([*_search(tmp_path), "--model", model, "--storage", str(tmp_path / "r")],
                    capsys)
    assert f"model '{model}': expected tiny:<layers>x<hidden>" in line and no_ray == []


def test_missing_model_directory_is_named_and_nothing_is_fetched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    line = _refused(
        ["search", "--space", str(_space(tmp_path)), "--data", str(_corpus(tmp_path / "c")),
         "--model", str(tmp_path / "no-model"), "--storage", str(tmp_path / "runs")],
        capsys,
    )
    assert f"model '{tmp_path / 'no-model'}'" in line and "not found" in line
    assert no_ray == []


def test_unknown_hub_model_offline_is_an_input_error_without_network(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_ray: list[str | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: the tests' offline contract
    dialed: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        dialed.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    line = _refused(
        ["search", "--space", str(_space(tmp_path)), "--data", str(_corpus(tmp_path / "c")),
         "--model", "no-such-org-model", "--storage", str(tmp_path / "runs")],
        capsys,
    )
    assert "model 'no-such-org-model'" in line
    assert dialed == [] and no_ray == []


@pytest.mark.parametrize(
    ("config", "said"),
    [
        ("{}", "model_type"),
        ('{"model_type": "bert", "num_hidden_layers": "six"}', "num_hidden_layers"),
        ('{"model_type": "bert", "num_hidden_layers": 0}', "num_hidden_layers must be"),
        ('{"model_type": "no-such-architecture"}', "no-such-architecture"),
        ('{"model_type": ', "not a valid JSON"),
    ],
)
def test_a_broken_model_config_is_an_input_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_ray: list[str | None],
    config: str,
    said: str,
) -> None:
    model = _model_dir(tmp_path, config)
    line = _refused([*_search(tmp_path), "--model", str(model), "--storage",
                     str(tmp_path / "r")], capsys)
    assert f"model '{model}'" in line and said in line
    assert no_ray == [] and not (tmp_path / "r").exists()


@pytest.mark.parametrize("model", ["missing", "tiny:1x16", "no-tokenizer"])
def test_a_refused_model_leaves_no_synthetic_corpus_or_cache_behind(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_ray: list[str | None],
    monkeypatch: pytest.MonkeyPatch,
    model: str,
) -> None:
    monkeypatch.delenv("HIERSEARCH_DATA")  # synthetic corpora go under the storage
    spec = {"missing": str(tmp_path / "absent"), "tiny:1x16": "tiny:1x16"}.get(model)
    if spec is None:  # a model directory with a config but no tokenizer files
        spec = str(_model_dir(tmp_path, '{"model_type": "bert", "num_hidden_layers": 4}'))
    space = _space(tmp_path, data={"docs": 12, "max_leaves": 5})
    storage = tmp_path / "runs"
    _refused(["search", "--space", str(space), "--model", spec, "--storage", str(storage)],
             capsys)
    assert no_ray == [] and not storage.exists()


@pytest.fixture()
def no_mpnet_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `mpnet` extra as on a machine that did not install it (whatever this one has)."""
    from dataclasses import replace

    from hiersearch.model import packaged

    absent = replace(packaged.MPNET, distributions=("hiersearch-test-absent-part-001",))
    monkeypatch.setitem(packaged.SPLIT_ZIP_BACKBONES, "mpnet", absent)


@pytest.mark.parametrize("where", ["--model", "trial", "search"])
def test_mpnet_without_its_extra_is_refused_before_ray_naming_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None],
    no_mpnet_extra: None, where: str,
) -> None:
    if where == "--model":
        argv = [*_search(tmp_path), "--model", "mpnet"]
    elif where == "trial":
        argv = _search(tmp_path, space=_space(tmp_path, trial={"model": "mpnet"}))
    else:
        searched = {"model": {"type": "categorical", "choices": ["tiny:4x16", "mpnet"]}}
        argv = _search(tmp_path, space=_space(tmp_path, search=searched))
    line = _refused([*argv, "--storage", str(tmp_path / "runs")], capsys)
    assert "model 'mpnet': not installed" in line
    assert "install the extra: pip install 'hiersearch[mpnet]'" in line
    assert no_ray == [] and not (tmp_path / "runs").exists()
