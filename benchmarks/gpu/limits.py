"""The hardware limits of a rollout and a GRPO step: bytes over measured bandwidth, FLOPs over measured rate.

A decoding step of ``N`` rows must read every weight once (the LM head included; the embedding only
for the N fed tokens) and every key/value written so far; it computes ``2 N`` FLOPs per weight plus
the attention products. Its floor is the larger of bytes / bandwidth and FLOPs / matmul rate, each
*measured* on the machine (a device-to-device copy; a large square matmul in the model's dtype). A
step's training pass (log-probs with gradients) is FLOP-bound: 6 FLOPs per weight per token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ModelShape:
    """What the floors need of a Llama-family model."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    dtype_bytes: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> ModelShape:
        c = model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return cls(
            layers=c.num_hidden_layers,
            hidden=c.hidden_size,
            heads=c.num_attention_heads,
            kv_heads=c.num_key_value_heads,
            head_dim=head_dim,
            intermediate=c.intermediate_size,
            vocab=c.vocab_size,
            dtype_bytes=next(model.parameters()).element_size(),
        )

    @property
    def layer_weights(self) -> int:
        """Matmul weights of all decoder layers: q, k, v, o and the three MLP projections."""
        h, q, kv, i = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        return self.layers * (h * q + 2 * h * kv + q * h + 3 * h * i)

    @property
    def head_weights(self) -> int:
        return self.vocab * self.hidden

    def kv_bytes(self, rows: int, columns: float) -> float:
        """Keys and values of ``rows`` sequences of ``columns`` positions, every layer."""
        return 2.0 * self.layers * rows * self.kv_heads * columns * self.head_dim * self.dtype_bytes

    def attention_flops(self, rows: int, queries: int, keys_per_query: float) -> float:
        """QK^T and AV products: 4 * heads * head_dim FLOPs per (query, key) pair, every layer."""
        return 4.0 * self.layers * self.heads * self.head_dim * rows * queries * keys_per_query


@dataclass(frozen=True)
class Hardware:
    bandwidth_gb_s: float
    """Device-to-device copy: (bytes read + bytes written) / seconds, best of several."""
    matmul_tflops: float
    """A square matmul in the model's dtype, best of several."""
    matmul_size: int
    copy_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _best_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_hardware(device: torch.device, dtype: torch.dtype, tiny: bool) -> Hardware:
    """Copy bandwidth and matmul rate (1 GiB copies and 8192^3 products on a GPU; small ones on CPU)."""
    copy_bytes = 2**26 if tiny else 2**30
    src = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    copy_s = _best_seconds(lambda: dst.copy_(src), device, repeats=10)
    n = 512 if tiny else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    mm_s = _best_seconds(lambda: torch.mm(a, b), device, repeats=10)
    return Hardware(
        bandwidth_gb_s=2 * copy_bytes / copy_s / 1e9,
        matmul_tflops=2.0 * n**3 / mm_s / 1e12,
        matmul_size=n,
        copy_bytes=copy_bytes,
    )


def rollout_floor(
    shape: ModelShape, hw: Hardware, *, prompts: int, generations: int, prompt_length: int, new_tokens: int
) -> dict[str, float]:
    """Seconds a rollout cannot go below: the prefill (FLOP-bound) then each decoding step's
    max(bytes / bandwidth, FLOPs / rate). Also the byte- and FLOP-only totals."""
    rate, bandwidth = hw.matmul_tflops * 1e12, hw.bandwidth_gb_s * 1e9
    n = prompts * generations
    weights = shape.layer_weights + shape.head_weights
    prefill = (
        2.0 * (shape.layer_weights * prompts * prompt_length + shape.head_weights * prompts)
        + shape.attention_flops(prompts, prompt_length, prompt_length / 2)
    ) / rate
    byte_s = flop_s = floor = 0.0
    for t in range(1, new_tokens):  # the first token comes from the prefill
        columns = prompt_length + t
        step_bytes = weights * shape.dtype_bytes + shape.kv_bytes(n, columns)
        step_flops = 2.0 * n * weights + shape.attention_flops(n, 1, columns)
        byte_s += step_bytes / bandwidth
        flop_s += step_flops / rate
        floor += max(step_bytes / bandwidth, step_flops / rate)
    return {
        "floor_s": prefill + floor,
        "prefill_s": prefill,
        "decode_bytes_s": byte_s,
        "decode_flops_s": flop_s,
        "weights_gb_per_step": weights * shape.dtype_bytes / 1e9,
        "kv_gb_last_step": shape.kv_bytes(n, prompt_length + new_tokens - 1) / 1e9,
    }


def train_floor(
    shape: ModelShape, hw: Hardware, *, prompts: int, generations: int, prompt_length: int, new_tokens: int
) -> float:
    """Seconds of the log-prob pass with gradients (forward + backward = 6 FLOPs per weight per token):
    each distinct prompt once, the LM head on completion positions only."""
    n = prompts * generations
    rows = prompts * prompt_length + n * new_tokens
    flops = 6.0 * (shape.layer_weights * rows + shape.head_weights * n * new_tokens)
    flops += 3 * (
        shape.attention_flops(prompts, prompt_length, prompt_length / 2)
        + shape.attention_flops(n, new_tokens, prompt_length + new_tokens / 2)
    )
    return flops / (hw.matmul_tflops * 1e12)
