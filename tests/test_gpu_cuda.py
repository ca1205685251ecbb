"""Correctness on CUDA in fp32 and bf16: log-probs, the fused LM head under autocast, greedy decoding
(CUDA graphs included) and a few GRPO steps that learn. Each check also runs on CPU where it is
cheap, so its logic is exercised everywhere; the ``gpu``-marked cases are skipped without CUDA.

This file imports only the package modules the checks use, and nothing from datasets, jsonargparse,
math-verify or wandb, so that it runs on a machine with just torch, transformers, lightning and pytest
(given a package whose own imports of those are lazy).
"""

from __future__ import annotations

import pytest
import torch

from grpo_lightning.hf.tiny import build_char_tokenizer, build_tiny_model
from grpo_lightning.logprobs import fused_head_applies, position_ids_from_mask, sequence_logprobs
from grpo_lightning.rollout.engine import HFGenerateEngine, RolloutRequest, SamplingConfig
from grpo_lightning.rollout.engines import FastRolloutEngine

CUDA = pytest.param("cuda", marks=pytest.mark.gpu)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PROMPTS = ["What is 12 + 7 - 3?", "What is 5 + 9?", "Compute 18 - 4 + 11 + 2, please.", "3 + 3 ="]


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def peaked_model(tokenizer, device, dtype, arch="qwen2", hidden_size=64, num_layers=2):
    """A tiny model whose logits spread over several units (a random one's are nearly flat): greedy
    choices are then rarely near-ties, in bf16 too."""
    model = build_tiny_model(tokenizer, arch=arch, hidden_size=hidden_size, num_layers=num_layers, seed=1)
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
    return model.to(device=device, dtype=dtype)


def batch(tokenizer, device, completion_length=12, seed=0):
    """[4, L + K] left-padded prompts followed by K random completion tokens, some ended early."""
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    gen = torch.Generator().manual_seed(seed)
    completion = torch.randint(3, len(tokenizer), (4, completion_length), generator=gen)
    ids = torch.cat([enc.input_ids, completion], dim=1)
    mask = torch.cat([enc.attention_mask, torch.ones_like(completion)], dim=1)
    mask[1, -4:] = 0  # a completion that ended early (padding after it)
    return ids.to(device), mask.to(device)


