"""The fast rollout engine against transformers' ``generate`` (HFGenerateEngine): same tokens, masks and distribution."""

from __future__ import annotations

import os
import time

import pytest
import torch
from helpers import free_port
from scipy.stats import chi2_contingency, chisquare
from transformers import AutoConfig, AutoModelForCausalLM

from grpo_lightning.algorithm.losses import grpo_loss
from grpo_lightning.hf.tiny import build_char_tokenizer, build_tiny_model
from grpo_lightning.logprobs import sequence_logprobs
from grpo_lightning.rollout.engine import (
    HFGenerateEngine,
    Rollout,
    RolloutEngine,
    RolloutRequest,
    SamplingConfig,
)
from grpo_lightning.rollout.engines import FastRolloutEngine, resolve_engine
from grpo_lightning.rollout.engines.decoders import lean_unsupported_reason
from grpo_lightning.rollout.engines.sampling import sample_categorical

PROMPTS = ["What is 12 + 7 - 3?", "What is 5 + 9?", "Compute 18 - 4 + 11 + 2, please.", "3 + 3 ="]


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)  # left-padded, four lengths
    return enc.input_ids, enc.attention_mask


def qwen3_model(tokenizer):
    """A tiny Qwen3 (per-head q/k norms): built from a config, as tiny.py does for the others."""
    config = AutoConfig.for_model(
        "qwen3", vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, intermediate_size=128, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def run(engine, model, prompts, sampling, eos=(1,), generations=3, seed=0, **kwargs):
    ids, mask = prompts
    request = RolloutRequest(
        ids, mask, num_generations=generations, sampling=sampling, eos_token_ids=list(eos),
        pad_token_id=0, seed=seed, **kwargs,
    )  # fmt: skip
    return engine.generate(model, request)


def frequent_mid_token(completion_ids: torch.Tensor) -> int:
    """A token that occurs around the middle of some greedy completions: as EOS, rows end at different steps."""
    middle = completion_ids[:, 3:10].flatten()
    return int(middle.bincount().argmax())


def test_engine_satisfies_the_protocol():
    assert isinstance(FastRolloutEngine(), RolloutEngine)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3", "gpt2"])
@pytest.mark.parametrize("decoder", ["auto", "cache"])
def test_greedy_tokens_masks_and_eos_equal_generate(tokenizer, prompts, arch, decoder):
    model = qwen3_model(tokenizer) if arch == "qwen3" else build_tiny_model(tokenizer, arch=arch)
    greedy = SamplingConfig(max_completion_length=24, do_sample=False)
    # A mid-sequence EOS id makes rows end at different steps and some never: exercises masks and padding.
    eos = (1, frequent_mid_token(run(HFGenerateEngine(), model, prompts, greedy).completion_ids))
    for mask_truncated in (False, True):
        slow = run(HFGenerateEngine(), model, prompts, greedy, eos=eos, mask_truncated=mask_truncated)
        fast = run(FastRolloutEngine(decoder), model, prompts, greedy, eos=eos, mask_truncated=mask_truncated)
        assert isinstance(fast, Rollout) and fast.sampling_logp is not None  # with the sampling log-probs
        assert fast.lengths.min() < 24 and fast.truncated.any(), "the EOS choice should end some rows early"
        for name in (
            "prompt_ids",
            "prompt_mask",
            "completion_ids",
            "completion_mask",
            "truncated",
            "lengths",
        ):
            torch.testing.assert_close(getattr(fast, name), getattr(slow, name), rtol=0, atol=0, msg=name)
        torch.testing.assert_close(fast.attention_mask, slow.attention_mask, rtol=0, atol=0)


def test_lean_decoder_is_used_for_llama_family_and_refused_for_gpt2(tokenizer, prompts):
    assert lean_unsupported_reason(build_tiny_model(tokenizer, arch="qwen2"), 64) is None
    gpt2 = build_tiny_model(tokenizer, arch="gpt2")
    assert "gpt2" in lean_unsupported_reason(gpt2, 64)
    with pytest.raises(ValueError, match="decoder='lean' cannot run this model: model_type 'gpt2'"):
        run(FastRolloutEngine("lean"), gpt2, prompts, SamplingConfig(max_completion_length=4))


def test_lora_adapter_is_applied_while_decoding(tokenizer, prompts):
    peft = pytest.importorskip("peft")
    model = build_tiny_model(tokenizer, arch="qwen2")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "gate_proj"]))
    with torch.no_grad():  # a non-zero adapter, so ignoring it would change the tokens
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    greedy = SamplingConfig(max_completion_length=16, do_sample=False)
    slow = run(HFGenerateEngine(), lora, prompts, greedy)
    fast = run(FastRolloutEngine("lean"), lora, prompts, greedy)
    with lora.disable_adapter():
        without = run(FastRolloutEngine("lean"), lora, prompts, greedy)
    torch.testing.assert_close(fast.completion_ids, slow.completion_ids, rtol=0, atol=0)
    assert not torch.equal(without.completion_ids, fast.completion_ids), (
        "the adapter should change the tokens"
    )
    assert lora.training  # eval mode was only for the rollout


