"""A trial whose heads start trained: linear probing, then fine-tuning (Kumar et al., ICLR 2022).

`init_heads_from` names a finished trial's final checkpoint; a two-stage search sets it for each
fine-tune to the head-only screen trial that put its assignment in the top (search/stages.py).
The heads (their weights and a batchnorm head's running statistics) are loaded over the new
ones once the model is built, before anything else draws from the random generators, so a
warm-started trial and a new one draw the same dropout masks and batches. The encoder starts
from the backbone as in every trial.

Heads fit when what their weights mean is the same in both trials: the assignment (which
layers each head reads), the head options that shape or feed a head (`HEAD_KEYS`: pooling,
head norm, bottleneck) and what produced the features (backbone, tokens per document, corpus
and its levels). Where one differs, or the tensors' shapes do (another label set), the trial
starts with new heads and says why (`WarmStart.note`, its reports' `trial/warm_start`): a
fine-tune whose search varies a head option the screen held fixed still runs.

The rates: trained heads move at `warm_head_lr` (null: the encoder's `lr`, one rate for the
whole model as in LP-FT) under the trial's one schedule, which warms up from zero over
`warmup_ratio` of the steps as always; new heads keep `head_lr` (training.head_rate). A fast
rate on trained heads is what let new heads at 3e-2 meet an encoder warming up and collapse a
first epoch (BENCHMARKS.md section 13).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hiersearch import metrics as M
from hiersearch.model.assignment import resolve_assignment
from hiersearch.model.classifier import LayerwiseClassifier
from hiersearch.model.encoder import encoder_depth
from hiersearch.trial import checkpoint
from hiersearch.trial.config import TrialConfig

# The config fields whose values trained heads need to equal this trial's (besides the
# assignment): what shapes a head and what feeds it.
HEAD_KEYS = ("pooling", "head_norm", "head_hidden", "model", "max_length", "corpus", "levels")
# The classifier's modules a warm start loads: the heads and their input normalizations.
HEAD_MODULES = ("heads", "norms")
# `trial/warm_start` of a trial whose heads were loaded.
LOADED = "yes"
# How the reasons name the trial that trained the heads.
THEIRS = "the trained heads' trial"


@dataclass(frozen=True)
class WarmStart:
    """What became of a trial's `init_heads_from`."""

    source: str  # the checkpoint asked for
    loaded: bool
    note: str = ""  # why the heads start new (loaded: empty)

    def report(self) -> dict[str, Any]:
        """The reports' `trial/warm_start`: "yes", or "no: <why>"."""
        return {M.TRIAL_WARM_START: LOADED if self.loaded else f"no: {self.note}"}


def start_heads(
    core: LayerwiseClassifier, config: TrialConfig, label_counts: list[int]
) -> WarmStart | None:
    """Load the heads of `config.init_heads_from` into `core` when they fit (None: no warm
    start asked). A checkpoint that cannot be read is a CheckpointError naming the file."""
    source = config.init_heads_from
    if source is None:
        return None
    with checkpoint.local_copy(source) as directory:
        theirs = checkpoint.read_config(directory)
        why = _differs(config, theirs, label_counts)
        if why is not None:
            return WarmStart(source, False, why)
        state = checkpoint.read_weights(directory)
    why = _load(core, state)
    return WarmStart(source, why is None, why or "")


def _differs(mine: TrialConfig, theirs: TrialConfig, label_counts: list[int]) -> str | None:
    """Why heads trained with `theirs` do not fit a trial of `mine`; None when they do."""
    for key in HEAD_KEYS:
        here, there = getattr(mine, key), getattr(theirs, key)
        if here != there:
            return f"{key} {_text(here)} here, {_text(there)} in {THEIRS}"
    depth = encoder_depth(mine.model)
    here, there = (resolve_assignment(c.assignment, depth, label_counts) for c in (mine, theirs))
    if here != there:
        return f"assignment {mine.assignment} here, {theirs.assignment} in {THEIRS}"
    return None


def _load(core: LayerwiseClassifier, state: dict[str, torch.Tensor]) -> str | None:
    """The heads' tensors of `state` into `core`; why not, when a shape differs (another
    label set): then nothing is loaded."""
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    for name in HEAD_MODULES:
        module = getattr(core, name)
        prefix = f"{name}."
        theirs = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        for key, tensor in module.state_dict().items():
            if key not in theirs or theirs[key].shape != tensor.shape:
                found = tuple(theirs[key].shape) if key in theirs else "none"
                return f"{prefix}{key} is {tuple(tensor.shape)} here, {found} in the checkpoint"
        loaded[name] = {key: theirs[key] for key in module.state_dict()}
    for name, theirs in loaded.items():
        getattr(core, name).load_state_dict(theirs)
    return None


def _text(value: Any) -> str:
    return "null" if value is None else str(value)
