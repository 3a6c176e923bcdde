"""How a trial computes on a GPU: the one home of what `TrialConfig.precision` means.

- `bf16`: the encoder under bfloat16 autocast, TF32 matmuls for what stays float32;
- `fp16`: float16 autocast with dynamic loss scaling (`torch.amp.GradScaler`), for GPUs
  without bfloat16 (V100, T4);
- `tf32`: float32 tensors, matmuls in TF32 (Ampere and newer);
- `fp32`: float32 everywhere, TF32 off.

Weights stay float32 (autocast computes in half precision from float32 masters). The heads
and their logits always run in float32 (`LayerwiseClassifier.head_logits`): bfloat16 logits
tie among thousands of labels and change R-Precision. On the CPU every mode computes in
float32, as before precision existed: CPU autocast would change the CPU presets' numbers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from hiersearch.trial.config import PRECISIONS

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_TF32 = ("bf16", "tf32")


@dataclass(frozen=True)
class Precision:
    """A precision mode on one device; `active` is False on the CPU (float32 there)."""

    name: str
    device: torch.device
    active: bool

    @classmethod
    def of(cls, name: str, device: torch.device) -> Precision:
        if name not in PRECISIONS:
            raise ValueError(f"unknown precision {name!r} (known: {', '.join(PRECISIONS)})")
        return cls(name, device, active=device.type == "cuda")

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _AUTOCAST_DTYPES.get(self.name) if self.active else None

    def autocast(self) -> Any:
        """The context the encoder's forward runs in (a no-op without reduced precision)."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """Loss scaling for fp16 (its gradients underflow without it); None otherwise."""
        if self.active and self.name == "fp16":
            return torch.amp.GradScaler(self.device.type)
        return None

    def apply_matmul_settings(self) -> None:
        """TF32 on for bf16 and tf32, off for fp16 and fp32. These are process-wide switches:
        set at every trial's start, since Tune may run the next trial in the same process."""
        if self.active:  # "high": TF32 matmuls; "highest": IEEE float32
            torch.set_float32_matmul_precision("high" if self.name in _TF32 else "highest")