def naive_logprobs(model, ids, mask, k):
    """The textbook computation: full logits, float32 log-softmax, gather."""
    logits = model(ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    logp = torch.log_softmax(logits[:, -k - 1 : -1].float(), dim=-1)
    return logp.gather(-1, ids[:, -k:].unsqueeze(-1)).squeeze(-1)


def logp_and_grads(model, fn, ids, mask, k, weights):
    model.zero_grad(set_to_none=True)
    logp = fn(model, ids, mask, k)
    (logp * weights).sum().backward()
    return logp.detach(), {n: p.grad.detach().float().clone() for n, p in model.named_parameters()}


def assert_grads_close(got, want, rel):
    for name in want:
        scale = float(want[name].abs().max()) + 1e-12
        torch.testing.assert_close(got[name], want[name], rtol=rel, atol=rel * scale, msg=name)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_fast_logprobs_and_gradients_equal_the_naive_ones(tokenizer, device, dtype):
    """The hidden-state path (fused LM head on a plain Linear) against full logits + log-softmax."""
    model = peaked_model(tokenizer, device, DTYPES[dtype])
    ids, mask = batch(tokenizer, device)
    k = 12
    assert fused_head_applies(model.lm_head, torch.zeros(1, 64, device=device, dtype=DTYPES[dtype]))
    weights = torch.randn(ids.shape[0], k, generator=torch.Generator().manual_seed(1)).to(device)

    def fast(m, i, a, n):
        return sequence_logprobs(m, i, a, n, chunk_size=16)[0]

    got, got_grads = logp_and_grads(model, fast, ids, mask, k, weights)
    want, want_grads = logp_and_grads(model, naive_logprobs, ids, mask, k, weights)
    # bf16: both paths round the same bf16 logits; only the order of float32 sums differs.
    tol = 1e-5 if dtype == "fp32" else 2e-2
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    assert_grads_close(got_grads, want_grads, 1e-4 if dtype == "fp32" else 5e-2)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_log_probs_under_bf16_autocast_equal_the_naive_ones(tokenizer, device):
    """An fp32 model under autocast: the fused head steps aside (it would skip autocast's casts) and
    the chunked head path gives what the full-logits computation gives under the same autocast."""
    model = peaked_model(tokenizer, device, torch.float32)
    ids, mask = batch(tokenizer, device)
    k = 12
    weights = torch.randn(ids.shape[0], k, generator=torch.Generator().manual_seed(2)).to(device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        assert not fused_head_applies(model.lm_head, torch.zeros(1, 64, device=device))
        got, got_grads = logp_and_grads(
            model, lambda m, i, a, n: sequence_logprobs(m, i, a, n, chunk_size=16)[0], ids, mask, k, weights
        )
        want, want_grads = logp_and_grads(model, naive_logprobs, ids, mask, k, weights)
    fp32, _ = logp_and_grads(model, naive_logprobs, ids, mask, k, weights)
    assert (got - fp32).abs().max() > 1e-4, "autocast should have computed in bf16"
    torch.testing.assert_close(got, want, rtol=0, atol=2e-2)
    assert_grads_close(got_grads, want_grads, 5e-2)


def assert_greedy_equal(fast, slow, scores, tie_tolerance):
    """Tokens equal, except that a row may part from generate's at a near-tie of generate's own
    logits (``scores[t]: [N, V]`` at step t): then its first differing token scores within the tolerance."""
    diverged = 0
    for row in range(slow.completion_ids.shape[0]):
        a, b = fast.completion_ids[row], slow.completion_ids[row]
        width = min(len(a), len(b))
        differ = (a[:width] != b[:width]).nonzero()
        if len(differ) == 0:
            assert len(a) == len(b) or (a[width:] == 0).all() or (b[width:] == 0).all()
            continue
        t = int(differ[0])
        step = scores[t][row].float()
        gap = float(step[b[t]] - step[a[t]])
        assert gap <= tie_tolerance, f"row {row} parts from generate at step {t}: logit gap {gap:.4f}"
        diverged += 1
    assert diverged <= slow.completion_ids.shape[0] // 4, f"{diverged} rows part from generate"


def generate_with_scores(model, ids, mask, generations, max_new):
    """generate's greedy tokens and its logits at each step (to judge near-ties)."""
    rows, rows_mask = ids.repeat_interleave(generations, 0), mask.repeat_interleave(generations, 0)
    out = model.generate(
        input_ids=rows, attention_mask=rows_mask, do_sample=False, max_new_tokens=max_new,
        min_new_tokens=max_new, eos_token_id=[1], pad_token_id=0, output_logits=True,
        return_dict_in_generate=True,
    )  # fmt: skip
    return out.logits


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize(
    ("device", "decoder"),
    [("cpu", "lean"), ("cpu", "static"), ("cpu", "cache"), pytest.param("cuda", "graph", marks=pytest.mark.gpu),
     pytest.param("cuda", "lean", marks=pytest.mark.gpu), pytest.param("cuda", "cache", marks=pytest.mark.gpu)],
)  # fmt: skip
def test_fast_engine_greedy_output_equals_generate(tokenizer, device, decoder, dtype):
    model = peaked_model(tokenizer, device, DTYPES[dtype])
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    ids, mask = enc.input_ids.to(device), enc.attention_mask.to(device)
    max_new = 32
    greedy = SamplingConfig(
        max_completion_length=max_new, do_sample=False, generation_kwargs={"min_new_tokens": max_new}
    )
    request = RolloutRequest(
        ids, mask, num_generations=2, sampling=greedy, eos_token_ids=[1], pad_token_id=0, seed=0
    )
    engine = FastRolloutEngine(decoder, span_block=16)
    slow = HFGenerateEngine().generate(model, request)
    fast = engine.generate(model, request)
    model.eval()
    scores = generate_with_scores(model, ids, mask, 2, max_new)
    model.train()
    assert_greedy_equal(fast, slow, scores, 1e-4 if dtype == "fp32" else 0.1)
    if decoder == "graph":
        assert engine._static.graphs and engine._static.captures > 0  # really replayed graphs
        captures = engine._static.captures
        again = engine.generate(model, request)  # replays only: the same kernels, same inputs
        assert engine._static.captures == captures
        torch.testing.assert_close(again.completion_ids, fast.completion_ids, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("device", [CUDA])
def test_each_graph_replay_gives_the_eager_steps_logits(tokenizer, device, dtype):
    """Step by step, a replayed graph's logits against the same step run eagerly on the same state."""
    from grpo_lightning.rollout.engines.graphed import StaticStepDecoder, round_up

    model = peaked_model(tokenizer, device, DTYPES[dtype]).eval()
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    decoder = StaticStepDecoder(model, graphs=True, span_block=16)
    with torch.no_grad():
        logits = decoder.prefill(enc.input_ids.to(device), enc.attention_mask.to(device), 2, 40)
        for _ in range(39):
            logits = decoder.step(logits.argmax(-1)).clone()
            # The step's inputs are still in place (token, column); the eager step rewrites the same column.
            eager = decoder._static_step(min(decoder.total, round_up(decoder.column, 16)))
            if dtype == "fp32":
                torch.testing.assert_close(logits, eager, rtol=1e-5, atol=1e-5)
            else:  # bf16 logits of magnitude ~10 are spaced 0.06 apart
                torch.testing.assert_close(logits.float(), eager.float(), rtol=0.02, atol=0.1)
    assert decoder.captures == len({round_up(c + 1, 16) for c in range(decoder.width, decoder.column)})


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.slow), CUDA])
def test_bf16_grpo_steps_learn_a_toy_reward(tokenizer, device):
    """bf16 weights (Trainer precision 'bf16-true'), the default engine (CUDA graphs on a GPU): 30 rollouts
    raise the share of "7" in the completions from chance (about 1 in 98) far above it."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from grpo_lightning.module import GRPOModule

    rewards: list[float] = []

    class Trace(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            rewards.append(float(trainer.callback_metrics["train/reward"]))

    def share_of_sevens(prompts, completions, **columns):
        return [c.count("7") / max(len(c), 1) for c in completions]

    torch.manual_seed(0)
    model = build_tiny_model(
        tokenizer, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64
    )
    module = GRPOModule(
        model, tokenizer=tokenizer, reward_funcs=[share_of_sevens], num_generations=8,
        max_completion_length=8, learning_rate=1e-2, warmup_steps=0, seed=0,
    )  # fmt: skip
    prompts = ["1+1=", "2+3=", "7-4=", "9+9=", "5-2=", "8+1=", "6+6=", "3-3="] * 4
    loader = DataLoader(prompts, batch_size=4, collate_fn=lambda rows: {"prompt": list(rows)})
    trainer = pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision="bf16-true", max_steps=30,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Trace()],
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    assert next(module.policy.parameters()).dtype == torch.bfloat16
    if device == "cuda":
        assert module.rollout_engine._static is not None and module.rollout_engine._static.graphs
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert first < 5 / 98 and last > 0.3 and last > 10 * first, (first, last)
