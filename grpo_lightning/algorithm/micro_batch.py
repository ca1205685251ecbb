"""The default micro-batch: as many rows per forward/backward as fit an activation budget.

A forward pass with gradients keeps, for the backward, about ``ACTIVATION_VALUES_PER_UNIT`` values
per token, per decoder layer and per unit of hidden size (the layer's inputs, norms, q/k/v, the
attention output, the MLP's three projections): measured 25 in float32 on SmolLM2-135M-Instruct
(``benchmarks/bench_memory.py``: 3.8 GB for 16 rows of 136 tokens through 30 layers of width 576).
For a real model that is the largest memory of a step: 16 such rows at once take 7x the weights.
``micro_batch_size=None`` therefore takes the largest divisor of the mini-batch whose rows stay
within :data:`MICRO_BATCH_ACTIVATION_BUDGET`, estimated from the rollout's padded width; small
models (the built-in tiny model's 128 rows of at most 84 tokens: 1.1 GB) keep the whole mini-batch.
"""

from __future__ import annotations

from torch import nn

#: Values kept for the backward per token, per decoder layer, per unit of hidden size (measured, float32).
ACTIVATION_VALUES_PER_UNIT = 25
#: With activation checkpointing a layer keeps only its input (one value per unit); the one layer
#: being recomputed in the backward is small next to the budget.
CHECKPOINTED_VALUES_PER_UNIT = 1
#: Estimated activation bytes one default micro-batch may hold.
MICRO_BATCH_ACTIVATION_BUDGET = 3 * 2**29  # 1.5 GiB


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
    values = CHECKPOINTED_VALUES_PER_UNIT if checkpointing else ACTIVATION_VALUES_PER_UNIT
    return layers * hidden * values * element


def default_micro_batch_size(
    mini_batch_size: int,
    row_tokens: int,
    bytes_per_token: int | None,
    budget: int | None = None,
) -> int:
    """The largest divisor ``d`` of ``mini_batch_size`` with ``d * row_tokens * bytes_per_token <= budget``
    (at least 1); the whole mini-batch when ``bytes_per_token`` is None (unknown model).

    ``row_tokens``: the rows' padded width (prompt + completion), the same for every row of a rollout.
    ``budget``: bytes (default :data:`MICRO_BATCH_ACTIVATION_BUDGET`).
    """
    if bytes_per_token is None:
        return mini_batch_size
    budget = MICRO_BATCH_ACTIVATION_BUDGET if budget is None else budget
    fits = max(budget // max(row_tokens * bytes_per_token, 1), 1)
    return max(d for d in range(1, mini_batch_size + 1) if mini_batch_size % d == 0 and d <= fits)