SAMPLINGS = {
    "plain": SamplingConfig(max_completion_length=3, temperature=0.5),
    "top_k_top_p": SamplingConfig(max_completion_length=3, temperature=0.7, top_k=12, top_p=0.9),
    "min_p": SamplingConfig(max_completion_length=3, temperature=1.0, min_p=0.02),
}


def homogeneity_p_values(a: torch.Tensor, b: torch.Tensor, vocab: int) -> list[float]:
    """Chi-square homogeneity p-value of the token frequencies of ``a`` and ``b: [n, T]``, per position.

    Tokens seen fewer than 10 times in both samples together are pooled into one cell, so every
    cell's expected count is large enough for the chi-square approximation.
    """
    p_values = []
    for position in range(a.shape[1]):
        counts = torch.stack(
            [a[:, position].bincount(minlength=vocab), b[:, position].bincount(minlength=vocab)]
        )
        common = counts.sum(0) >= 10
        table = torch.cat([counts[:, common], counts[:, ~common].sum(1, keepdim=True)], dim=1)
        table = table[:, table.sum(0) > 0]
        assert table.shape[1] >= 5, "the test needs a spread-out distribution to have any power"
        p_values.append(float(chi2_contingency(table.numpy()).pvalue))
    return p_values


@pytest.fixture(scope="module")
def peaked_model(tokenizer):
    """A tiny model whose next-token distributions are far from uniform (a random one's are nearly flat)."""
    model = build_tiny_model(tokenizer, arch="qwen2", seed=1)
    with torch.no_grad():
        model.model.norm.weight.mul_(3.0)  # logits x3: dozens of likely tokens instead of a flat 100
    return model


def sample_many(engine, model, tokenizer, sampling, seed):
    prompt = tokenizer(["What is 2 + 2?"], return_tensors="pt")
    return run(
        engine, model, (prompt.input_ids, prompt.attention_mask), sampling, generations=1200, seed=seed
    )


@pytest.mark.parametrize("name", sorted(SAMPLINGS))
def test_sampled_token_frequencies_match_generate(tokenizer, peaked_model, name):
    """1200 samples of each engine (fixed seeds), 3 positions, chi-square homogeneity test at alpha = 1e-3."""
    slow = sample_many(HFGenerateEngine(), peaked_model, tokenizer, SAMPLINGS[name], seed=11).completion_ids
    fast = sample_many(FastRolloutEngine(), peaked_model, tokenizer, SAMPLINGS[name], seed=12).completion_ids
    assert fast.shape == slow.shape
    p_values = homogeneity_p_values(slow, fast, len(tokenizer))
    assert min(p_values) > 1e-3, f"frequencies differ from generate's: p = {p_values}"


def test_the_frequency_test_detects_a_small_change_of_distribution(tokenizer, peaked_model):
    """The test above has power: temperature 0.5 against 0.6 is rejected."""
    sampling = SAMPLINGS["plain"]
    slow = sample_many(HFGenerateEngine(), peaked_model, tokenizer, sampling, seed=11).completion_ids
    hotter = SamplingConfig(max_completion_length=3, temperature=0.6)
    fast = sample_many(FastRolloutEngine(), peaked_model, tokenizer, hotter, seed=12).completion_ids
    assert min(homogeneity_p_values(slow, fast, len(tokenizer))) < 1e-3


