"""The LM head and the token log-probs as one autograd function, for a plain ``nn.Linear`` head.

The generic path (:func:`grpo_lightning.logprobs.token_logprobs` with an ``lm_head``) runs each chunk
of rows through it under activation checkpointing. That keeps memory flat, but autograd then
makes a new ``[V, H]`` weight gradient per chunk before adding it into ``.grad``, and the backward
walks the ``[rows, V]`` block several times (log-softmax output, gather's zeros, log-softmax's
backward). Here the backward recomputes each chunk's logits once, turns them into
``d logp / d logits = onehot(label) - softmax`` in place, and accumulates the weight gradient into
one buffer with ``addmm_``: one ``[V, H]`` gradient in all, and one ``[rows, V]`` block per chunk.

With tied embeddings (the head's weight is also the input embedding) that buffer would live through
the whole backward: autograd sums a parameter's gradients before accumulating them, and the
embedding's share comes last. When ``.grad`` already holds earlier micro-batches' gradients,
``accumulate_into_grad`` adds the head's share into it directly instead (Megatron's "gradient
accumulation fusion"); the embedding's share still goes through autograd, so the parameter's
accumulation hooks (DDP's all-reduce) fire once, after both. For a 49k x 576 head in float32 that is
113 MB less at the start of every micro-batch's backward, when the activations are at their peak.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from grpo_lightning.hf.causal_lm import is_sharded


def fused_head_applies(lm_head: nn.Module, hidden: Tensor) -> bool:
    """Whether :func:`linear_logprobs` can stand in for ``lm_head``: a plain ``nn.Linear`` (not an adapter
    wrapper), with ordinary (not FSDP-sharded) weights, outside autocast (whose casts it would skip)."""
    return (
        type(lm_head) is nn.Linear
        and not is_sharded(lm_head)
        and not torch.is_autocast_enabled(hidden.device.type)
        and hidden.dtype == lm_head.weight.dtype
    )


def _logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    """``[c, H] -> [c, V]`` float32 logits divided by the temperature (a fresh tensor, safe to modify)."""
    z = nn.functional.linear(hidden, weight, bias)
    z = z.float() if z.dtype != torch.float32 else z
    return z.div_(temperature) if temperature != 1.0 else z


class _LinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        labels: Tensor,
        temperature: float,
        chunk_size: int,
        with_entropy: bool,
        accumulate_into_grad: bool,
    ) -> tuple[Tensor, Tensor]:
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if with_entropy else logp.new_empty(0)
        for start in range(0, n, chunk_size):
            rows = slice(start, start + chunk_size)
            z = _logits(hidden[rows], weight, bias, temperature)
            norm = torch.logsumexp(z, dim=-1)
            logp[rows] = z.gather(-1, labels[rows].unsqueeze(-1)).squeeze(-1) - norm
            lse[rows] = norm
            if with_entropy:
                log_probs = z.sub_(norm.unsqueeze(-1))
                # No autograd here, so the product can reuse exp's block: two [c, V] blocks, not three.
                entropy[rows] = -log_probs.exp().mul_(log_probs).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.accumulate_into_grad = accumulate_into_grad
        ctx.mark_non_differentiable(entropy)  # a metric: no gradient flows through it
        return logp, entropy

    @staticmethod
    def backward(ctx: Any, grad_logp: Tensor, _grad_entropy: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        into_grad = need_weight and ctx.accumulate_into_grad and _accumulates(weight)
        grad_weight = torch.zeros_like(weight) if need_weight and not into_grad else None
        weight_sum = weight.grad if into_grad else grad_weight
        grad_bias = torch.zeros_like(bias) if need_bias and bias is not None else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            g = grad_logp[rows].float().unsqueeze(-1)  # [c, 1]
            z = _logits(hidden[rows], weight, bias, ctx.temperature)
            # d logp / d z = onehot(label) - softmax(z); then the 1 / temperature of the logits.
            grad_z = z.sub_(lse[rows].unsqueeze(-1)).exp_().mul_(-g)
            grad_z.scatter_add_(-1, labels[rows].unsqueeze(-1), g)
            if ctx.temperature != 1.0:
                grad_z.div_(ctx.temperature)
            grad_z = grad_z.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = grad_z @ weight
            if weight_sum is not None:
                weight_sum.addmm_(grad_z.t(), hidden[rows])
            if grad_bias is not None:
                grad_bias += grad_z.sum(0)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def _accumulates(weight: Tensor) -> bool:
    """Whether ``weight.grad`` is a plain gradient buffer the head's share can be added into."""
    grad = weight.grad
    return (
        grad is not None
        and not grad.requires_grad
        and grad.layout == torch.strided
        and grad.shape == weight.shape
        and grad.dtype == weight.dtype
    )


def linear_logprobs(
    hidden: Tensor,
    lm_head: nn.Linear,
    labels: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 512,
    with_entropy: bool = False,
    accumulate_into_grad: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of ``labels`` under ``lm_head(hidden) / temperature``, and a detached entropy.

    Args:
        hidden: [n, H] final hidden states.
        lm_head: a plain ``nn.Linear`` [H -> V] (see :func:`fused_head_applies`).
        labels: [n] token ids.
        accumulate_into_grad: the head's weight is tied to the input embedding of the same forward
            and the backward is a ``.backward()`` accumulating into ``.grad``: when ``.grad`` exists,
            the head's weight gradient is added into it in place (see the module docstring). Wrong
            for an untied head (its accumulation hooks would not fire) and for ``torch.autograd.grad``.

    Returns:
        ``logp: [n]`` float32, differentiable with respect to ``hidden`` and the head's parameters,
        and ``entropy: [n]`` float32 without gradient (None unless ``with_entropy``).
    """
    logp, entropy = _LinearLogprobs.apply(
        hidden, lm_head.weight, lm_head.bias, labels, temperature, chunk_size, with_entropy, accumulate_into_grad
    )
    return logp, (entropy if with_entropy else None)
