"""SMART regularization in a training step (Jiang et al., ACL 2020; BERTer uses it too).

Two terms added to a micro-batch's loss, each off at weight 0; with both off the recipe makes
no `Smart` at all, so a step is exactly the step without SMART (no extra forward, no random
draw).

- Smoothness-inducing adversarial term (`smart_weight`): the inputs of the layers that train
  are perturbed and the outputs there must stay close to the clean ones. Those inputs are the
  embeddings' output when the whole encoder trains, and the token states after the top frozen
  layer with `freeze_layers: k` (read from the feature cache, or computed at each step without
  it). The perturbation starts as a draw of N(0, `NOISE_STD`^2) and takes `smart_steps` steps
  of projected gradient ascent on the divergence: each step moves every token vector by
  `smart_step_size` in its largest coordinate along the gradient (normalized by its largest
  entry, as the SMART reference code's "inf" norm does), then clips every coordinate into
  [-smart_eps, smart_eps]. The term is the divergence between the outputs at the perturbed
  inputs and the clean outputs, its gradient flowing into both. The perturbed forwards leave a
  batchnorm head's running statistics alone (the clean forward updates them, once a step). A
  head that reads a frozen layer's pooled vector directly (a layer-wise head below the trained
  layers) sees it unperturbed: a fixed feature, not the input of a trained layer.
- Bregman proximal point term (`smart_bregman_weight`): the divergence between the outputs and
  those of the anchor, an exponential moving average of the trained weights (`smart_momentum`:
  the paper's momentum Bregman proximal point, its beta 0.99), run without dropout and without
  gradient; the anchor is updated after every optimizer step (torch's EMA update of
  `swa_utils`) and kept in the trial's checkpoints.

The divergence: each output is a sigmoid, one Bernoulli per label, so the symmetric KL of two
outputs with logits a and b is, per label, KL(p||q) + KL(q||p) = (p - q)(a - b), p = sigmoid(a),
q = sigmoid(b): exact, with no log of a probability near 0 (the reference code's softmax KL
suits one label per document, not a label set). Per label values are averaged per level and
the levels weighted as the loss weighs them (`LayerwiseClassifier.level_mean`), then averaged
over the batch, so a term's weight reads against the loss.

A head-only trial trains no encoder layer: SMART there is refused (`TrialConfig.check_smart`).
Under bf16 or fp16 autocast a perturbation much below the precision of the states (bf16 keeps
about 3 significant digits) is rounded away at the first matrix product (docs/fine-tuning.md
has the sizes).

The extra forwards go through the model itself, not its DDP wrapper: the ascent steps ask for
gradients of the perturbation only (no parameter's gradient, so no all-reduce), and the final
term's parameter gradients join the loss's one backward, each parameter's once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.func import functional_call
from torch.optim.swa_utils import get_ema_multi_avg_fn

from hiersearch.model.classifier import LayerwiseClassifier
from hiersearch.trial.config import TrialConfig

# The standard deviation of the perturbation's random start (the SMART paper's sigma).
NOISE_STD = 1e-5


def symmetric_kl(core: LayerwiseClassifier, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The batch's mean symmetric KL between the Bernoulli outputs of logits `a` and `b`,
    levels weighted as in the loss (see the module docstring)."""
    a, b = a.float(), b.float()
    per_label = (torch.sigmoid(a) - torch.sigmoid(b)) * (a - b)
    return core.level_mean(per_label).mean()


