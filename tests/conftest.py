"""Test environment: offline, loopback-only Ray without token auth, one shared Ray session
and one shared smoke experiment.

Everything here is set before any test imports Ray or transformers: nothing is fetched from a
hub, Ray binds 127.0.0.1, and `~/.ray` is never read or written (HOME points at a temp dir).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_HOME = tempfile.mkdtemp(prefix="hiersearch-test-home-")
os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AIR_NEW_OUTPUT": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "HOME": _HOME,
        "HIERSEARCH_DATA": str(Path(_HOME) / "data"),
        # Worker start-up (imports of torch and transformers) is slow on a loaded 2-core box.
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300",
    }
)
os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for every Ray-backed test (start-up costs seconds), started the way
    `hiersearch search` starts one, so that trials stopped by Tune free their resources."""
    import ray

    from hiersearch.search.cluster import start_local

    start_local(num_cpus=2, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def smoke_experiment(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The smoke preset's five variants, each a Ray Train run of two DDP workers: one run
    (about a minute and a half on 2 cores) read by every test of a real DDP experiment
    (search/test_run.py, serve/test_export.py). Readers must not write into it."""
    from hiersearch.search import load_space, run_search

    storage = tmp_path_factory.mktemp("smoke-storage")
    return run_search(load_space("smoke"), storage=str(storage), name="smoke",
                      fixed_only=True, verbose=0)


@pytest.fixture(scope="session")
def tiny_mpnet(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-init MPNet model directory (6 layers, hidden 32) with MPNet's tokenizer
    layout: the local-directory form of what `mpnet` loads (tests/backbones.py)."""
    from backbones import write_tiny_mpnet

    return str(write_tiny_mpnet(tmp_path_factory.mktemp("tiny-mpnet") / "model", layers=6))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run where torch sees a CUDA device, and are skipped elsewhere."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"no CUDA device (torch {torch.__version__})")
    for item in gpu_tests:
        item.add_marker(skip)


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """Replace the Ray start of `run_search` by a tripwire: it records the attempt and stops
    the command there (an AssertionError is not an InputError: the test fails). The bad-input
    tests (test_*_input.py) take it: they pass only if the input is refused before Ray."""
    import hiersearch.search.run

    attempts: list[str | None] = []

    def tripwire(address: str | None) -> None:
        attempts.append(address)
        raise AssertionError("Ray would start")

    monkeypatch.setattr(hiersearch.search.run, "connect", tripwire)
    return attempts
