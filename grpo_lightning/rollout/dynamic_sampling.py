"""DAPO dynamic sampling: replace groups whose rewards are all equal with groups of fresh prompts.

A group whose G completions all scored the same has zero advantage everywhere and teaches nothing.
With ``dynamic_sampling=True`` a training step works like this:

1. Round 0 samples the step's own batch of P prompts, as without dynamic sampling.
2. While fewer than P of the groups sampled so far have a reward spread (on any rank: all ranks do
   the same number of rounds, as generation can be collective), round r = 1, 2, ...,
   ``max_dynamic_sampling_rounds`` samples P more prompts drawn at random from the training set.
   The draw is seeded by (seed, rank, step, round) in a stream of its own
   (:attr:`~grpo_lightning.rollout.seeds.SeedStream.REFILL`), so a resumed run draws the same prompts.
3. The step keeps P groups: those with a reward spread, in the order they were sampled, then flat
   ones to fill up when the rounds did not find enough.

The refill prompts come from the training set itself, not from the data loader's iterator, so the
loop Lightning runs is untouched: an epoch has as many training steps as batches, and validation at
the end of an epoch, ``val_check_interval``, ``limit_train_batches`` and resuming mid-epoch work as
without dynamic sampling. A refill prompt may be one the epoch has already served, or will serve.
The training data must be a map-style dataset (``__len__`` and ``__getitem__``) for the random draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from lightning.pytorch import Trainer
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from grpo_lightning.algorithm.advantages import zero_spread
from grpo_lightning.rollout.sampler import Sampler
from grpo_lightning.rollout.scoring import ScoredRollout, concat_scored
from grpo_lightning.rollout.seeds import SeedStream

#: ``seed(stream, round_)``: the step's seed of a stream's round (``stream_seed`` with the run's
#: base seed, the rank and the step already given).
StepSeed = Callable[[SeedStream, int], int]


def informative_rows(total: Tensor, num_generations: int, num_groups: int) -> Tensor:
    """Rows of the ``num_groups`` groups to keep from rewards ``total: [M * G]`` (M >= num_groups).

    Groups with a reward spread come first, in sampling order, then flat ones (fewer than two valid
    rewards, or all valid ones equal: :func:`~grpo_lightning.algorithm.advantages.zero_spread`). Returns
    ``[num_groups * G]`` row indices, each kept group's G rows in order.
    """
    flat = zero_spread(total, num_generations)
    order = torch.cat([(~flat).nonzero().flatten(), flat.nonzero().flatten()])[:num_groups]
    return (order.unsqueeze(1) * num_generations + torch.arange(num_generations)).flatten()


class PromptRefill:
    """Random batches of prompts from a map-style training set, collated as the data loader does.

    ``dataset[i]`` is one row; ``collate_fn`` turns a list of rows into a batch; ``to_device`` moves
    a batch to where the step's own batches are (default: leave it where it is).
    """

    def __init__(
        self,
        dataset: Any,
        collate_fn: Callable[[list[Any]], dict[str, Any]],
        to_device: Callable[[dict[str, Any]], dict[str, Any]] = lambda batch: batch,
    ) -> None:
        if isinstance(dataset, IterableDataset) or not isinstance(dataset, Sized):
            raise ValueError(
                "dynamic_sampling draws its refill prompts at random from the training set, which needs a "
                f"map-style dataset (with __len__ and __getitem__); the training data is a {type(dataset).__name__}. "
                "Use a map-style dataset, or set dynamic_sampling=False."
            )
        if len(dataset) == 0:
            raise ValueError("dynamic_sampling: the training set is empty, there is nothing to refill from.")
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.to_device = to_device

    @classmethod
    def from_loader(
        cls, loader: Any, to_device: Callable[[dict[str, Any]], dict[str, Any]] = lambda batch: batch
    ) -> PromptRefill:
        """The refill of a training ``DataLoader`` (its dataset and collate function)."""
        if not isinstance(loader, DataLoader):
            raise ValueError(
                "dynamic_sampling draws its refill prompts from the training DataLoader's dataset; the training "
                f"data is a {type(loader).__name__}. Give one torch DataLoader, or set dynamic_sampling=False."
            )
        return cls(loader.dataset, loader.collate_fn, to_device)

    def draw(self, num_prompts: int, seed: int) -> dict[str, Any]:
        """A batch of ``num_prompts`` distinct rows (all rows if the set is smaller), chosen by ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(self.dataset), generator=generator)[:num_prompts].tolist()
        return self.to_device(self.collate_fn([self.dataset[i] for i in index]))


@dataclass(eq=False)
class DynamicSampling:
    """Samples a step's rollout, topping it up with refill rounds as the module docs say."""

    refill: PromptRefill
    """Where the fresh prompts come from."""
    max_rounds: int
    """Most refill rounds per training step."""
    any_rank: Callable[[bool], bool] = bool
    """True on every rank when the flag is True on any (one collective); one process: ``bool``."""

    @classmethod
    def from_trainer(cls, trainer: Trainer, max_rounds: int) -> DynamicSampling:
        """Refill from ``trainer``'s training loader, each batch prepared as Lightning prepares the
        loader's own; the number of rounds agreed over ``trainer``'s ranks."""
        refill = PromptRefill.from_loader(trainer.train_dataloader, partial(_prepare, trainer))
        return cls(refill, max_rounds, partial(trainer.strategy.reduce_boolean_decision, all=False))

    def collect(self, sampler: Sampler, batch: dict[str, Any], seed: StepSeed) -> tuple[ScoredRollout, int]:
        """The step's scored rollout (P groups) and the number of refill rounds it took.

        ``seed(SeedStream.ROLLOUT, r)`` seeds round r's generation (round 0: the step's own batch),
        ``seed(SeedStream.REFILL, r)`` the prompts round r >= 1 draws.
        """
        G = sampler.num_generations
        parts = [sampler.rollout(batch, seed(SeedStream.ROLLOUT, 0))]
        groups = len(parts[0].total) // G
        informative = _informative(parts[0].total, G)
        rounds = 0
        while rounds < self.max_rounds and self.any_rank(informative < groups):
            rounds += 1
            extra = self.refill.draw(groups, seed(SeedStream.REFILL, rounds))
            parts.append(sampler.rollout(extra, seed(SeedStream.ROLLOUT, rounds)))
            informative += _informative(parts[-1].total, G)
        if len(parts) == 1:
            return parts[0], 0
        merged = concat_scored(parts, sampler.tokenizer.pad_token_id)
        return merged.select(informative_rows(merged.total, G, groups)), rounds


def _prepare(trainer: Trainer, batch: dict[str, Any]) -> dict[str, Any]:
    """What Lightning does to a training batch before the step: the precision's input conversion, the
    module's batch-transfer hooks, the move to the device."""
    batch = trainer.precision_plugin.convert_input(batch)
    batch = trainer.lightning_module.on_before_batch_transfer(batch, dataloader_idx=0)
    return trainer.strategy.batch_to_device(batch, dataloader_idx=0)


def _informative(total: Tensor, num_generations: int) -> int:
    """How many of the groups of ``total: [M * G]`` have a reward spread."""
    return int((~zero_spread(total, num_generations)).sum())
