"""Decoding steps of fixed tensor shapes, replayed as CUDA graphs: one launch per token, not hundreds.

:class:`~grpo_lightning.rollout.engines.decoders.LeanDecoder`'s step attends to columns ``< L + t + 1``: its
shapes grow by one every token, so it cannot be recorded once and replayed. :class:`StaticStepDecoder`
gives every input of a step a fixed address (the fed tokens, the column as a device scalar, the
key/value buffers, the rotary tables, the key-validity mask) and attends to a fixed *span* of columns:
the current column rounded up to a multiple of ``span_block``, the columns past the current one masked.
On CUDA one graph per span is captured the first time it is needed and replayed after; a rollout of
``L + T`` columns uses about ``(L + T) / span_block`` graphs. Elsewhere the same step runs eagerly
(how its logic is tested on CPU).

The buffers and graphs are kept between rollouts of the same shape (rows, prompt width rounded up to
``width_block``, new tokens, dtype, device, inference mode or not, the same parameter tensors, the
same adapter settings), so a training run captures once. Optimizers update weights in place, which the graphs read on replay; a
parameter replaced by a new tensor, or an adapter switched on or off, starts afresh.

A recording can be wrong without raising (a kernel that reads a host value at capture time, an
allocation reused under the graph): :meth:`StaticStepDecoder.check_first_step` replays the first
step's graph once and compares its logits with the same step run eagerly (:class:`GraphCheck`), so
the engine can fall back to eager decoding before a single token comes from an unverified graph.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from grpo_lightning.hf.causal_lm import base_model
from grpo_lightning.rollout.engines.decoders import LeanDecoder, additive_mask

_GRAPH_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# How far a replayed step's logits may be from the eager step's, relative to the largest eager logit.
# The replay runs the same kernels on the same inputs, so it agrees to a few roundings of the dtype
# (a different GEMM algorithm under capture reorders sums); a broken recording (a stale address, a
# value read at capture time) is off by the logits' own scale.
_GRAPH_RTOL = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def graph_unsupported_reason(device: torch.device, model: nn.Module) -> str | None:
    """Why decoding steps of ``model`` on ``device`` cannot be CUDA graphs here (None: they can)."""
    odd = {p.dtype for p in model.parameters()} - set(_GRAPH_DTYPES)
    if odd:  # quantized layers run kernels of their own, not known to be capturable
        return f"parameters of dtype {sorted(map(str, odd))} (quantized?)"
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"CUDA graphs need a CUDA device (the prompts are on {device.type!r})"
    if torch.is_autocast_enabled("cuda"):
        # Autocast's cast cache would be captured by address and freed when the autocast region ends.
        return "autocast is on (use a model in bf16/fp16, e.g. Trainer(precision='bf16-true'))"
    return None


def model_fingerprint(model: nn.Module) -> tuple[Hashable, ...]:
    """What a captured step depends on besides tensor contents: parameter addresses and adapter switches.

    PEFT layers branch in Python on whether their adapter is on, which one is active and whether it is
    merged; a graph records one branch, so any change must start afresh.
    """
    pointers = tuple((p.data_ptr(), p.dtype, tuple(p.shape)) for p in model.parameters())
    adapters = tuple(
        (
            bool(m.disable_adapters),
            tuple(m.active_adapters),
            bool(getattr(m, "merged", False)),
            tuple(sorted(getattr(m, "scaling", {}).items())),
        )
        for m in model.modules()
        if _is_tuner_layer(m)
    )
    return pointers, adapters


def _is_tuner_layer(module: nn.Module) -> bool:
    """A PEFT adapter layer: ``active_adapters`` and ``disable_adapters`` are properties there (on a
    transformers model they are methods)."""
    cls = type(module)
    return isinstance(getattr(cls, "active_adapters", None), property) and isinstance(
        getattr(cls, "disable_adapters", None), property
    )


@dataclass(frozen=True)
class GraphCheck:
    """One decoding step replayed from its CUDA graph against the same step run eagerly."""

    device: torch.device
    max_diff: float
    """Largest absolute difference of the two steps' ``[N, V]`` logits (inf when one is NaN and not the other)."""
    tolerance: float
    """Largest difference allowed: the dtype's relative tolerance times the largest eager logit (at least 1)."""
    seconds: float
    """Capture, replay and eager step together."""

    @property
    def passed(self) -> bool:
        return self.max_diff <= self.tolerance

    def describe(self) -> str:
        verdict = "agree" if self.passed else "DIFFER"
        return (
            f"CUDA graph check on {self.device}: one decoding step replayed from its graph and run eagerly "
            f"{verdict} (max |logit difference| {self.max_diff:.3g}, tolerance {self.tolerance:.3g}; "
            f"{self.seconds * 1000:.0f} ms)"
        )


