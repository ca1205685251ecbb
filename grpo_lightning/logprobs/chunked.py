"""Per-token log-probs and entropy without a full-vocabulary log-softmax of the whole batch.

A [B, T, V] float32 log-softmax is the largest tensor of a GRPO step (8 x 1024 x 152k x 4 bytes is
5 GB for a Qwen vocabulary), and autograd would keep one per micro-batch for the backward pass. Here
rows (token positions) are processed ``chunk_size`` at a time, each chunk under activation
checkpointing: only a [chunk_size, V] block exists at once, in the forward and again in the backward.
Given the final hidden states and the LM head, :func:`token_logprobs` goes further and applies the
head chunk by chunk, so the full-vocabulary logits of the batch never exist at all;
:func:`~grpo_lightning.logprobs.sequence_logprobs` uses it on a Hugging Face causal LM.

Log-probs and entropies are returned in float32 whatever the logits' dtype. ``temperature`` divides
the logits first, as at sampling time (and as TRL does), so ``logp`` is the log-prob under the
distribution the completion was drawn from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from grpo_lightning.logprobs.fused_head import fused_head_applies, linear_logprobs

#: Rows (token positions) per chunk. A [512, 152k] float32 block is 300 MB, and the checkpointed path
#: peaks at about five such blocks (logits, log-softmax, entropy terms, their gradients; the fused
#: head of :mod:`~grpo_lightning.logprobs.fused_head` at two): lower it for big vocabularies.
DEFAULT_CHUNK_SIZE = 512


def _logp_and_entropy(
    logits: Tensor, labels: Tensor, temperature: float, with_entropy: bool, entropy_grad: bool = True
) -> Tensor:
    """``logits: [n, V]``, ``labels: [n]`` -> ``[1 or 2, n]`` float32: logp (and entropy)."""
    z = logits.float()  # the costly line: a [n, V] float32 block (a copy unless already float32)
    if temperature != 1.0:
        z = z / temperature
    log_probs = torch.log_softmax(z, dim=-1)  # another [n, V] block, freed at the end of the chunk
    logp = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logp.unsqueeze(0)
    # A metric-only entropy stays out of the graph: otherwise autograd keeps two more [n, V] blocks
    # and the backward makes several [n, V] passes that only ever multiply zeros.
    with torch.enable_grad() if entropy_grad else torch.no_grad():
        entropy = -(log_probs.exp() * log_probs).sum(-1)
    return torch.stack([logp, entropy])


def _chunked(
    fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    labels: Tensor,
    chunk_size: int,
    use_checkpoint: bool,
    preserve_rng_state: bool,
) -> Tensor:
    """Apply ``fn([n, D], [n]) -> [k, n]`` to ``x: [B, T, D]`` about ``chunk_size`` rows at a time -> ``[k, B, T]``.

    Short sequences are grouped several to a chunk; long ones are cut along T. A block of a
    non-contiguous ``x`` (e.g. ``logits[:, :-1]``) is copied, but only that block.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (rows per chunk), got {chunk_size}.")
    batch, length = labels.shape
    if batch == 0 or length == 0:
        return x.new_zeros((0, batch, length), dtype=torch.float32)  # nothing to compute; fn would need k
    if length >= chunk_size:
        batch_slices = [slice(b, b + 1) for b in range(batch)]
        time_slices = [slice(t, min(t + chunk_size, length)) for t in range(0, length, chunk_size)]
    else:
        rows = chunk_size // length
        batch_slices = [slice(b, min(b + rows, batch)) for b in range(0, batch, rows)]
        time_slices = [slice(0, length)]
    rows_out = []
    for bs in batch_slices:
        pieces = []
        for ts in time_slices:
            block, block_labels = x[bs, ts], labels[bs, ts]
            flat, flat_labels = block.reshape(-1, x.shape[-1]), block_labels.reshape(-1)
            if use_checkpoint:
                # Keep only the inputs for backward and recompute the [n, V] block there: without this,
                # autograd would hold every chunk's float32 block until backward, i.e. the full tensor.
                out = checkpoint(
                    fn, flat, flat_labels, use_reentrant=False, preserve_rng_state=preserve_rng_state
                )
            else:
                out = fn(flat, flat_labels)
            pieces.append(out.view(out.shape[0], *block_labels.shape))
        rows_out.append(torch.cat(pieces, dim=2))
    return torch.cat(rows_out, dim=1)


