"""Per-token log-probs and entropy without a full-vocabulary log-softmax of the whole batch.

A [B, T, V] float32 log-softmax is the largest tensor of a GRPO step (8 x 1024 x 152k x 4 bytes is
5 GB for a Qwen vocabulary), and autograd would keep one per micro-batch for the backward pass. Here
rows (token positions) are processed ``chunk_size`` at a time, each chunk under activation
checkpointing: only a [chunk_size, V] block exists at once, in the forward and again in the backward.
:func:`token_logprobs_from_hidden` goes further and applies the LM head chunk by chunk, so the
full-vocabulary logits of the batch never exist at all; :func:`sequence_logprobs` uses it on a
Hugging Face causal LM.

Log-probs and entropies are returned in float32 whatever the logits' dtype. ``temperature`` divides
the logits first, as at sampling time (and as TRL does), so ``logp`` is the log-prob under the
distribution the completion was drawn from.
"""

from __future__ import annotations

import inspect
import warnings
import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from grpo_lightning.fused_head import fused_head_applies, linear_logprobs

#: Rows (token positions) per chunk. A [512, 152k] float32 block is 300 MB, and the checkpointed path
#: peaks at about five such blocks (logits, log-softmax, entropy terms, their gradients; the fused
#: head of ``fused_head.py`` at two): lower it for big vocabularies.
DEFAULT_CHUNK_SIZE = 512

# Models found to post-process their logits (soft-capping, scaling): they take the logits path.
_LOGITS_ONLY: weakref.WeakSet[nn.Module] = weakref.WeakSet()
# Config fields of models whose logits are not simply lm_head(hidden).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


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
    logits: Tensor,
    labels: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_entropy: bool = False,
    entropy_grad: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of each label and (optionally) the entropy of each position's distribution.

    Args:
        logits: [B, T, V] (any float dtype; each chunk is upcast to float32).
        labels: [B, T] token ids; ``logits[b, t]`` is the distribution ``labels[b, t]`` was drawn from.

    Returns:
        ``logp: [B, T]`` float32 and ``entropy: [B, T]`` float32 (None unless ``with_entropy``), both
        differentiable with respect to ``logits`` (the entropy only if ``entropy_grad``: False when
        it is a metric, which saves memory and backward time).
    """
    _check_labels(logits, labels, "logits")

    def fn(block: Tensor, block_labels: Tensor) -> Tensor:
        return _logp_and_entropy(block, block_labels, temperature, with_entropy, entropy_grad)

    use_checkpoint = torch.is_grad_enabled() and logits.requires_grad
    out = _chunked(fn, logits, labels, chunk_size, use_checkpoint, preserve_rng_state=False)
    return _split(out, with_entropy, entropy_grad)


def token_logprobs_from_hidden(
    hidden: Tensor,
    lm_head: nn.Module,
    labels: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_entropy: bool = False,
    entropy_grad: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Like :func:`token_logprobs`, from final hidden states, applying ``lm_head`` chunk by chunk.

    Args:
        hidden: [B, T, H] hidden states after the model's final norm, one per predicted position.
        lm_head: the output embedding (``nn.Linear`` or an adapter-wrapped one): [*, H] -> [*, V].
        labels: [B, T] the tokens each position predicts.

    Returns:
        ``logp: [B, T]`` and ``entropy: [B, T] | None`` in float32, differentiable with respect to
        ``hidden`` and the LM head's parameters. Only [chunk_size, V] logits exist at any time.
    """
    _check_labels(hidden, labels, "hidden")

    def fn(block: Tensor, block_labels: Tensor) -> Tensor:
        return _logp_and_entropy(lm_head(block), block_labels, temperature, with_entropy, entropy_grad)

    needs_grad = hidden.requires_grad or any(p.requires_grad for p in lm_head.parameters())
    fused = torch.is_grad_enabled() and needs_grad and not (with_entropy and entropy_grad)
    if fused and labels.numel() and fused_head_applies(lm_head, hidden):
        # One autograd function for head + log-probs: less memory and fewer passes in the backward.
        batch, length = labels.shape
        logp, entropy = linear_logprobs(
            hidden.reshape(batch * length, -1),
            lm_head,  # type: ignore[arg-type]
            labels.reshape(-1),
            temperature=temperature,
            chunk_size=chunk_size,
            with_entropy=with_entropy,
        )
        return logp.view(batch, length), (entropy.view(batch, length) if entropy is not None else None)
    # preserve_rng_state: an adapter on the LM head may apply dropout; the recompute must match.
    out = _chunked(
        fn, hidden, labels, chunk_size, torch.is_grad_enabled() and needs_grad, preserve_rng_state=True
    )
    return _split(out, with_entropy, entropy_grad)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids ``[B, L]`` that skip left padding: what ``generate`` uses while sampling.

    A plain forward without ``position_ids`` numbers the padding too (0..L-1), which changes the
    log-probs of models with absolute position embeddings (GPT-2) relative to sampling time.
    """
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def _accepts(model: nn.Module, name: str) -> bool:
    params = inspect.signature(model.forward).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _hidden_path_head(model: nn.Module) -> nn.Module | None:
    """The LM head to apply to the final hidden states, or None when the logits path must be used."""
    if model in _LOGITS_ONLY or not _accepts(model, "logits_to_keep"):
        return None
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, nn.Module):
        return None
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)()
    if any(getattr(config, field, None) not in (None, 1.0) for field in _LOGIT_TRANSFORMS):
        return None
    return head


@torch.no_grad()
def _head_reproduces(head: nn.Module, last_hidden: Tensor, last_logits: Tensor) -> bool:
    """Whether ``head(last hidden state)`` gives the model's own last-position logits (cheap: [B, V])."""
    mine = head(last_hidden).float()
    theirs = last_logits.float()
    return mine.shape == theirs.shape and torch.allclose(mine, theirs, rtol=1e-3, atol=1e-5)


