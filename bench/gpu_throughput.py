"""GPU training throughput and MFU of FLAT and LAST-SIX: BERT-base (random init, or a model
directory with --model), 512 tokens, bf16 autocast, AdamW, the paper's 6 EuroVoc levels
(21 / 127 / 567 / 3861 / 2284 / 481 labels) on one CUDA device.

The two variants take turns in blocks of steps (several blocks, median samples/s); MFU =
model FLOPs per second / the device's peak dense bf16 FLOPs. Model FLOPs per training sample =
3 x forward (backward ~ 2 x forward), forward = layers x (24 s h^2 + 4 s^2 h) + 2 x head
weights (matmuls only; embeddings, norms and softmax left out, as is usual for MFU). Peak
memory per variant: torch.cuda.max_memory_allocated during 2 steps above what is resident
before them (both models' weights and AdamW state), i.e. activations and gradients.

On a machine without CUDA it prints why and exits 0: nothing is measured.

    python bench/gpu_throughput.py [--quick] [--batch 16] [--model DIR] [--peak-tflops X]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, median, setup_env  # noqa: E402

EUROVOC_LEVELS = (21, 127, 567, 3861, 2284, 481)
VARIANTS = ("FLAT", "LAST-SIX")
# dense bf16 peak (no sparsity), FLOP/s, by a substring of the device name
PEAK_BF16 = {
    "H200": 989.4e12,
    "H100 PCIe": 756.0e12,
    "H100": 989.4e12,  # SXM / HBM3
    "A100": 312.0e12,
    "L40S": 362.05e12,
    "A10G": 70.0e12,
    "L4": 121.0e12,
}


def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    for key, value in PEAK_BF16.items():  # "H100 PCIe" is tried before "H100"
        if key in device_name:
            return value
    return None


def train_flops_per_sample(
    layers: int, hidden: int, seq: int, head_weights: int, used_layers: int | None = None
) -> float:
    """Matmul FLOPs of one training sample: 3 x (encoder layers run + heads) forward."""
    run = layers if used_layers is None else used_layers
    forward = run * (24 * seq * hidden**2 + 4 * seq**2 * hidden) + 2 * head_weights
    return 3.0 * forward


def build(variant: str, model: str | None, device: Any) -> Any:
    import torch
    from transformers import BertConfig, BertModel

    from hiersearch.model.assignment import named_variant
    from hiersearch.model.classifier import LayerwiseClassifier
    from hiersearch.model.encoder import load_encoder

    if model:
        encoder = load_encoder(model)
    else:
        torch.manual_seed(0)
        encoder = BertModel(BertConfig(), add_pooling_layer=False)  # BERT-base shape
        encoder.set_attn_implementation("sdpa")
    layers = int(encoder.config.num_hidden_layers)
    assignment = named_variant(variant, layers, len(EUROVOC_LEVELS), EUROVOC_LEVELS)
    return LayerwiseClassifier(encoder, assignment, EUROVOC_LEVELS, dropout=0.1).to(device)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (args.batch, args.seq), generator=generator).to(device)
    mask = torch.ones_like(ids)
    labels = (torch.rand(args.batch, sum(EUROVOC_LEVELS), generator=generator) < 0.01).float()
    labels = labels.to(device)
    models = {v: build(v, args.model, device).train() for v in VARIANTS}
    optimizers = {
        v: torch.optim.AdamW(m.parameters(), lr=2e-5, fused=True) for v, m in models.items()
    }

    def steps(variant: str, count: int) -> float:
        model, optimizer = models[variant], optimizers[variant]
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(count):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model.loss(model(ids, mask), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    peaks: dict[str, int] = {}
    for variant in VARIANTS:
        steps(variant, args.warmup)
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()  # both models' weights and AdamW state
        steps(variant, 2)
        peaks[variant] = torch.cuda.max_memory_allocated() - resident
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for block in range(args.blocks):
        order = VARIANTS if block % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            rates[variant].append(args.batch * args.steps / steps(variant, args.steps))
    name = torch.cuda.get_device_name(0)
    peak = peak_flops(name, args.peak_tflops)
    out: dict[str, Any] = {"device": name, "peak_bf16_flops": peak, "variants": {}}
    for variant, model in models.items():
        config = model.encoder.config
        heads = sum(h.weight.numel() for h in model.heads)
        flops = train_flops_per_sample(
            int(config.num_hidden_layers), int(config.hidden_size), args.seq, heads,
            used_layers=len(model.encoder.encoder.layer),
        )
        rate = median(rates[variant])
        out["variants"][variant] = {
            "samples_per_s": rate,
            "samples_per_s_all_blocks": rates[variant],
            "train_flops_per_sample": flops,
            "mfu": rate * flops / peak if peak else None,
            "step_peak_above_resident_gib": peaks[variant] / 2**30,
        }
    flat, last = (out["variants"][v] for v in VARIANTS)
    out["last_six_over_flat_throughput"] = last["samples_per_s"] / flat["samples_per_s"]
    out["last_six_over_flat_step_peak_memory"] = (
        last["step_peak_above_resident_gib"] / flat["step_peak_above_resident_gib"]
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="seq 128, fewer steps")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--model", default=None, help="a 12-layer BERT-like model dir")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak, if its name is not known here")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    args.seq = args.seq or (128 if args.quick else 512)
    args.steps = args.steps or (5 if args.quick else 20)
    args.blocks = args.blocks or (2 if args.quick else 6)
    setup_env()
    import torch

    if not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device here (torch "
              f"{torch.__version__}): nothing measured. Run it on a GPU machine.", flush=True)
        emit("gpu_throughput", {"machine": machine(), "skipped": "no CUDA device"}, args.json)
        return
    out = {"machine": machine(), "quick": args.quick, "batch": args.batch, "seq": args.seq,
           "bf16": True, **measure(args)}
    emit("gpu_throughput", out, args.json)


if __name__ == "__main__":
    main()
