"""The floor of a GRPO optimizer step: its matrix multiplies, timed alone at the shapes the step uses.

For a Qwen2-shaped model the step's necessary matmuls are: sampling (a prefill of the P distinct
prompts, then one [N, H] x [H, *] product per weight per generated token, LM head included), the
reference log-prob pass (no grad; skipped when beta = 0), the policy log-prob pass and its backward
(dX and dW for every weight). Log-prob passes count each distinct prompt once (its G completions
share it) and apply the LM head to completion positions only. The old-policy pass is not part of the
floor: the sampling pass gives those log-probs. With num_iterations = mu, sampling and the reference
pass are shared by mu steps.

Each pass is replayed as bare ``torch.mm`` calls on distinct weight tensors (as many bytes as the
model, so cache effects match), and its time is the floor; attention's score/value products add
their FLOPs at the rate the pass achieved. Everything else (norms, softmax, sampling, optimizer,
framework overhead) counts as distance from the floor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from workloads import ModelSpec


@dataclass
class PassCost:
    """FLOPs and matmul-only seconds of one pass."""

    flops: float
    seconds: float

    @property
    def rate(self) -> float:
        return self.flops / self.seconds


def _weight_shapes(spec: ModelSpec) -> list[tuple[int, int]]:
    """(in, out) of every linear of one decoder layer."""
    h, hd = spec.hidden_size, spec.hidden_size // spec.num_heads
    q, kv = spec.num_heads * hd, spec.num_kv_heads * hd
    i = spec.intermediate_size
    return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]


class FloorTimer:
    """Distinct random weights for every layer of ``spec`` and the tied LM head, to replay passes on."""

    def __init__(self, spec: ModelSpec, vocab_size: int, repeats: int = 2) -> None:
        self.spec = spec
        self.vocab = vocab_size
        self.repeats = repeats
        self.layers = [
            [torch.randn(o, i) * 0.02 for i, o in _weight_shapes(spec)] for _ in range(spec.num_layers)
        ]
        self.head = torch.randn(vocab_size, spec.hidden_size) * 0.02

    def _time(self, fn: object) -> float:
        fn()  # warm-up (allocations, MKL dispatch)
        best = float("inf")
        for _ in range(self.repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return best

    def forward(self, rows: int, head_rows: int) -> PassCost:
        """Forward over ``rows`` token positions; the LM head on ``head_rows`` of them."""
        x = {d: torch.randn(rows, d) for w in self.layers[0] for d in (w.shape[1],)}
        xh = torch.randn(head_rows, self.spec.hidden_size)

        def run() -> None:
            for layer in self.layers:
                for w in layer:
                    torch.mm(x[w.shape[1]], w.t())
            torch.mm(xh, self.head.t())

        flops = 2.0 * (rows * self._layer_macs() + head_rows * self._head_macs())
        return PassCost(flops, self._time(run))

    def backward(self, rows: int, head_rows: int) -> PassCost:
        """Backward of :meth:`forward`: dX = dY W and dW = dY^T X for every weight, LM head included."""
        dy = {w.shape[0]: torch.randn(rows, w.shape[0]) for w in self.layers[0]}
        x = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in self.layers[0]}
        dlogits = torch.randn(head_rows, self.vocab)
        xh = torch.randn(head_rows, self.spec.hidden_size)

        def run() -> None:
            torch.mm(dlogits, self.head)  # d hidden
            torch.mm(dlogits.t(), xh)  # d embedding (tied LM head)
            for layer in reversed(self.layers):
                for w in reversed(layer):
                    torch.mm(dy[w.shape[0]], w)
                    torch.mm(dy[w.shape[0]].t(), x[w.shape[1]])

        flops = 4.0 * (rows * self._layer_macs() + head_rows * self._head_macs())
        return PassCost(flops, self._time(run))

    def decode(self, batch: int, steps: int, timed_steps: int = 4) -> PassCost:
        """``steps`` one-token steps of ``batch`` rows (LM head every step); ``timed_steps`` are timed and scaled."""
        single = self.forward(batch, batch)
        if timed_steps > 1:
            many = PassCost(single.flops * timed_steps, 0.0)
            x = {w.shape[1]: torch.randn(batch, w.shape[1]) for w in self.layers[0]}
            xh = torch.randn(batch, self.spec.hidden_size)

            def run() -> None:
                for _ in range(timed_steps):
                    for layer in self.layers:
                        for w in layer:
                            torch.mm(x[w.shape[1]], w.t())
                    torch.mm(xh, self.head.t())

            many.seconds = self._time(run)
            single = PassCost(single.flops, many.seconds / timed_steps)
        return PassCost(single.flops * steps, single.seconds * steps)

    def attention_flops(self, rows: int, queries: int, keys_per_query: float) -> float:
        """QK^T and AV products: 4 * heads * head_dim FLOPs per (query, key) pair, every layer."""
        s = self.spec
        hd = s.hidden_size // s.num_heads
        return 4.0 * s.num_heads * hd * rows * queries * keys_per_query * s.num_layers

    def _layer_macs(self) -> int:
        return sum(i * o for i, o in _weight_shapes(self.spec)) * self.spec.num_layers

    def _head_macs(self) -> int:
        return self.spec.hidden_size * self.vocab


def step_floor(
    spec: ModelSpec,
    vocab_size: int,
    *,
    prompts: int,
    generations: int,
    prompt_length: int,
    completion_length: int,
    beta: float,
    num_iterations: int,
) -> dict[str, float]:
    """Floor seconds per optimizer step and its parts (each pass's FLOPs at its measured matmul rate)."""
    t = FloorTimer(spec, vocab_size)
    n, k = prompts * generations, completion_length
    prefill = t.forward(prompts * prompt_length, prompts)
    prefill.seconds += t.attention_flops(prompts, prompt_length, prompt_length / 2) / prefill.rate
    decode = t.decode(n, k)
    decode.seconds += t.attention_flops(n, k, prompt_length + k / 2) / decode.rate
    # Log-prob passes: each distinct prompt once (P x L positions), then the N x K completion positions.
    rows = prompts * prompt_length + n * k
    attention = t.attention_flops(prompts, prompt_length, prompt_length / 2) + t.attention_flops(
        n, k, prompt_length + k / 2
    )
    fwd = t.forward(rows, n * k)
    fwd.seconds += attention / fwd.rate
    bwd = t.backward(rows, n * k)
    bwd.seconds += 2 * attention / bwd.rate
    parts = {
        "sampling": (prefill.seconds + decode.seconds) / num_iterations,
        "ref_logp": fwd.seconds / num_iterations if beta > 0 else 0.0,
        "policy_logp": fwd.seconds,
        "backward": bwd.seconds,
    }
    parts["total"] = sum(parts.values())
    parts["rate_decode_gflops"] = decode.rate / 1e9
    parts["rate_forward_gflops"] = fwd.rate / 1e9
    parts["rate_backward_gflops"] = bwd.rate / 1e9
    return parts