def test_top_k_never_samples_outside_the_top_k(tokenizer, prompts):
    model = build_tiny_model(tokenizer, arch="qwen2")
    sampling = SamplingConfig(max_completion_length=1, top_k=3)
    out = run(FastRolloutEngine(), model, prompts, sampling, generations=50)
    with torch.no_grad():
        logits = model(input_ids=prompts[0], attention_mask=prompts[1]).logits[:, -1]
    allowed = logits.topk(3, dim=-1).indices.repeat_interleave(50, dim=0)
    assert (out.completion_ids[:, :1] == allowed).any(dim=1).all()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logp_equals_a_recomputed_forward(tokenizer, prompts, temperature):
    """The sampling log-probs are unfiltered log_softmax(logits / T): what the loss recomputes as old_logp."""
    model = build_tiny_model(tokenizer, arch="qwen2")
    sampling = SamplingConfig(max_completion_length=20, temperature=temperature, top_k=20, top_p=0.95)
    out = run(FastRolloutEngine(), model, prompts, sampling, eos=(1, 40))
    with torch.no_grad():
        logp, _ = sequence_logprobs(
            model, out.input_ids, out.attention_mask, out.completion_ids.shape[1], temperature=temperature
        )
    torch.testing.assert_close(out.sampling_logp, logp * out.completion_mask, rtol=0, atol=2e-5)
    assert (out.sampling_logp[out.completion_mask == 0] == 0).all()


def test_loss_and_gradients_with_sampling_logp_match_the_recomputed_old_logp(tokenizer, prompts):
    """Using the rollout's log-probs as old_logp gives the loss and gradients of a separate old-policy pass."""
    model = build_tiny_model(tokenizer, arch="qwen2")
    out = run(FastRolloutEngine(), model, prompts, SamplingConfig(max_completion_length=16), generations=4)
    k = out.completion_ids.shape[1]
    advantages = torch.linspace(-1.0, 1.0, len(out))

    def loss_and_grads(old_logp):
        model.zero_grad()
        logp, _ = sequence_logprobs(model, out.input_ids, out.attention_mask, k)
        # A shifted policy: ratios away from 1 so the clipping branches are exercised.
        loss, _ = grpo_loss(logp + 0.1 * advantages[:, None], old_logp, None, advantages, out.completion_mask)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    with torch.no_grad():
        recomputed, _ = sequence_logprobs(model, out.input_ids, out.attention_mask, k)
    slow_loss, slow_grads = loss_and_grads(recomputed)
    fast_loss, fast_grads = loss_and_grads(out.sampling_logp)
    torch.testing.assert_close(fast_loss, slow_loss, rtol=1e-5, atol=1e-6)
    for fast_g, slow_g in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(fast_g, slow_g, rtol=1e-4, atol=1e-6)


def test_forced_length_and_seeded_reproducibility(tokenizer, prompts):
    model = build_tiny_model(tokenizer, arch="qwen2")
    sampling = SamplingConfig(max_completion_length=12, generation_kwargs={"min_new_tokens": 12})
    first = run(FastRolloutEngine(), model, prompts, sampling, eos=tuple(range(1, 40)), seed=5)
    again = run(FastRolloutEngine(), model, prompts, sampling, eos=tuple(range(1, 40)), seed=5)
    assert first.completion_ids.shape == (12, 12) and bool(first.completion_mask.all())
    assert not torch.isin(first.completion_ids[:, :11], torch.arange(1, 40)).any(), "EOS blocked before 12"
    torch.testing.assert_close(first.completion_ids, again.completion_ids, rtol=0, atol=0)


