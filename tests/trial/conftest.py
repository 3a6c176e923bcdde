"""Fixtures shared by the trial tests."""

from __future__ import annotations

import pytest

from hiersearch.data.encode import encode
from hiersearch.data.synth import SynthConfig, synthesize
from hiersearch.data.vocabularies import eurovoc_hierarchy
from hiersearch.model.encoder import tokenizer_path


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> str:
    """60 synthetic EuroVoc documents encoded at 32 tokens (MiniLM's tokenizer), one copy per
    module (a trial's feature cache lands beside it). A module that needs another corpus
    defines its own `encoded`."""
    corpus = synthesize(eurovoc_hierarchy(), SynthConfig(docs=60, seed=1, max_leaves=12))
    cache = tmp_path_factory.mktemp("cache")
    return str(encode(corpus, tokenizer_path("minilm"), 32, cache).path)
