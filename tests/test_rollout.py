"""Rollout: completion masks, EOS handling, truncation, padding and seeding."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    one_thread,  # noqa: F401 (autouse fixture)
    prompt_batch,
    tiny_model,
    tiny_tokenizer,
)

from grpo_lightning.rollout.engine import (
    HFGenerateEngine,
    Rollout,
    RolloutEngine,
    RolloutRequest,
    SamplingConfig,
    completion_masks,
    concat_rollouts,
    left_align,
)
from grpo_lightning.rollout.seeds import SeedStream, stream_seed

EOS, EOS2, PAD = 1, 9, 0


def test_mask_ends_at_first_eos_of_any_id_and_includes_it():
    ids = torch.tensor(
        [
            [5, 6, EOS, 7, 8],  # EOS at 2 -> 3 tokens
            [5, EOS2, 6, EOS, 0],  # the second EOS id counts too, and the first one wins -> 2 tokens
            [EOS, 0, 0, 0, 0],  # empty completion: just the EOS
            [5, 6, 7, 8, 9 + 1],  # no EOS in 5 = max tokens: truncated
        ]
    )
    mask, truncated, lengths = completion_masks(ids, [EOS, EOS2], max_completion_length=5)
    torch.testing.assert_close(
        mask,
        torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]),
    )
    assert truncated.tolist() == [False, False, False, True]
    assert lengths.tolist() == [3, 2, 1, 5]


def test_only_the_listed_eos_ids_end_a_completion():
    ids = torch.tensor([[5, EOS2, 6, EOS]])
    mask, _, lengths = completion_masks(ids, [EOS], max_completion_length=4)
    assert lengths.tolist() == [4] and mask.sum() == 4  # EOS2 is an ordinary token here


def test_mask_truncated_completions_zeroes_truncated_rows_only():
    ids = torch.tensor([[5, 6, 7], [5, EOS, 0]])
    mask, truncated, lengths = completion_masks(ids, [EOS], max_completion_length=3, mask_truncated=True)
    assert mask.tolist() == [[0, 0, 0], [1, 1, 0]]
    assert truncated.tolist() == [True, False]
    assert lengths.tolist() == [3, 2]  # lengths are kept: the attention still needs the tokens


def test_rows_shorter_than_the_limit_without_eos_are_not_truncated():
    # generate() can stop early on a stop string: no EOS, but the limit was not reached.
    _, truncated, _ = completion_masks(torch.tensor([[5, 6]]), [EOS], max_completion_length=8)
    assert truncated.tolist() == [False]


def test_left_align_moves_right_padding_to_the_left_and_trims():
    ids = torch.tensor([[5, 6, 7, PAD], [PAD, PAD, 8, 9], [4, PAD, PAD, PAD]])
    mask = (ids != PAD).long()
    out_ids, out_mask = left_align(ids, mask, PAD)
    assert out_ids.tolist() == [[5, 6, 7], [PAD, 8, 9], [PAD, PAD, 4]]
    assert out_mask.tolist() == [[1, 1, 1], [0, 1, 1], [0, 0, 1]]


def test_rollout_attention_mask_covers_prompt_and_completion_up_to_eos():
    r = Rollout(
        prompt_ids=torch.tensor([[PAD, 5]]),
        prompt_mask=torch.tensor([[0, 1]]),
        completion_ids=torch.tensor([[6, EOS, PAD]]),
        completion_mask=torch.tensor([[0, 0, 0]]),  # masked (e.g. truncated) rows still attend
        truncated=torch.tensor([False]),
        lengths=torch.tensor([2]),
    )
    assert r.attention_mask.tolist() == [[0, 1, 1, 1, 0]]
    assert r.input_ids.tolist() == [[PAD, 5, 6, EOS, PAD]]


def test_concat_rollouts_pads_prompts_left_and_completions_right():
    a = Rollout(
        torch.tensor([[5]]),
        torch.tensor([[1]]),
        torch.tensor([[6, 7, 8]]),
        torch.ones(1, 3).long(),
        torch.tensor([True]),
        torch.tensor([3]),
    )
    b = Rollout(
        torch.tensor([[5, 6]]),
        torch.tensor([[1, 1]]),
        torch.tensor([[EOS]]),
        torch.ones(1, 1).long(),
        torch.tensor([False]),
        torch.tensor([1]),
    )
    c = concat_rollouts([a, b], PAD)
    assert c.prompt_ids.tolist() == [[PAD, 5], [5, 6]] and c.prompt_mask.tolist() == [[0, 1], [1, 1]]
    assert c.completion_ids.tolist() == [[6, 7, 8], [EOS, PAD, PAD]]
    assert c.completion_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert c.sampling_logp is None  # neither part has sampling log-probs

    a.sampling_logp, b.sampling_logp = torch.tensor([[-0.5, -1.0, -1.5]]), torch.tensor([[-2.0]])
    c = concat_rollouts([a, b], PAD)
    assert c.sampling_logp.tolist() == [[-0.5, -1.0, -1.5], [-2.0, 0.0, 0.0]]  # padded with 0, like the mask
    assert c.select(torch.tensor([1])).sampling_logp.tolist() == [[-2.0, 0.0, 0.0]]
    b.sampling_logp = None
    assert concat_rollouts([a, b], PAD).sampling_logp is None  # never a partial tensor


def test_generation_config_is_complete_and_ignores_the_models_sampling_defaults():
    config = SamplingConfig(max_completion_length=7, temperature=0.7, top_k=0).generation_config(
        [EOS, EOS2], PAD
    )
    assert config.max_new_tokens == 7 and config.do_sample and config.temperature == 0.7
    assert config.top_k == 0  # explicit: transformers would otherwise apply top_k=50
    assert list(config.eos_token_id) == [EOS, EOS2] and config.pad_token_id == PAD
    greedy = SamplingConfig(generation_kwargs={"no_repeat_ngram_size": 2}, do_sample=False).generation_config(
        [EOS], 0
    )
    assert not greedy.do_sample and greedy.no_repeat_ngram_size == 2


def _generate(model, tok, seed, eos=(EOS,), **sampling):
    batch = prompt_batch(tok, ["1+1=", "12+30="])
    request = RolloutRequest(
        batch["input_ids"],
        batch["attention_mask"],
        num_generations=3,
        sampling=SamplingConfig(**{"max_completion_length": 6, **sampling}),
        eos_token_ids=list(eos),
        pad_token_id=tok.pad_token_id,
        seed=seed,
    )
    return HFGenerateEngine().generate(model, request)


def test_hf_engine_shapes_order_and_masks():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    r = _generate(model, tok, seed=1)
    assert isinstance(HFGenerateEngine(), RolloutEngine)
    assert r.completion_ids.shape[0] == 6 and r.completion_ids.shape[1] <= 6
    # repeat_interleave order: rows 0-2 are prompt 0, rows 3-5 prompt 1; prompts stay left-padded.
    assert torch.equal(r.prompt_ids[0], r.prompt_ids[2]) and torch.equal(r.prompt_ids[3], r.prompt_ids[5])
    assert r.prompt_mask[0, 0] == 0 and r.prompt_mask[3].all()
    for row, n, m in zip(r.completion_ids, r.lengths, r.completion_mask, strict=True):
        assert int(m.sum()) == int(n)
        assert EOS not in row[: n - 1].tolist()  # nothing ends before the mask does


def test_hf_engine_stops_on_every_eos_id_of_the_generation_config():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    extra = tok.convert_tokens_to_ids("7")
    # Make "7" very likely so that some completions hit it; it is declared an EOS id.
    with torch.no_grad():
        model.get_output_embeddings().weight[extra] *= 40
    r = _generate(model, tok, seed=0, eos=(EOS, extra), max_completion_length=12)
    ended = r.lengths < r.completion_ids.shape[1]
    assert ended.any()
    for row, n in zip(r.completion_ids, r.lengths, strict=True):
        assert row[n - 1] in (EOS, extra) or n == r.completion_ids.shape[1]
        assert extra not in row[: n - 1].tolist() and EOS not in row[: n - 1].tolist()
        assert set(row[n:].tolist()) <= {tok.pad_token_id}  # generate pads finished rows


def test_hf_engine_is_seeded_and_restores_the_global_rng():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    state = torch.random.get_rng_state()
    a, b, c = (_generate(model, tok, seed=s) for s in (5, 5, 6))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_seeds_differ_per_rank_step_and_round():
    rollout = SeedStream.ROLLOUT
    seeds = {
        stream_seed(0, rank, step, rollout, r) for rank in range(4) for step in range(50) for r in range(3)
    }
    assert len(seeds) == 4 * 50 * 3
    assert stream_seed(1, 0, 0, rollout) != stream_seed(0, 0, 0, rollout)


def test_rollout_request_is_checked_when_built():
    ids, mask = torch.tensor([[0, 5, 6]]), torch.tensor([[0, 1, 1]])
    common = {"sampling": SamplingConfig(), "pad_token_id": PAD, "seed": 0}
    request = RolloutRequest(ids, mask, num_generations=2, eos_token_ids=[EOS, EOS2], **common)
    assert request.eos_token_ids == (EOS, EOS2)  # kept as a tuple: the request is frozen
    with pytest.raises(ValueError, match=r"must both be \[P, L\]"):
        RolloutRequest(ids[0], mask[0], num_generations=2, eos_token_ids=[EOS], **common)
    with pytest.raises(ValueError, match=r"must both be \[P, L\]"):
        RolloutRequest(ids, mask[:, 1:], num_generations=2, eos_token_ids=[EOS], **common)
    with pytest.raises(ValueError, match="num_generations=0"):
        RolloutRequest(ids, mask, num_generations=0, eos_token_ids=[EOS], **common)
    with pytest.raises(ValueError, match="eos_token_ids is empty"):
        RolloutRequest(ids, mask, num_generations=2, eos_token_ids=[], **common)