def test_settings_only_generate_implements_get_a_clear_error(tokenizer, prompts):
    model = build_tiny_model(tokenizer, arch="qwen2")
    for sampling, name in [
        (SamplingConfig(max_completion_length=4, repetition_penalty=1.2), "repetition_penalty"),
        (SamplingConfig(max_completion_length=4, generation_kwargs={"no_repeat_ngram_size": 2}), "no_repeat"),
    ]:
        with pytest.raises(ValueError, match=rf"does not implement .*{name}.*rollout_engine='hf'"):
            run(FastRolloutEngine(), model, prompts, sampling)
    with pytest.raises(ValueError, match="decoder"):
        FastRolloutEngine(decoder="vllm")  # type: ignore[arg-type]


@pytest.mark.parametrize("block", [8, 1024])
def test_sample_categorical_draws_from_the_given_probabilities(block):
    """Goodness of fit against exact probabilities (chi-square, alpha = 1e-3), unnormalised rows, zeros never drawn."""
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(50, generator=gen, dtype=torch.float64), dim=-1)
    probs[[3, 17, 49]] = 0.0  # zero-probability tokens, one of them last in the row
    rows = (probs * 7.5).float().repeat(60_000, 1)  # scale: the sampler must not assume normalised rows
    torch.manual_seed(1)
    draws = sample_categorical(rows, block=block)
    counts = draws.bincount(minlength=50).double()
    assert counts[[3, 17, 49]].sum() == 0
    seen = probs > 0
    expected = probs[seen] / probs[seen].sum() * counts.sum()
    assert chisquare(counts[seen].numpy(), expected.numpy()).pvalue > 1e-3


@pytest.mark.parametrize("vocab", [50, 2000])  # one block (one cumulative sum), and two levels
def test_sample_categorical_keeps_ids_valid_on_rows_of_nan_or_inf(vocab):
    probs = torch.rand(3, vocab)
    probs[1], probs[2] = float("nan"), float("inf")
    ids = sample_categorical(probs)
    assert ids.min() >= 0 and ids.max() < vocab


