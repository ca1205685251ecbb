"""The questions asked of any causal LM: position ids, sharding, the base under PEFT, forward arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import grpo_lightning.logprobs.sequence as sequence
import grpo_lightning.rollout.engines.decoders as decoders
from grpo_lightning.hf.causal_lm import (
    accepts_argument,
    base_model,
    cache_argument,
    decodes_in_lockstep,
    is_sharded,
    position_ids_from_mask,
)
from grpo_lightning.hf.models import apply_lora
from grpo_lightning.hf.tiny import build_char_tokenizer, build_tiny_model
from grpo_lightning.logprobs import sequence_logprobs, shared_prefix_logprobs

PROMPTS = ["What is 12 + 7 - 3?", "5 + 9 =", "Compute 18 - 4 + 11 + 2."]


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def test_position_ids_count_real_tokens_and_number_padding_one():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert position_ids_from_mask(mask).tolist() == [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4], [1, 1, 1, 1, 0]]
    # A completion's padding after its end (right side) counts on from the last real token.
    assert position_ids_from_mask(torch.tensor([[0, 1, 1, 0]])).tolist() == [[1, 0, 1, 1]]


def numbering_padding(value: int):
    def positions(mask: torch.Tensor) -> torch.Tensor:
        return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, value)

    return positions


def batch(tokenizer, completion=6, seed=0):
    """Left-padded prompts, each twice, followed by random completions: [B, L + K] ids and mask."""
    gen = torch.Generator().manual_seed(seed)
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    ids, mask = enc.input_ids.repeat_interleave(2, 0), enc.attention_mask.repeat_interleave(2, 0)
    comp = torch.randint(3, len(tokenizer), (len(ids), completion), generator=gen)
    return torch.cat([ids, comp], 1), torch.cat([mask, torch.ones_like(comp)], 1), completion


def logp_entropy_grads(fn, model, ids, mask, k):
    model.zero_grad()
    logp, entropy = fn(model, ids, mask, k, temperature=0.7, with_entropy=True)
    (logp * torch.linspace(-1, 1, logp.numel()).view_as(logp) + 0.1 * entropy).sum().backward()
    return [logp.detach(), entropy.detach()] + [
        p.grad.clone() for p in model.parameters() if p.grad is not None
    ]


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])  # absolute position embeddings, rotary
@pytest.mark.parametrize("fn", [sequence_logprobs, shared_prefix_logprobs])
def test_the_number_given_to_padding_changes_no_log_prob_or_gradient(tokenizer, monkeypatch, arch, fn):
    """The log-prob passes numbered padding 0, the decoders (as generate) 1: now both use 1. Bit for bit
    the same values and gradients, since no real token attends to a padding position."""
    model = build_tiny_model(tokenizer, arch=arch).eval()  # GPT-2's dropout would draw differently
    ids, mask, k = batch(tokenizer)
    now = logp_entropy_grads(fn, model, ids, mask, k)
    monkeypatch.setattr(sequence, "position_ids_from_mask", numbering_padding(0))
    before = logp_entropy_grads(fn, model, ids, mask, k)
    assert len(now) > 2
    for a, b in zip(now, before, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("arch", "decoder"), [("qwen2", "LeanDecoder"), ("gpt2", "CacheDecoder")])
def test_the_decoders_logits_do_not_depend_on_the_padding_number(tokenizer, monkeypatch, arch, decoder):
    model = build_tiny_model(tokenizer, arch=arch).eval()
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)

    def decode() -> list[torch.Tensor]:
        with torch.no_grad():
            d = getattr(decoders, decoder)(model)
            first = d.prefill(enc.input_ids, enc.attention_mask, 2, 4)
            return [first, d.step(torch.arange(6) + 3), d.step(torch.arange(6) + 5)]

    now = decode()
    monkeypatch.setattr(decoders, "position_ids_from_mask", numbering_padding(0))
    for a, b in zip(now, decode(), strict=True):
        assert torch.equal(a, b)


def test_base_model_unwraps_peft_only(tokenizer):
    model = build_tiny_model(tokenizer)
    assert base_model(model) is model
    lora = apply_lora(model, {"r": 2})
    assert base_model(lora) is model  # the adapter layers now sit inside it
    assert cache_argument(lora) == cache_argument(model) == "cache"  # read through the wrapper
    assert cache_argument(nn.Linear(2, 2)) is None
    assert accepts_argument(model, "logits_to_keep") and not accepts_argument(nn.Linear(2, 2), "position_ids")
    assert accepts_argument(lora, "position_ids")  # through the wrapper's **kwargs


def test_sharded_parameters_and_lockstep_decoding():
    """A DTensor parameter makes a model sharded; it decodes in lockstep only inside a process group."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    plain = nn.Linear(4, 4)
    assert not is_sharded(plain) and not decodes_in_lockstep(plain)
    if dist.is_initialized():
        pytest.skip("a process group is already up in this process")
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        sharded = nn.Linear(4, 4)
        mesh = init_device_mesh("cpu", (1,))
        sharded.weight = nn.Parameter(distribute_tensor(sharded.weight.detach(), mesh, [Shard(0)]))
        assert is_sharded(sharded) and decodes_in_lockstep(sharded)
        assert not decodes_in_lockstep(plain)
    finally:
        dist.destroy_process_group()
    assert is_sharded(sharded) and not decodes_in_lockstep(sharded)
