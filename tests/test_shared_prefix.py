"""Log-probs with each distinct prompt computed once equal the full per-row computation, gradients included."""

from __future__ import annotations

import pytest
import torch

from grpo_lightning.hf.tiny import build_char_tokenizer, build_tiny_model
from grpo_lightning.logprobs import sequence_logprobs, shared_prefix_logprobs

PROMPTS = ["What is 12 + 7 - 3?", "What is 5 + 9?", "Compute 18 - 4 + 11 + 2."]


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def grouped_batch(tokenizer, generations=3, completion=7, seed=0):
    """Left-padded prompts, each repeated ``generations`` times in shuffled order, with random completions
    whose tails are padding (an EOS then nothing), as a rollout's ``input_ids`` / ``attention_mask``."""
    gen = torch.Generator().manual_seed(seed)
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    rows = torch.randperm(len(PROMPTS) * generations, generator=gen) // generations
    ids, mask = enc.input_ids[rows], enc.attention_mask[rows]
    comp = torch.randint(3, len(tokenizer), (len(rows), completion), generator=gen)
    lengths = torch.randint(1, completion + 1, (len(rows),), generator=gen)
    comp_mask = (torch.arange(completion) < lengths[:, None]).long()
    comp = comp.masked_fill(comp_mask == 0, tokenizer.pad_token_id)
    return torch.cat([ids, comp], 1), torch.cat([mask, comp_mask], 1), completion


def logp_entropy_grads(fn, model, ids, mask, k):
    model.zero_grad()
    logp, entropy = fn(model, ids, mask, k, temperature=0.8, with_entropy=True, chunk_size=5)
    weights = torch.linspace(-1.0, 1.0, logp.numel()).view_as(logp)
    ((logp + 0.1 * entropy) * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), entropy.detach(), grads


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
def test_equals_sequence_logprobs_with_gradients(tokenizer, arch):
    model = build_tiny_model(tokenizer, arch=arch).eval()  # eval: GPT-2's dropout would differ between calls
    ids, mask, k = grouped_batch(tokenizer)
    want = logp_entropy_grads(sequence_logprobs, model, ids, mask, k)
    got = logp_entropy_grads(shared_prefix_logprobs, model, ids, mask, k)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)
    assert got[2].keys() == want[2].keys()
    for name, grad in want[2].items():
        torch.testing.assert_close(got[2][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_single_token_completions_and_no_grad(tokenizer):
    model = build_tiny_model(tokenizer, arch="qwen2")
    ids, mask, k = grouped_batch(tokenizer, completion=1)
    with torch.no_grad():
        want, _ = sequence_logprobs(model, ids, mask, k)
        got, _ = shared_prefix_logprobs(model, ids, mask, k)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_lora_policy_gets_adapter_gradients(tokenizer):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        build_tiny_model(tokenizer, arch="qwen2"), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    ids, mask, k = grouped_batch(tokenizer)
    want = logp_entropy_grads(sequence_logprobs, model, ids, mask, k)
    got = logp_entropy_grads(shared_prefix_logprobs, model, ids, mask, k)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    assert want[2] and all("lora" in n for n in want[2])
    for name, grad in want[2].items():
        torch.testing.assert_close(got[2][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_falls_back_when_no_prompt_repeats_or_under_checkpointing(tokenizer, monkeypatch):
    import grpo_lightning.logprobs.sequence as shared

    model = build_tiny_model(tokenizer, arch="qwen2")
    calls = []
    monkeypatch.setattr(
        shared, "sequence_logprobs", lambda *a, **kw: calls.append(1) or sequence_logprobs(*a, **kw)
    )
    ids, mask, k = grouped_batch(tokenizer, generations=1)
    shared_prefix_logprobs(model, ids, mask, k)
    assert calls == [1]
    model.gradient_checkpointing_enable()
    model.train()
    ids, mask, k = grouped_batch(tokenizer)
    shared_prefix_logprobs(model, ids, mask, k)
    assert calls == [1, 1]