def _fsdp2_worker(rank: int, world: int, port: int, out: str, eos: list[int]) -> None:
    """One rank: shard a tiny Qwen2 per layer (FSDP2, gloo) and decode its own prompt greedily."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        torch.set_num_threads(1)
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(tokenizer, arch="qwen2")
        mesh = init_device_mesh("cpu", (world,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        enc = tokenizer([PROMPTS[2 + rank]], return_tensors="pt")
        greedy = SamplingConfig(max_completion_length=24, do_sample=False)
        rollout = run(
            FastRolloutEngine(), model, (enc.input_ids, enc.attention_mask), greedy, eos=eos, generations=2
        )
        torch.save(rollout.completion_ids, f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_sharded_ranks_that_end_at_different_steps_stay_in_step(tokenizer, tmp_path):
    """FSDP2 gathers weights with collectives in every forward: a rank whose rows all ended must keep
    stepping until every rank is done (else a hang), and its tokens must still equal generate's."""
    model = build_tiny_model(tokenizer, arch="qwen2")
    greedy = SamplingConfig(max_completion_length=24, do_sample=False)

    def reference(i, eos):
        enc = tokenizer([PROMPTS[2 + i]], return_tensors="pt")
        return run(
            HFGenerateEngine(), model, (enc.input_ids, enc.attention_mask), greedy, eos=eos, generations=2
        )

    early, late = reference(0, (1,)).completion_ids[0], reference(1, (1,)).completion_ids[0]
    stop = next(int(t) for t in early if t not in late)  # ends rank 0's rows early, never rank 1's
    eos = [1, stop]
    port = free_port()
    ctx = torch.multiprocessing.start_processes(
        _fsdp2_worker, args=(2, port, str(tmp_path / "ids"), eos), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the sharded ranks hung: decoding steps were not kept in step")
    for rank in range(2):
        got = torch.load(tmp_path / f"ids.{rank}")
        want = reference(rank, eos).completion_ids
        assert got.shape[1] == 24, "every rank runs the same number of steps"
        torch.testing.assert_close(got[:, : want.shape[1]], want, rtol=0, atol=0)
        assert (got[:, want.shape[1] :] == 0).all()
    assert reference(0, eos).completion_ids.shape[1] < 24  # rank 0 really ended early


def test_in_a_grpo_module_validation_equals_generate_and_training_runs():
    """Wired into GRPOModule: greedy validation gives generate's metrics exactly; a fit updates the weights."""
    from helpers import PromptsDataModule, make_module, make_trainer, tiny_tokenizer, weights

    tok = tiny_tokenizer()
    metrics = {}
    for name, engine in (("hf", HFGenerateEngine()), ("fast", FastRolloutEngine())):
        module = make_module(tok, rollout_engine=engine, val_num_samples=2)
        trainer = make_trainer(limit_val_batches=2)
        metrics[name] = trainer.validate(module, datamodule=PromptsDataModule(tok), verbose=False)[0]
    assert metrics["fast"].keys() == metrics["hf"].keys() and "val/accuracy" in metrics["fast"]
    for key in ("val/accuracy", "val/reward", "val/completions/mean_length"):
        assert metrics["fast"][key] == pytest.approx(metrics["hf"][key], abs=1e-6), key

    module = make_module(tok, rollout_engine=FastRolloutEngine(), num_iterations=2, beta=0.04)
    before = weights(module)
    trainer = make_trainer(max_steps=4)
    trainer.fit(module, datamodule=PromptsDataModule(tok))
    assert trainer.global_step == 4
    assert torch.isfinite(torch.tensor(float(trainer.logged_metrics["train/loss"])))
    assert any(not torch.equal(v, before[k]) for k, v in weights(module).items())


def test_engines_resolve_by_name():
    assert isinstance(resolve_engine("fast"), FastRolloutEngine)
    assert isinstance(resolve_engine("hf"), HFGenerateEngine) and isinstance(
        resolve_engine(None), HFGenerateEngine
    )
    # "auto": the fast engine unless a sampling setting needs generate.
    assert isinstance(resolve_engine("auto", SamplingConfig(top_k=5, min_p=0.1)), FastRolloutEngine)
    assert isinstance(resolve_engine("auto", SamplingConfig(repetition_penalty=1.2)), HFGenerateEngine)
    assert isinstance(
        resolve_engine("auto", SamplingConfig(generation_kwargs={"no_repeat_ngram_size": 2})), HFGenerateEngine
    )
    mine = FastRolloutEngine(decoder="cache")
    assert resolve_engine(mine) is mine
    with pytest.raises(ValueError, match="rollout_engine"):
        resolve_engine("vllm")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no generate"):
        resolve_engine(object())  # type: ignore[arg-type]


def test_fast_update_path_equals_the_slow_one(monkeypatch):
    """pi_old from the sampling pass and shared-prompt log-prob passes give the loss, metrics and weights
    of the slow path (pi_old recomputed, every row's prompt computed again) to float32 precision."""
    from helpers import PromptsDataModule, make_module, make_trainer, tiny_tokenizer, weights

    import grpo_lightning.algorithm.update as update

    tok = tiny_tokenizer()
    results = {}
    for name, fast in (("fast", True), ("slow", False)):
        with monkeypatch.context() as patch:
            if not fast:
                patch.setattr(update, "shared_prefix_logprobs", sequence_logprobs)
            module = make_module(
                tok,
                num_iterations=2,
                beta=0.04,
                reuse_sampling_logprobs=fast,
                # Plain SGD: the weights move by exactly lr * gradient, so they compare the gradients.
                optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
                max_grad_norm=None,
            )
            start = weights(module)
            trainer = make_trainer(max_steps=2)  # one rollout, two optimizer steps (the second uses pi_old)
            trainer.fit(module, datamodule=PromptsDataModule(tok))
            results[name] = (weights(module), dict(trainer.logged_metrics))
    (fast_w, fast_m), (slow_w, slow_m) = results["fast"], results["slow"]
    for key in ("train/loss", "train/kl", "train/entropy", "train/clip_ratio/region_mean", "train/grad_norm"):
        assert float(fast_m[key]) == pytest.approx(float(slow_m[key]), rel=1e-4, abs=1e-6), key
    moved = max(float((fast_w[k] - start[k]).abs().max()) for k in fast_w)
    assert moved > 1e-3  # a real update, far larger than the tolerance below
    for k in fast_w:
        torch.testing.assert_close(fast_w[k], slow_w[k], rtol=1e-4, atol=1e-6)
