"""Chunked log-probs and entropy: equal to the naive full log-softmax, with bounded peak memory."""

from __future__ import annotations

import pytest
import torch
from helpers import PeakMemory
from torch import nn
from torch.testing import assert_close

from grpo_lightning.hf.tiny import build_char_tokenizer, build_tiny_model
from grpo_lightning.logprobs import (
    linear_logprobs,
    position_ids_from_mask,
    sequence_logprobs,
    token_logprobs,
    token_logprobs_from_hidden,
)


def naive(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook computation: a full [B, T, V] float32 log-softmax."""
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return logp, entropy


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 7, 64])  # T = 5: cut along T, exact, grouped rows
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_equal_naive(chunk_size: int, temperature: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 6, 50, generator=g))[
        :, :-1
    ].requires_grad_()  # non-contiguous view [3, 5, 50]
    logits.retain_grad()
    labels = torch.randint(0, 50, (3, 5), generator=g)
    w1, w2 = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)

    logp, entropy = token_logprobs(
        logits, labels, temperature=temperature, chunk_size=chunk_size, with_entropy=True
    )
    ref_logp, ref_entropy = naive(logits, labels, temperature)
    assert logp.dtype == entropy.dtype == torch.float32
    assert_close(logp, ref_logp, atol=1e-6, rtol=0)
    assert_close(entropy, ref_entropy, atol=1e-6, rtol=0)

    (grad,) = torch.autograd.grad((logp * w1).sum() + (entropy * w2).sum(), logits)
    (ref_grad,) = torch.autograd.grad((ref_logp * w1).sum() + (ref_entropy * w2).sum(), logits)
    assert_close(grad, ref_grad, atol=1e-6, rtol=0)

    logp_only, none = token_logprobs(logits, labels, temperature=temperature, chunk_size=chunk_size)
    assert none is None
    assert_close(logp_only, ref_logp, atol=1e-6, rtol=0)


def test_bfloat16_logits_are_upcast() -> None:
    logits = torch.randn(2, 4, 30).to(torch.bfloat16)
    labels = torch.randint(0, 30, (2, 4))
    logp, entropy = token_logprobs(logits, labels, chunk_size=3, with_entropy=True)
    ref_logp, ref_entropy = naive(logits, labels)
    assert logp.dtype == torch.float32
    assert_close(logp, ref_logp, atol=1e-6, rtol=0)
    assert_close(entropy, ref_entropy, atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 100])
def test_from_hidden_equals_naive_with_gradients(chunk_size: int) -> None:
    torch.manual_seed(0)
    head = nn.Linear(16, 40, bias=True)
    hidden = torch.randn(2, 6, 16, requires_grad=True)
    labels = torch.randint(0, 40, (2, 6))

    logp, entropy = token_logprobs_from_hidden(
        hidden, head, labels, temperature=0.9, chunk_size=chunk_size, with_entropy=True
    )
    loss = logp.sum() + 0.5 * entropy.sum()
    grads = torch.autograd.grad(loss, [hidden, head.weight, head.bias])

    ref_logp, ref_entropy = naive(head(hidden), labels, temperature=0.9)
    ref_loss = ref_logp.sum() + 0.5 * ref_entropy.sum()
    ref_grads = torch.autograd.grad(ref_loss, [hidden, head.weight, head.bias])
    assert_close(logp, ref_logp, atol=1e-6, rtol=0)
    assert_close(entropy, ref_entropy, atol=1e-6, rtol=0)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)


def test_a_metric_only_entropy_is_left_out_of_the_graph() -> None:
    """entropy_grad=False: same values, same logp gradients, and an entropy autograd never sees."""
    torch.manual_seed(0)
    head = nn.Linear(16, 40)
    hidden = torch.randn(2, 6, 16, requires_grad=True)
    labels = torch.randint(0, 40, (2, 6))
    runs = {}
    for entropy_grad in (True, False):
        logp, entropy = token_logprobs_from_hidden(
            hidden, head, labels, chunk_size=4, with_entropy=True, entropy_grad=entropy_grad
        )
        runs[entropy_grad] = (logp, entropy, torch.autograd.grad(logp.sum(), [hidden, head.weight]))
    (logp, entropy, grads), (logp_m, entropy_m, grads_m) = runs[True], runs[False]
    assert entropy.requires_grad and not entropy_m.requires_grad
    assert_close(logp_m, logp, atol=1e-6, rtol=0)  # the fused head's logsumexp rounds differently
    assert_close(entropy_m, entropy, atol=1e-6, rtol=0)
    for grad, grad_m in zip(grads, grads_m, strict=True):
        assert_close(grad_m, grad, atol=1e-6, rtol=1e-6)


def test_no_grad_path_and_empty_input() -> None:
    head = nn.Linear(8, 20)
    hidden, labels = torch.randn(2, 3, 8), torch.randint(0, 20, (2, 3))
    with torch.no_grad():
        logp, _ = token_logprobs_from_hidden(hidden, head, labels, chunk_size=2)
    assert not logp.requires_grad
    assert_close(logp, naive(head(hidden), labels)[0], atol=1e-6, rtol=0)
    logp, entropy = token_logprobs(
        torch.randn(2, 0, 20), torch.zeros(2, 0, dtype=torch.long), with_entropy=True
    )
    assert logp.shape == entropy.shape == (2, 0)
    with pytest.raises(ValueError, match="labels"):
        token_logprobs(torch.randn(2, 3, 20), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(torch.randn(2, 3, 20), torch.zeros(2, 3, dtype=torch.long), chunk_size=0)


@pytest.mark.parametrize("vocab", [512, 2048])
def test_peak_memory_does_not_grow_with_the_batch(vocab: int) -> None:
    # Forward and backward from hidden states. The naive path holds several [B, T, V] float32
    # tensors (logits, log-softmax, their gradients); the chunked one a few [chunk, V] blocks,
    # whatever the batch. Without the per-chunk checkpointing autograd would keep every chunk's
    # block until backward and the chunked peak would grow with the batch like the naive one.
    length, hidden_size, chunk = 32, 16, 32
    block_bytes = chunk * vocab * 4
    head = nn.Linear(hidden_size, vocab, bias=False)
    chunked, full = {}, {}
    for batch in (2, 8):
        hidden = torch.randn(batch, length, hidden_size, requires_grad=True)
        labels = torch.randint(0, vocab, (batch, length))
        with PeakMemory() as chunked[batch]:
            logp, entropy = token_logprobs_from_hidden(
                hidden, head, labels, chunk_size=chunk, with_entropy=True
            )
            (logp.sum() + entropy.sum()).backward()
        with PeakMemory() as full[batch]:
            ref_logp, ref_entropy = naive(head(hidden), labels)
            (ref_logp.sum() + ref_entropy.sum()).backward()
        assert full[batch].peak >= 2 * batch * length * vocab * 4
        assert chunked[batch].peak < 8 * block_bytes
    assert full[8].peak > 3.5 * full[2].peak  # 4x the rows: 4x the memory
    assert chunked[8].peak < 1.25 * chunked[2].peak  # only the [B, T] outputs and [B, T, H] grads grow


def test_token_logprobs_forward_keeps_one_chunk_alive() -> None:
    # From existing logits, with autograd on: the forward's peak is a few [chunk, V] blocks, not the
    # [B, T, V] log-softmax (here 32 blocks); nothing of that size is kept for backward.
    batch, length, vocab, chunk = 16, 64, 1024, 32
    logits = torch.randn(batch, length, vocab, requires_grad=True)
    labels = torch.randint(0, vocab, (batch, length))
    with PeakMemory() as mem:
        token_logprobs(logits, labels, temperature=0.7, chunk_size=chunk, with_entropy=True)
    assert mem.peak < 6 * chunk * vocab * 4
    assert mem.live < chunk * vocab * 4


def _left_padded_batch(tokenizer, completion_len: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts of different lengths (left-padded) + completions, the last of which ends early."""
    prompts = tokenizer(["1+2=", "12+30-4=", "7="], return_tensors="pt", padding=True)
    g = torch.Generator().manual_seed(1)
    completion = torch.randint(3, len(tokenizer), (3, completion_len), generator=g)
    completion[2, 2] = tokenizer.eos_token_id
    completion[2, 3:] = tokenizer.pad_token_id
    completion_mask = torch.ones_like(completion)
    completion_mask[2, 3:] = 0
    input_ids = torch.cat([prompts.input_ids, completion], dim=1)
    attention_mask = torch.cat([prompts.attention_mask, completion_mask], dim=1)
    return input_ids, attention_mask, completion_mask


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
def test_sequence_logprobs_equal_a_full_forward(arch: str) -> None:
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, arch=arch, hidden_size=32).eval()  # GPT-2 has dropout
    input_ids, attention_mask, completion_mask = _left_padded_batch(tokenizer)
    K = completion_mask.shape[1]
    labels = input_ids[:, -K:]

    # Reference: one plain forward over the whole sequence, with the positions generate() uses.
    full = model(
        input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
    )
    ref_logp, ref_entropy = naive(full.logits[:, -K - 1 : -1], labels)
    ref_loss = (ref_logp * completion_mask).sum() + (ref_entropy * completion_mask).sum()
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))

    for from_hidden in (True, False):
        for chunk_size in (1, 4, 512):
            logp, entropy = sequence_logprobs(
                model,
                input_ids,
                attention_mask,
                K,
                chunk_size=chunk_size,
                with_entropy=True,
                from_hidden=from_hidden,
            )
            assert logp.shape == entropy.shape == (3, K)
            # 1e-5, not 1e-6: the LM head now multiplies [chunk, H] blocks instead of one [B, L, H]
            # tensor, and a different matmul blocking changes the last bits of the logits.
            assert_close(logp * completion_mask, ref_logp * completion_mask, atol=1e-5, rtol=0)
            assert_close(entropy * completion_mask, ref_entropy * completion_mask, atol=1e-5, rtol=0)
        loss = (logp * completion_mask).sum() + (entropy * completion_mask).sum()
        grads = torch.autograd.grad(loss, list(model.parameters()))
        for grad, ref_grad in zip(grads, ref_grads, strict=True):
            assert_close(grad, ref_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_sequence_logprobs_match_the_sampling_distribution(arch: str) -> None:
    # The log-probs must be those generate() sampled from, left padding included. GPT-2 has absolute
    # position embeddings, so a forward that numbered the padding would be off: checked below.
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, arch=arch, hidden_size=32).eval()
    prompts = tokenizer(["1+2=", "12+30-4="], return_tensors="pt", padding=True)
    torch.manual_seed(0)
    out = model.generate(
        **prompts,
        max_new_tokens=6,
        do_sample=True,
        output_logits=True,
        return_dict_in_generate=True,
        min_new_tokens=6,
    )
    K = out.sequences.shape[1] - prompts.input_ids.shape[1]
    completion = out.sequences[:, -K:]
    sampled_logp = (
        torch.stack(out.logits, dim=1).log_softmax(-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
    )
    attention_mask = torch.cat([prompts.attention_mask, torch.ones_like(completion)], dim=1)
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, out.sequences, attention_mask, K)
        plain = model(out.sequences, attention_mask=attention_mask).logits[:, -K - 1 : -1]
    assert_close(logp, sampled_logp, atol=1e-5, rtol=0)
    if arch == "gpt2":
        plain_logp = naive(plain, completion)[0]
        assert (plain_logp - sampled_logp).abs().max() > 1e-2