def _check_labels(x: Tensor, labels: Tensor, name: str) -> None:
    if x.dim() != 3 or labels.shape != x.shape[:2]:
        raise ValueError(
            f"{name} must be [B, T, *] and labels [B, T]; got {tuple(x.shape)} and {tuple(labels.shape)}."
        )


def _split(out: Tensor, with_entropy: bool, entropy_grad: bool = True) -> tuple[Tensor, Tensor | None]:
    if out.shape[0] == 0:  # empty input
        empty = out.new_zeros(out.shape[1:])
        return empty, (empty if with_entropy else None)
    if not with_entropy:
        return out[0], None
    return out[0], (out[1] if entropy_grad else out[1].detach())


def token_logprobs(
    x: Tensor,
    labels: Tensor,
    *,
    lm_head: nn.Module | None = None,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_entropy: bool = False,
    entropy_grad: bool = True,
    accumulate_head_grad: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of each label and (optionally) the entropy of each position's distribution.

    Args:
        x: [B, T, V] logits (any float dtype; each chunk is upcast to float32), or with ``lm_head``
            [B, T, H] hidden states after the model's final norm, one per predicted position.
        labels: [B, T] token ids; position ``[b, t]`` is the distribution ``labels[b, t]`` was drawn from.
        lm_head: the output embedding (``nn.Linear`` or an adapter-wrapped one): [*, H] -> [*, V],
            applied chunk by chunk, so only [chunk_size, V] logits exist at any time.
        entropy_grad: keep the entropy differentiable; False when it is a metric, which saves memory
            and backward time.
        accumulate_head_grad: ``lm_head``'s weight is tied to the input embedding of the forward
            that made ``x``, and the backward will be a ``.backward()``: the head's weight gradient
            may then go straight into ``.grad`` (:func:`~grpo_lightning.logprobs.fused_head.linear_logprobs`).

    Returns:
        ``logp: [B, T]`` float32 and ``entropy: [B, T]`` float32 (None unless ``with_entropy``), both
        differentiable with respect to ``x`` and the LM head's parameters (the entropy only if
        ``entropy_grad``).
    """
    _check_labels(x, labels, "logits" if lm_head is None else "hidden")
    head = nn.Identity() if lm_head is None else lm_head

    def fn(block: Tensor, block_labels: Tensor) -> Tensor:
        return _logp_and_entropy(head(block), block_labels, temperature, with_entropy, entropy_grad)

    needs_grad = x.requires_grad or any(p.requires_grad for p in head.parameters())
    fused = torch.is_grad_enabled() and needs_grad and not (with_entropy and entropy_grad)
    if fused and lm_head is not None and labels.numel() and fused_head_applies(lm_head, x):
        # One autograd function for head + log-probs: less memory and fewer passes in the backward.
        batch, length = labels.shape
        logp, entropy = linear_logprobs(
            x.reshape(batch * length, -1),
            lm_head,  # type: ignore[arg-type]
            labels.reshape(-1),
            temperature=temperature,
            chunk_size=chunk_size,
            with_entropy=with_entropy,
            accumulate_into_grad=accumulate_head_grad,
        )
        return logp.view(batch, length), (entropy.view(batch, length) if entropy is not None else None)
    # preserve_rng_state: an adapter on the LM head may apply dropout; the recompute must match.
    use_checkpoint = torch.is_grad_enabled() and needs_grad
    out = _chunked(fn, x, labels, chunk_size, use_checkpoint, preserve_rng_state=lm_head is not None)
    return _split(out, with_entropy, entropy_grad)


def token_logprobs_from_hidden(
    hidden: Tensor, lm_head: nn.Module, labels: Tensor, **options: Any
) -> tuple[Tensor, Tensor | None]:
    """:func:`token_logprobs` of ``hidden: [B, T, H]`` through ``lm_head``, with the same keyword options."""
    return token_logprobs(hidden, labels, lm_head=lm_head, **options)