def sequence_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    logits_to_keep: int,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_entropy: bool = False,
    entropy_grad: bool = True,
    from_hidden: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Per-token log-probs of the last ``logits_to_keep`` tokens of each row under a causal LM.

    Args:
        model: a Hugging Face causal LM (possibly PEFT-wrapped).
        input_ids: [B, L + K] left-padded prompt followed by the completion (K = ``logits_to_keep``).
        attention_mask: [B, L + K] 1 on real tokens (prompt and completion), 0 on padding.
        logits_to_keep: K, the completion length.
        entropy_grad: keep the entropy differentiable (for an entropy term in a loss); False when it
            is only a metric, which saves memory and backward time.
        from_hidden: take the final hidden states and apply the LM head chunk by chunk (no
            [B, K, V] logits). It falls back to the model's logits (``logits_to_keep=K + 1``) when
            the model cannot give them, or post-processes its logits (soft-capping, scaling).

    Returns:
        ``logp: [B, K]`` and ``entropy: [B, K] | None``, float32. Positions are numbered from the
        attention mask, as ``generate`` does, so ``logp`` matches the sampling-time distribution.
    """
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must both be [B, L + K]."
        )
    K = logits_to_keep
    if not 1 <= K < input_ids.shape[1]:
        raise ValueError(
            f"logits_to_keep={K} must be in [1, {input_ids.shape[1] - 1}]: the completion length, with at "
            "least one prompt token before it."
        )
    labels = input_ids[:, -K:]
    kwargs: dict[str, object] = {"attention_mask": attention_mask, "use_cache": False}
    if _accepts(model, "position_ids"):
        kwargs["position_ids"] = position_ids_from_mask(attention_mask)
    options = {
        "temperature": temperature,
        "chunk_size": chunk_size,
        "with_entropy": with_entropy,
        "entropy_grad": entropy_grad,
    }

    head = _hidden_path_head(model) if from_hidden else None
    if head is not None:
        out = model(input_ids, output_hidden_states=True, logits_to_keep=1, **kwargs)
        hidden_states = getattr(out, "hidden_states", None)
        final = hidden_states[-1] if hidden_states else None
        if final is not None and _head_reproduces(head, final[:, -1:], out.logits[:, -1:]):
            del out, hidden_states  # under no_grad this frees the other layers' states now
            # Position t predicts token t + 1: the K completion tokens come from positions -K-1 .. -2.
            return token_logprobs_from_hidden(final[:, -K - 1 : -1], head, labels, **options)
        _LOGITS_ONLY.add(model)
        warnings.warn(
            f"{type(model).__name__}: the LM head applied to the last hidden state does not reproduce the "
            "model's logits (logit soft-capping or scaling?); computing log-probs from the logits instead.",
            stacklevel=2,
        )
    if _accepts(model, "logits_to_keep"):
        logits = model(input_ids, logits_to_keep=K + 1, **kwargs).logits[:, :-1]
    else:
        logits = model(input_ids, **kwargs).logits[:, -K - 1 : -1]
    return token_logprobs(logits, labels, **options)