def compare_logits(replayed: Tensor, eager: Tensor) -> tuple[float, float]:
    """``(max_diff, tolerance)`` of two ``[N, V]`` logits of one step: NaN where both are NaN agrees,
    NaN or inf on one side only is an infinite difference."""
    a, b = replayed.float(), eager.float()
    both_nan = a.isnan() & b.isnan()
    diff = (a - b).abs().masked_fill(both_nan, 0.0).nan_to_num(nan=float("inf"))
    scale = b.abs().masked_fill(~b.isfinite(), 0.0).max() if b.numel() else b.new_zeros(())
    rtol = _GRAPH_RTOL.get(eager.dtype, _GRAPH_RTOL[torch.float32])
    max_diff = float(diff.max()) if diff.numel() else 0.0
    return max_diff, rtol * max(1.0, float(scale))


def round_up(value: int, block: int) -> int:
    """The smallest multiple of ``block`` that is >= ``value``."""
    return -(-value // block) * block


class StaticStepDecoder(LeanDecoder):
    """:class:`LeanDecoder` whose decoding step has the same shapes and addresses for a whole span of steps.

    Args:
        model: a Llama-family causal LM (see :func:`~grpo_lightning.rollout.engines.decoders.lean_unsupported_reason`).
        graphs: capture and replay each span's step as a CUDA graph (CUDA only); False runs it eagerly.
        span_block: columns per span. Larger: fewer graphs, more masked columns read per step.
        width_block: prompt widths are left-padded to a multiple of this, so rollouts whose prompts
            differ a little in length share buffers and graphs.
        fallback: when a capture fails, warn and run the step eagerly instead of raising.
    """

    compactable = False  # a captured step's shapes are fixed: ended rows stay in the batch

    def __init__(
        self,
        model: nn.Module,
        *,
        graphs: bool,
        span_block: int = 64,
        width_block: int = 16,
        fallback: bool = False,
    ) -> None:
        super().__init__(model)
        if span_block < 1 or width_block < 1:
            raise ValueError(f"span_block={span_block} and width_block={width_block} must be >= 1.")
        self.graphs = graphs
        self.requested_graphs = graphs  # graphs turns False after a failed capture (with fallback)
        self.span_block = span_block
        self.width_block = width_block
        self.fallback = fallback
        self._shape_key: tuple[Any, ...] | None = None
        self._held: dict[str, Tensor] = {}
        self._kv: list[tuple[Tensor, Tensor]] = []
        self._captured: dict[int, tuple[Any, Tensor]] = {}
        self.captures = 0  # graphs captured over this decoder's life (tests check that reuse happens)
        self.checked = False  # check_first_step has passed: later spans' graphs are trusted

    def serves(self, model: nn.Module) -> bool:
        """Whether this decoder was built for ``model`` (the engine reuses it across rollouts)."""
        return self.lm is base_model(model)

    def prefill(self, prompt_ids: Tensor, prompt_mask: Tensor, repeats: int, max_new_tokens: int) -> Tensor:
        """As :meth:`LeanDecoder.prefill`, into buffers kept for the next rollout of the same shape."""
        pad = round_up(prompt_ids.shape[1], self.width_block) - prompt_ids.shape[1]
        if pad:  # left padding is masked and skipped by the position ids: the same computation
            prompt_ids = F.pad(prompt_ids, (pad, 0), value=0)
            prompt_mask = F.pad(prompt_mask, (pad, 0), value=0)
        n, width = prompt_ids.shape[0] * repeats, prompt_ids.shape[1]
        weight = self.inner.embed_tokens.weight
        # Tensors made under inference mode (Lightning's validation) cannot be written to outside it.
        inference = torch.is_inference_mode_enabled()
        key = (
            n,
            width,
            max_new_tokens,
            weight.dtype,
            prompt_ids.device,
            inference,
            model_fingerprint(self.lm),
        )
        if key != self._shape_key:
            self._reset(key)
        logits = super().prefill(prompt_ids, prompt_mask, repeats, max_new_tokens)
        self.key_valid = self._hold("key_valid", self.key_valid)
        self.cos, self.sin = self._hold("cos", self.cos), self._hold("sin", self.sin)
        self.total = width + max_new_tokens
        self._token = self._hold("token", torch.zeros(n, dtype=torch.long, device=prompt_ids.device))
        self._column = self._hold("column", torch.zeros((), dtype=torch.long, device=prompt_ids.device))
        self._columns = self._hold("columns", torch.arange(self.total, device=prompt_ids.device))
        return logits

    def step(self, tokens: Tensor) -> Tensor:
        """Feed ``tokens: [N]`` and return the next-token logits ``[N, V]`` (valid until the next step)."""
        span = self._feed(tokens)
        logits = self._replay(span) if self.graphs else self._static_step(span)
        self.column += 1
        return logits

    def check_first_step(self, tokens: Tensor) -> GraphCheck:
        """Record the next step's graph, feeding ``tokens: [N]``, and compare one replay with the same step
        run eagerly. Call after :meth:`prefill`, before the first :meth:`step`; raises what capture raises.

        The column does not advance: the step writes its keys/values, which the first real step writes
        over. The recording is kept (the first step replays it) whatever the verdict; the caller decides.
        """
        start = time.perf_counter()
        span = self._feed(tokens)
        entry = self._captured.get(span) or self._capture(span)
        self._captured[span] = entry
        graph, out = entry
        graph.replay()
        replayed = out.clone()
        eager = self._static_step(span)
        max_diff, tolerance = compare_logits(replayed, eager)  # reads the values: waits for the device
        check = GraphCheck(eager.device, max_diff, tolerance, time.perf_counter() - start)
        self.checked = check.passed
        return check

    def _feed(self, tokens: Tensor) -> int:
        """Put ``tokens: [N]`` and the current column in the step's fixed inputs; the span it attends to."""
        self._token.copy_(tokens)
        self._column.fill_(self.column)
        return min(self.total, round_up(self.column + 1, self.span_block))

    # ---- the captured step ------------------------------------------------------------------------

    def _static_step(self, span: int) -> Tensor:
        """One decoding step reading only fixed-address tensors; attends to columns ``< span``."""
        column = self._column
        x = self.inner.embed_tokens(self._token[:, None])
        t = (column - self.width).view(1)
        cos, sin = self.cos.index_select(1, t)[:, None], self.sin.index_select(1, t)[:, None]  # [N, 1, 1, d]
        # Keys written so far and not prompt padding; columns past this step's one hold stale values.
        allowed = (self.key_valid[:, :span] & (self._columns[:span] <= column))[:, None, None]
        mask = additive_mask(allowed, x.dtype)
        self._span = span
        for i, layer in enumerate(self.inner.layers):
            x, _, _ = self._layer(layer, x, cos, sin, i, mask)
        return self._logits(x[:, -1])

    def _cache(self, index: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        keys, values = self.keys[index], self.values[index]
        keys.index_copy_(2, self._column.view(1), k)  # the column is a device scalar: no host value
        values.index_copy_(2, self._column.view(1), v)
        return keys[:, :, : self._span], values[:, :, : self._span]

    def _replay(self, span: int) -> Tensor:
        entry = self._captured.get(span)
        if entry is None:
            try:
                entry = self._capture(span)
            except RuntimeError as err:
                if not self.fallback:
                    raise
                warnings.warn(
                    f"Capturing the decoding step as a CUDA graph failed ({err}); decoding without graphs. "
                    "Pass FastRolloutEngine(decoder='lean') to skip the attempt.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.graphs = False
                return self._static_step(span)
            self._captured[span] = entry
        graph, out = entry
        graph.replay()
        return out

    def _capture(self, span: int) -> tuple[Any, Tensor]:
        """Record this span's step. Warm-up runs first (on a side stream, as capture requires) so lazy
        initialisations (cuBLAS workspaces, attention kernel choice) happen outside the recording.
        The warm-up writes this step's key/value column: the replay writes the same values again."""
        device = self._token.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._static_step(span)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._static_step(span)
        self.captures += 1
        return graph, out

    # ---- buffers kept between rollouts ------------------------------------------------------------

    def _reset(self, key: tuple[Any, ...]) -> None:
        self._shape_key = key
        self._held, self._kv, self._captured = {}, [], {}
        self.checked = False  # new buffers, new recordings: check again
        device = key[4]
        self._pool = torch.cuda.graph_pool_handle() if self.graphs and device.type == "cuda" else None

    def _hold(self, name: str, value: Tensor) -> Tensor:
        """``value`` copied into the tensor kept under ``name`` (kept as is the first time)."""
        held = self._held.get(name)
        if held is None:
            self._held[name] = value
            return value
        return held.copy_(value)

    def _new_buffers(
        self, index: int, shape: tuple[int, int, int, int], like: Tensor
    ) -> tuple[Tensor, Tensor]:
        if index < len(self._kv):
            return self._kv[index]
        # Zeros, not empty: masked columns still enter the attention products, and 0 * NaN is NaN.
        pair = (like.new_zeros(shape), like.new_zeros(shape))
        self._kv.append(pair)
        return pair