class Smart:
    """The SMART terms of one trial: `penalty` after each micro-batch's forward, `step`
    after each optimizer step; `anchor_state` / `restore` go with the checkpoints."""

    def __init__(self, core: LayerwiseClassifier, config: TrialConfig) -> None:
        self.config = config
        # the Bregman term's anchor: the trained weights and the heads' running statistics
        self.anchor: dict[str, torch.Tensor] | None = None
        if config.smart_bregman_weight > 0:
            self.anchor = {k: v.detach().clone() for k, v in _trained(core).items()}
        self._ema = get_ema_multi_avg_fn(config.smart_momentum)
        # the anchor's entries that average; the others (running statistics) are copied
        self._averaged = [k for k, p in core.named_parameters() if p.requires_grad]

    @classmethod
    def of(cls, core: LayerwiseClassifier, config: TrialConfig) -> Smart | None:
        """The trial's SMART terms; None when it has none. A head-only model is refused."""
        if not config.smart_terms():
            return None
        config.check_smart(core.head_only)
        return cls(core, config)

    def penalty(
        self, core: LayerwiseClassifier, inputs: dict[str, Any], logits: torch.Tensor
    ) -> torch.Tensor:
        """The weighted SMART terms of a micro-batch whose clean forward gave `logits`."""
        config = self.config
        total = torch.zeros((), device=logits.device)
        if config.smart_weight > 0:
            total = total + config.smart_weight * self.adversarial(core, inputs, logits)
        if self.anchor is not None:
            anchored = symmetric_kl(core, logits, self.anchored_logits(core, inputs))
            total = total + config.smart_bregman_weight * anchored
        return total

    def adversarial(
        self, core: LayerwiseClassifier, inputs: dict[str, Any], logits: torch.Tensor
    ) -> torch.Tensor:
        """The smoothness-inducing term: the divergence at the perturbation that the ascent
        steps find."""
        config = self.config
        forward, shape = _perturbed_forward(core, inputs)
        clean = logits.detach()
        noise = torch.randn(shape, device=logits.device) * NOISE_STD
        with _statistics_kept(core):
            for _ in range(config.smart_steps):
                noise.requires_grad_(True)
                (grad,) = torch.autograd.grad(symmetric_kl(core, forward(noise), clean), noise)
                with torch.no_grad():
                    scale = grad.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
                    noise = noise + config.smart_step_size * grad / scale
                    noise = noise.clamp(-config.smart_eps, config.smart_eps)
            return symmetric_kl(core, forward(noise.detach()), logits)

    @torch.no_grad()
    def anchored_logits(
        self, core: LayerwiseClassifier, inputs: dict[str, Any]
    ) -> torch.Tensor:
        """The anchor's logits: the model with the anchor's weights, in eval mode (no
        dropout; a batchnorm head by the anchor's running statistics)."""
        assert self.anchor is not None
        with _eval_mode(core):
            return functional_call(core, self.anchor, args=(), kwargs=inputs, strict=False)

    @torch.no_grad()
    def step(self, core: LayerwiseClassifier) -> None:
        """After an optimizer step: the anchor moves toward the weights (EMA); running
        statistics are copied (they are no weights of a step)."""
        if self.anchor is None:
            return
        current = _trained(core)
        averaged = self._averaged
        self._ema([self.anchor[k] for k in averaged], [current[k] for k in averaged], None)
        for key in current.keys() - set(averaged):
            self.anchor[key].copy_(current[key])

    def anchor_state(self) -> dict[str, torch.Tensor] | None:
        """What a checkpoint keeps of the terms: the anchor, on the CPU (None: no anchor)."""
        if self.anchor is None:
            return None
        return {k: v.detach().cpu().clone() for k, v in self.anchor.items()}

    def restore(self, saved: dict[str, torch.Tensor] | None, core: LayerwiseClassifier) -> None:
        """The anchor of a restored checkpoint; one without (written before the term was on,
        a PBT donor's without it) restarts it at the restored weights."""
        if self.anchor is None:
            return
        source = saved if saved is not None else _trained(core)
        for key, value in self.anchor.items():
            value.copy_(source[key])


def _trained(core: LayerwiseClassifier) -> dict[str, torch.Tensor]:
    """The model's state that training changes, by state-dict name: its trained parameters
    and the heads' running statistics (a batchnorm head's; the encoder's buffers are
    constants)."""
    params = {k: p.detach() for k, p in core.named_parameters() if p.requires_grad}
    return {**params, **{f"norms.{k}": b for k, b in core.norms.named_buffers()}}


def _perturbed_forward(
    core: LayerwiseClassifier, inputs: dict[str, Any]
) -> tuple[Callable[[torch.Tensor], torch.Tensor], tuple[int, ...]]:
    """(logits at the trained layers' inputs plus a perturbation, the perturbation's shape)."""
    hidden = inputs.get("hidden")
    if hidden is not None:  # the cached states after the top frozen layer

        def cached(noise: torch.Tensor) -> torch.Tensor:
            return core(**{**inputs, "hidden": hidden.float() + noise})

        return cached, tuple(hidden.shape)
    module = (
        core.encoder.embeddings
        if core.frozen_layers == 0
        else core.encoder.encoder.layer[core.frozen_layers - 1]
    )
    ids = inputs["input_ids"]
    shape = (*ids.shape, int(core.encoder.config.hidden_size))

    def hooked(noise: torch.Tensor) -> torch.Tensor:
        handle = module.register_forward_hook(_adding(noise))
        try:
            return core(**inputs)
        finally:
            handle.remove()

    return hooked, shape


def _adding(noise: torch.Tensor) -> Callable[..., Any]:
    """A forward hook that adds `noise` to its module's output (a tensor, or a layer's tuple
    whose first element is the states)."""

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + noise, *output[1:])
        return output + noise

    return hook


@contextlib.contextmanager
def _statistics_kept(core: LayerwiseClassifier) -> Iterator[None]:
    """The perturbed forwards standardize a batchnorm head's input by their batch, as the
    clean forward does, but leave its running statistics as the clean forward left them:
    updated once a step, as without SMART."""
    norms = [m for m in core.norms if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    kept = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for module in norms:
        module.momentum = 0.0  # running = 1 * running + 0 * batch
    try:
        yield
    finally:
        for module, (momentum, tracked) in zip(norms, kept, strict=True):
            module.momentum = momentum
            module.num_batches_tracked.copy_(tracked)


@contextlib.contextmanager
def _eval_mode(core: LayerwiseClassifier) -> Iterator[None]:
    was = core.training
    core.eval()
    try:
        yield
    finally:
        core.train(was)