class ScaledLogits(nn.Module):
    """A causal LM that post-processes its logits (like soft-capping): lm_head(hidden) is not its output."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def get_output_embeddings(self) -> nn.Module:
        return self.inner.get_output_embeddings()

    def forward(self, input_ids: torch.Tensor, **kwargs):
        out = self.inner(input_ids, **kwargs)
        out.logits = 2.0 * out.logits
        return out


def test_falls_back_to_logits_when_the_head_does_not_reproduce_them() -> None:
    tokenizer = build_char_tokenizer()
    model = ScaledLogits(build_tiny_model(tokenizer, hidden_size=32).eval())
    input_ids, attention_mask, completion_mask = _left_padded_batch(tokenizer)
    K = completion_mask.shape[1]
    with torch.no_grad():
        full = model(
            input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
        )
        with pytest.warns(UserWarning, match="computing log-probs from the logits"):
            logp, _ = sequence_logprobs(model, input_ids, attention_mask, K)
        again, _ = sequence_logprobs(model, input_ids, attention_mask, K)  # remembered: no second warning
    ref_logp = naive(full.logits[:, -K - 1 : -1], input_ids[:, -K:])[0]
    assert_close(logp * completion_mask, ref_logp * completion_mask, atol=1e-5, rtol=0)
    assert_close(again, logp)


def test_peft_model_with_an_adapter_on_the_lm_head() -> None:
    from peft import LoraConfig, get_peft_model

    tokenizer = build_char_tokenizer()
    base = build_tiny_model(tokenizer, hidden_size=32, tie_word_embeddings=False).eval()
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False)
    model = get_peft_model(base, config)
    input_ids, attention_mask, completion_mask = _left_padded_batch(tokenizer)
    K = completion_mask.shape[1]
    full = model(
        input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
    )
    ref_logp = naive(full.logits[:, -K - 1 : -1], input_ids[:, -K:])[0]
    logp, _ = sequence_logprobs(model, input_ids, attention_mask, K, chunk_size=4)
    assert_close(logp * completion_mask, ref_logp * completion_mask, atol=1e-5, rtol=0)
    # The LM-head adapter is trained through the chunked head.
    (logp * completion_mask).sum().backward()
    lora_head = [p for n, p in model.named_parameters() if "lm_head" in n and "lora_" in n]
    assert lora_head and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_head)


def test_sequence_logprobs_never_materialise_the_batch_logits() -> None:
    tokenizer = build_char_tokenizer()
    vocab, chunk = 8192, 16
    model = build_tiny_model(tokenizer, hidden_size=16, vocab_size=vocab)
    input_ids, attention_mask, completion_mask = _left_padded_batch(tokenizer, completion_len=96)
    K = completion_mask.shape[1]
    batch_logits_bytes = input_ids.shape[0] * K * vocab * 4  # one [B, K, V] float32 tensor
    with PeakMemory() as chunked:
        logp, _ = sequence_logprobs(model, input_ids, attention_mask, K, chunk_size=chunk, with_entropy=True)
        logp.sum().backward()
    with PeakMemory() as full:
        logits = model(input_ids, attention_mask=attention_mask).logits[:, -K - 1 : -1]
        naive(logits, input_ids[:, -K:])[0].sum().backward()
    # Forward and backward of the whole model, and still less than one batch of logits.
    assert chunked.peak < batch_logits_bytes
    assert full.peak > 3 * batch_logits_bytes


def test_bad_shapes_fail_with_a_clear_message() -> None:
    model = build_tiny_model(hidden_size=32)
    ids = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="logits_to_keep=5"):
        sequence_logprobs(model, ids, torch.ones_like(ids), 5)
    with pytest.raises(ValueError, match="must both be"):
        sequence_logprobs(model, ids, torch.ones(2, 4, dtype=torch.long), 2)


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_linear_head_equals_naive_with_gradients(chunk_size: int, temperature: float, bias: bool) -> None:
    torch.manual_seed(1)
    head = nn.Linear(16, 50, bias=bias)
    hidden = torch.randn(13, 16, requires_grad=True)
    labels = torch.randint(0, 50, (13,))
    weights = torch.randn(13)  # an uneven upstream gradient, like the loss gives

    logp, entropy = linear_logprobs(
        hidden, head, labels, temperature=temperature, chunk_size=chunk_size, with_entropy=True
    )
    params = [hidden, head.weight] + ([head.bias] if bias else [])
    grads = torch.autograd.grad((logp * weights).sum(), params)

    ref_logp, ref_entropy = naive(head(hidden).unsqueeze(0), labels.unsqueeze(0), temperature)
    ref_grads = torch.autograd.grad((ref_logp[0] * weights).sum(), params)
    assert_close(logp, ref_logp[0], atol=1e-6, rtol=1e-6)
    assert_close(entropy, ref_entropy[0], atol=1e-6, rtol=1e-6)
    assert not entropy.requires_grad
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)


def test_the_fused_head_is_used_for_plain_linear_heads_only(monkeypatch) -> None:
    import grpo_lightning.logprobs.chunked as logprobs

    calls = []
    monkeypatch.setattr(logprobs, "linear_logprobs", lambda *a, **k: calls.append(1) or linear_logprobs(*a, **k))
    hidden, labels = torch.randn(2, 3, 8, requires_grad=True), torch.randint(0, 20, (2, 3))
    head = nn.Linear(8, 20)
    logp, _ = token_logprobs_from_hidden(hidden, head, labels, with_entropy=True, entropy_grad=False)
    assert calls == [1] and logp.shape == (2, 3)
    token_logprobs_from_hidden(hidden, head, labels, with_entropy=True)  # a differentiable entropy
    token_logprobs_from_hidden(hidden, nn.Sequential(head), labels)  # not a plain Linear (an adapter)
    with torch.no_grad():
        token_logprobs_from_hidden(hidden, head, labels)  # nothing to differentiate
    assert calls == [1]
