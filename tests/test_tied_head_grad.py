"""A tied LM head adds its weight gradient straight into ``.grad`` across micro-batches: same
gradients as plain autograd, the parameter's accumulation hook fires once per backward with the
whole gradient (what DDP's all-reduce relies on), and one [V, H] buffer less in the backward."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import PeakMemory
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from grpo_lightning.hf.tiny import build_char_tokenizer, build_tiny_model
from grpo_lightning.logprobs import sequence_logprobs, shared_prefix_logprobs

VOCAB, HIDDEN, K = 4096, 32, 5


def _model(tied: bool) -> torch.nn.Module:
    model = build_tiny_model(
        build_char_tokenizer(), arch="llama", hidden_size=HIDDEN, vocab_size=VOCAB, tie_word_embeddings=tied
    )
    return model.eval()  # no dropout: both paths see the same function


def _micro_batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Three micro-batches of (input_ids [2, 9], attention_mask, per-token loss weights [2, K])."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(3):
        ids = torch.randint(0, VOCAB, (2, 4 + K), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 0] = 0  # a left-padded row
        out.append((ids, mask, torch.randn(2, K, generator=g)))
    return out


def _accumulate(model: torch.nn.Module, fused: bool) -> list[int]:
    """Backward each micro-batch into ``.grad``; returns how often the head weight's accumulation
    hook fired per backward, and checks that each firing saw the gradient summed so far."""
    fired: list[int] = []
    weight = model.get_output_embeddings().weight
    weight.register_post_accumulate_grad_hook(lambda p: fired.__setitem__(-1, fired[-1] + 1))
    for ids, mask, w in _micro_batches():
        fired.append(0)
        if fused:
            logp, _ = sequence_logprobs(
                model, ids, mask, K, with_entropy=True, entropy_grad=False, backward_into_grad=True
            )
        else:  # the plain path: full logits, autograd for everything
            logp, _ = sequence_logprobs(model, ids, mask, K, from_hidden=False)
        (logp * w).sum().backward()
    return fired


@pytest.mark.parametrize("tied", [True, False])
def test_gradients_equal_plain_autograd_over_micro_batches(tied: bool) -> None:
    model = _model(tied)
    plain = copy.deepcopy(model)
    assert (model.get_input_embeddings().weight is model.get_output_embeddings().weight) is tied
    assert _accumulate(model, fused=True) == [1, 1, 1]
    assert _accumulate(plain, fused=False) == [1, 1, 1]
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_the_hook_sees_the_whole_gradient_of_the_backward() -> None:
    # DDP reads .grad when the parameter's hook fires: by then the head's share must be in it.
    model, plain = _model(True), None
    plain = copy.deepcopy(model)
    seen: list[torch.Tensor] = []
    model.get_input_embeddings().weight.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.clone()))
    expected: list[torch.Tensor] = []
    for ids, mask, w in _micro_batches():
        logp, _ = sequence_logprobs(model, ids, mask, K, with_entropy=True, entropy_grad=False, backward_into_grad=True)
        (logp * w).sum().backward()
        ref, _ = sequence_logprobs(plain, ids, mask, K, from_hidden=False)
        (ref * w).sum().backward()
        expected.append(plain.get_input_embeddings().weight.grad.clone())
    assert len(seen) == 3
    for got, want in zip(seen, expected, strict=True):
        assert_close(got, want, atol=1e-5, rtol=1e-4)


class VocabularyBuffers(TorchDispatchMode):
    """Counts the [V, H] results of the ops run inside it (in-place ones included)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.count += sum(
            isinstance(t, torch.Tensor) and tuple(t.shape) == (VOCAB, HIDDEN) for t in tree_flatten(out)[0]
        )
        return out


def _second_backward(logprobs, shared_prompt: bool, into_grad: bool, mode: TorchDispatchMode) -> None:
    """Two micro-batches through ``logprobs`` on a tied model; the second one's backward runs in ``mode``."""
    model = _model(True)
    (ids, mask, w), *_ = _micro_batches()
    if shared_prompt:  # both rows sample one prompt, so the pass that computes it once runs
        ids[1, :4], mask[1] = ids[0, :4], mask[0]
    logp, _ = logprobs(model, ids, mask, K, with_entropy=True, entropy_grad=False)
    (logp * w).sum().backward()  # the first micro-batch: .grad now exists
    logp, _ = logprobs(model, ids, mask, K, with_entropy=True, entropy_grad=False, backward_into_grad=into_grad)
    with mode:
        (logp * w).sum().backward()


@pytest.mark.parametrize("shared_prompt", [False, True])
def test_the_head_makes_no_vocabulary_sized_gradient(shared_prompt: bool) -> None:
    logprobs = shared_prefix_logprobs if shared_prompt else sequence_logprobs
    counts = {}
    for into_grad in (True, False):
        _second_backward(logprobs, shared_prompt, into_grad, counts.setdefault(into_grad, VocabularyBuffers()))
    # Without it the head's backward makes its own [V, H] gradient (zeros, then its sum with the embedding's).
    assert counts[True].count < counts[False].count


def test_one_vocabulary_sized_buffer_less_in_the_backward() -> None:
    peaks = {into_grad: PeakMemory() for into_grad in (True, False)}
    for into_grad, peak in peaks.items():
        _second_backward(sequence_logprobs, False, into_grad, peak)
    # Without it the head's [V, H] gradient waits for the embedding's, then both are summed.
    assert peaks[False].peak - peaks[True].peak >= VOCAB * HIDDEN * 4
