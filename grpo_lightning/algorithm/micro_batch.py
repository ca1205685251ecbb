"""The default micro-batch: as many rows per forward/backward as fit a step's memory target.

A forward pass with gradients keeps, for the backward, about ``ACTIVATION_VALUES_PER_UNIT`` values
per token, per decoder layer and per unit of hidden size (the layer's inputs, norms, q/k/v, the
attention output, the MLP's three projections): measured 25 in float32 on SmolLM2-135M-Instruct
(``benchmarks/bench_memory.py``: 3.8 GB for 16 rows of 136 tokens through 30 layers of width 576).
For a real model that is the largest memory of a step: 16 such rows at once take 7x the weights.
``micro_batch_size=None`` therefore takes the largest divisor of the mini-batch whose activations,
estimated from the rollout's padded width, fit in what :data:`STEP_MEMORY_TARGET` leaves beside the
training state (weights, gradients, AdamW moments, the reference: :func:`training_state_bytes`), and
at least one row. Small models keep the whole mini-batch (the built-in tiny model's 128 rows of at
most 84 tokens: 1.1 GB of 2.2 GiB left); a 135M model in float32 (2 GiB of state) takes one row
at a time, which keeps its peak near 1.5x its state.

Where the state alone is near or over the target, the activations may still take
:data:`STATE_SHARE` of the state: each pass also makes and adds a full set of gradients (for a large
vocabulary, a [V, H] embedding gradient per pass), so a model with a big state but small activations
must not be cut to one row per pass: two layers of Qwen2.5-0.5B's shape (152k vocabulary, 3.3 GB of
state with its reference) get 16 rows per pass, not 1.

On a CUDA device the budget is instead a share (:data:`CUDA_FREE_SHARE`) of the memory the device has
free when the update starts (the state is already there): a fixed host-sized target would cut a GPU's
micro-batches to a row or two and waste the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: Values kept for the backward per token, per decoder layer, per unit of hidden size (measured, float32).
ACTIVATION_VALUES_PER_UNIT = 25
#: With activation checkpointing a layer keeps only its input (one value per unit), and the layer
#: being recomputed in the backward all of its :data:`ACTIVATION_VALUES_PER_UNIT`.
CHECKPOINTED_VALUES_PER_UNIT = 1
#: Training state plus one default micro-batch's estimated activations (bytes), on the CPU.
STEP_MEMORY_TARGET = 9 * 2**28  # 2.25 GiB
#: The share of the training state the activations may take whatever the target leaves: small enough
#: that a 135M model in float32 still takes one row per pass (0.2 GB of 2.2 GB; a row of 136 tokens
#: takes 0.24 GB), large enough that a large-vocabulary model with few layers keeps most of its rows.
STATE_SHARE = 0.1
#: On a CUDA device, the share of its free memory the activations of one micro-batch may take (the
#: rest is headroom for the logits chunks, the allocator's fragmentation and the optimizer step).
CUDA_FREE_SHARE = 0.6


def training_state_bytes(policy: nn.Module, reference: nn.Module | None) -> int:
    """Bytes of the weights training keeps: each trainable parameter with its gradient and two AdamW
    moments (4 copies), each frozen one once, and the reference's."""
    trainable = sum(p.numel() * p.element_size() for p in policy.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in policy.parameters() if not p.requires_grad)
    ref = sum(p.numel() * p.element_size() for p in reference.parameters()) if reference is not None else 0
    return 4 * trainable + frozen + ref


def activation_bytes_per_token(model: nn.Module, checkpointing: bool) -> int | None:
    """Estimated bytes a forward pass of ``model`` keeps per token for the backward, or None when
    its config does not say its depth and width (``num_hidden_layers``, ``hidden_size``)."""
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)()
    layers, hidden = getattr(config, "num_hidden_layers", None), getattr(config, "hidden_size", None)
    if not isinstance(layers, int) or not isinstance(hidden, int):
        return None
    param = next(model.parameters(), None)
    element = param.element_size() if param is not None and param.is_floating_point() else 4
    if checkpointing:
        return (layers * CHECKPOINTED_VALUES_PER_UNIT + ACTIVATION_VALUES_PER_UNIT) * hidden * element
    return layers * ACTIVATION_VALUES_PER_UNIT * hidden * element


def default_micro_batch_size(
    mini_batch_size: int,
    row_tokens: int,
    bytes_per_token: int | None,
    state_bytes: int,
    target: int | None = None,
    budget: int | None = None,
) -> int:
    """The largest divisor ``d`` of ``mini_batch_size`` with ``d * row_tokens * bytes_per_token`` within
    ``max(target - state_bytes, STATE_SHARE * state_bytes)`` (at least 1); the whole mini-batch when
    ``bytes_per_token`` is None (unknown model).

    ``row_tokens``: the rows' padded width (prompt + completion), the same for every row of a rollout.
    ``state_bytes``: :func:`training_state_bytes`. ``target``: bytes (default :data:`STEP_MEMORY_TARGET`).
    ``budget``: the bytes the activations may take, given directly (a CUDA device's free share); it
    replaces ``target - state_bytes``.
    """
    if bytes_per_token is None:
        return mini_batch_size
    if budget is None:
        left = (STEP_MEMORY_TARGET if target is None else target) - state_bytes
        budget = max(left, int(STATE_SHARE * state_bytes))
    fits = max(budget // max(row_tokens * bytes_per_token, 1), 1)
    return max(d for d in range(1, mini_batch_size + 1) if mini_batch_size % d == 0 and d <= fits)


@dataclass(frozen=True)
class StepMemory:
    """What the default micro-batch of a rollout is chosen from (see :func:`default_micro_batch_size`)."""

    row_tokens: int
    """The rows' padded width, prompt + completion."""
    bytes_per_token: int | None
    """:func:`activation_bytes_per_token` of the policy; None when unknown."""
    state_bytes: int
    """:func:`training_state_bytes` of the policy and its reference."""
    budget: int | None = None
    """The activations' bytes on a CUDA device (:func:`device_budget`); None on the CPU."""

    def micro_batch_size(self, mini_batch_size: int) -> int:
        return default_micro_batch_size(
            mini_batch_size, self.row_tokens, self.bytes_per_token, self.state_bytes, budget=self.budget
        )


def device_budget(device: torch.device) -> int | None:
    """The activations' budget on ``device``: :data:`CUDA_FREE_SHARE` of a CUDA device's free memory;
    None elsewhere (the host target applies)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * CUDA_FREE_SHARE)
