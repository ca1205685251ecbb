"""Dynamic sampling: flat groups are replaced by groups of prompts drawn from the training set."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from helpers import (
    PromptsDataModule,
    make_module,
    make_trainer,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_model,
    tiny_sampler,
    tiny_tokenizer,
)
from lightning.pytorch import Callback
from torch.utils.data import DataLoader, IterableDataset

from grpo_lightning.module import GRPOModule
from grpo_lightning.rewards.scorer import RewardScorer
from grpo_lightning.rollout.dynamic_sampling import DynamicSampling, PromptRefill, informative_rows
from grpo_lightning.rollout.sampler import Sampler
from grpo_lightning.rollout.seeds import SeedStream, stream_seed
from grpo_lightning.rollout.source import SyncRolloutSource

# Each batch of 2 holds one flat prompt ("F": constant reward) and one informative one ("L").
PROMPTS = ["F0=", "L0=", "F1=", "L1=", "F2=", "L2=", "F3=", "L3="]


def code_sum_unless_flat(prompts, completions, **kw):
    """Constant for prompts starting with "F" (no signal), varying for the others."""
    return [
        0.0 if p.startswith("F") else float(sum(map(ord, c)))
        for p, c in zip(prompts, completions, strict=True)
    ]


def test_informative_rows_keep_groups_with_spread_first_in_sampling_order():
    nan = float("nan")
    # G = 2; groups: 0 flat, 1 spread, 2 flat, 3 spread, 4 one valid reward (flat), 5 none valid (flat)
    total = torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0, 3.0, 4.0, 5.0, nan, nan, nan])
    assert informative_rows(total, 2, 3).tolist() == [2, 3, 6, 7, 0, 1]
    assert informative_rows(total, 2, 2).tolist() == [2, 3, 6, 7]
    # Not enough groups with a spread: the flat ones fill up, in order.
    assert informative_rows(total, 2, 5).tolist() == [2, 3, 6, 7, 0, 1, 4, 5, 8, 9]


def test_refill_draws_distinct_rows_fixed_by_the_seed():
    seen = []
    refill = PromptRefill(
        list(range(10)), lambda rows: {"rows": rows}, to_device=lambda b: seen.append(b) or b
    )
    first = refill.draw(4, seed=3)["rows"]
    assert len(first) == 4 and len(set(first)) == 4 and set(first) <= set(range(10))
    assert refill.draw(4, seed=3)["rows"] == first  # a resumed run draws the same prompts
    assert refill.draw(4, seed=4)["rows"] != first
    assert sorted(refill.draw(20, seed=0)["rows"]) == list(range(10))  # a small set: all of it
    assert len(seen) == 4  # every drawn batch went through to_device


class Stream(IterableDataset):
    def __iter__(self):
        yield from PROMPTS


def test_refill_needs_a_map_style_dataset_and_a_data_loader():
    with pytest.raises(ValueError, match=r"needs a map-style dataset .* the training data is a Stream"):
        PromptRefill.from_loader(DataLoader(Stream(), batch_size=2))
    with pytest.raises(ValueError, match="Give one torch DataLoader"):
        PromptRefill.from_loader({"a": DataLoader(PROMPTS)})
    with pytest.raises(ValueError, match="the training set is empty"):
        PromptRefill([], list)


def make_sampler() -> Sampler:
    return tiny_sampler(RewardScorer([code_sum_unless_flat]), num_generations=3)


def test_refill_rounds_run_until_enough_groups_have_a_spread():
    sampler = make_sampler()
    refill = PromptRefill(PROMPTS, PromptsDataModule(sampler.tokenizer)._collate)
    batch = refill.collate_fn(["F0=", "F1="])  # no signal at all
    dynamic = DynamicSampling(refill, max_rounds=4)
    seed = partial(stream_seed, 0, 0, 100)  # the seeds of step 100
    scored, rounds = dynamic.collect(sampler, batch, seed)
    # The rounds it took: until the draws (seeded by their round's refill stream) held 2 "L" prompts.
    drawn = [refill.draw(2, seed(SeedStream.REFILL, r))["prompt"] for r in range(1, 5)]
    found = [sum(p.startswith("L") for p in d) for d in drawn]
    expected = next(r for r in range(1, 5) if sum(found[:r]) >= 2)
    assert rounds == expected
    assert scored.prompts[::3] == [p for d in drawn[:rounds] for p in d if p.startswith("L")][:2]
    assert len(scored.total) == 2 * 3 and scored.rollout.completion_ids.shape[0] == 6
    # No refill needed: the step's own rollout, as without dynamic sampling.
    own = refill.collate_fn(["L0=", "L1="])
    scored, rounds = dynamic.collect(sampler, own, seed)
    assert rounds == 0 and scored.completions == sampler.rollout(own, seed(SeedStream.ROLLOUT, 0)).completions


def test_all_ranks_take_the_same_number_of_rounds():
    sampler = make_sampler()
    refill = PromptRefill(PROMPTS, PromptsDataModule(sampler.tokenizer)._collate)
    own = refill.collate_fn(["L0=", "L1="])  # enough here, but another rank needs more
    dynamic = DynamicSampling(refill, max_rounds=2, any_rank=lambda need: True)
    scored, rounds = dynamic.collect(sampler, own, partial(stream_seed, 0, 0, 0))
    assert rounds == 2
    assert scored.prompts[::3] == ["L0=", "L1="]  # the step's own informative groups come first


def test_the_rollout_source_tags_refilled_rollouts_with_their_rounds_and_policy_version():
    sampler = make_sampler()
    refill = PromptRefill(PROMPTS, PromptsDataModule(sampler.tokenizer)._collate)
    dynamic = DynamicSampling(refill, max_rounds=4)
    source = SyncRolloutSource(sampler, lambda: 100, partial(partial, stream_seed, 0, 0), lambda: dynamic)
    batch = refill.collate_fn(["F0=", "F1="])  # no signal at all: refill rounds
    rollout = source.next(batch)
    scored, rounds = dynamic.collect(sampler, batch, partial(stream_seed, 0, 0, 100))  # step 100's seeds
    assert rollout.policy_version == 100 and rollout.refill_rounds == rounds >= 1
    assert rollout.scored.completions == scored.completions and rollout.scored.prompts == scored.prompts


class Record(Callback):
    def __init__(self) -> None:
        self.prompts: list[list[str]] = []
        self.validations = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.prompts.append(
            [outputs["samples"].prompts[i] for i in range(0, len(outputs["samples"].prompts), 4)]
        )

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.validations += 1


@pytest.mark.parametrize("rounds", [0, 4])
def test_dynamic_sampling_keeps_the_epoch_and_its_validation(rounds):
    tok = tiny_tokenizer()
    dm = PromptsDataModule(tok, prompts=PROMPTS, batch_size=2, val_prompts=["1+1="])
    record = Record()
    module = make_module(tok, reward_funcs=[code_sum_unless_flat], dynamic_sampling=True,
                         max_dynamic_sampling_rounds=rounds)  # fmt: skip
    trainer = make_trainer(max_steps=100, max_epochs=2, callbacks=[record], limit_val_batches=1)
    trainer.fit(module, datamodule=dm)
    # Every batch is a step, in both epochs; validation ran at the end of each epoch.
    assert trainer.global_step == 8 and record.validations == 2
    batches = [[PROMPTS[i], PROMPTS[i + 1]] for i in range(0, 8, 2)] * 2
    if rounds == 0:  # no top-up: the flat groups stay
        assert record.prompts == batches
    else:  # the step's own informative group first, then one drawn from the training set
        assert [p[0] for p in record.prompts] == [b[1] for b in batches]
        assert all(p.startswith("L") for step in record.prompts for p in step)


def test_dynamic_sampling_refuses_training_data_it_cannot_draw_from():
    tok = tiny_tokenizer()
    loader = DataLoader(Stream(), batch_size=2, collate_fn=PromptsDataModule(tok)._collate)
    module = make_module(tok, reward_funcs=[code_sum_unless_flat], dynamic_sampling=True)
    with pytest.raises(ValueError, match="needs a map-style dataset"):
        make_trainer(max_steps=1).fit(module, train_dataloaders=loader)


class Tagged(GRPOModule):
    """Adds a column in Lightning's batch hook: refill batches must get it too."""

    def on_before_batch_transfer(self, batch, dataloader_idx):
        return {**batch, "tag": ["hooked"] * len(batch["prompt"])}


def tag_checked(prompts, completions, tag, **columns):
    assert tag == ["hooked"] * len(completions)
    return code_sum_unless_flat(prompts, completions)


def test_refill_batches_are_prepared_like_the_loader_batches():
    tok = tiny_tokenizer()
    settings = {"reward_funcs": [tag_checked], "num_generations": 4, "max_completion_length": 8, "seed": 0}
    module = Tagged(tiny_model(tok), tokenizer=tok, dynamic_sampling=True, **settings)
    record = Record()
    trainer = make_trainer(max_steps=2, callbacks=[record])
    trainer.fit(module, datamodule=PromptsDataModule(tok, prompts=PROMPTS, batch_size=2))
    assert all(p.startswith("L") for step in record.prompts for p in step)  # refills happened
