"""Named random streams: every seeded draw of a run says which stream it belongs to.

A seed is a function of the run's base seed, the rank, an index (the training step, or the batch for
evaluation), the stream and, for rollouts and refill prompts, the dynamic-sampling round. Two draws
share a seed only when all of these agree, so a resumed run repeats its samples and no two kinds of draw are correlated.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class SeedStream(enum.Enum):
    """The seeded draws of a run (see :func:`stream_seed`)."""

    ROLLOUT = "rollout"
    """Completions sampled at training step ``index``; dynamic-sampling round ``r`` adds ``round_=r``."""
    SHUFFLE = "shuffle"
    """Order of the rollout's rows in the mini-batches of step ``index``."""
    EVALUATION = "evaluation"
    """Greedy completions of evaluation or prediction batch ``index``."""
    EVALUATION_SAMPLES = "evaluation_samples"
    """Sampled completions (pass@k) of evaluation or prediction batch ``index``."""
    REFILL = "refill"
    """Prompts drawn from the training set by dynamic-sampling round ``round_`` (from 1) of step ``index``."""


# Where each stream sits in the seed formula: (slot, offset). The values are those these draws had
# before the streams were named, so a seed gives the same samples as before. The one exception:
# dynamic-sampling rounds r >= 1 took slot r, so round 7 shared the shuffle's seed; they now take
# the slots after it (_FIRST_EXTRA_ROUND_SLOT + r - 1), where nothing else lies.
_PLACES: dict[SeedStream, tuple[int, int]] = {
    SeedStream.ROLLOUT: (0, 0),
    SeedStream.SHUFFLE: (7, 0),
    SeedStream.EVALUATION: (-1, 0),
    SeedStream.EVALUATION_SAMPLES: (-1, 1),  # the greedy seed + 1
    SeedStream.REFILL: (0, 2),  # round r's prompts: round r's slot, next to its completions
}
_FIRST_EXTRA_ROUND_SLOT = 8
#: The streams numbered by dynamic-sampling round, and each one's first round (round 0 of a step
#: samples the step's own batch: it draws no refill prompts).
_FIRST_ROUND = {SeedStream.ROLLOUT: 0, SeedStream.REFILL: 1}


def stream_seed(base_seed: int, rank: int, index: int, stream: SeedStream, round_: int = 0) -> int:
    """The seed of one draw: fixed by the run's seed, the rank, the step or batch ``index`` and the stream.

    ``round_`` numbers the dynamic-sampling rounds of a :attr:`SeedStream.ROLLOUT` (0: the first
    sampling of the step) and of a :attr:`SeedStream.REFILL` (from 1); other streams have none. The
    result is in ``[0, 2**63 - 1)`` (what ``torch.manual_seed`` takes) and the same on resume.
    """
    if not isinstance(stream, SeedStream):
        raise TypeError(f"stream must be a SeedStream, got {stream!r}.")
    first = _FIRST_ROUND.get(stream)
    if first is None and round_:
        raise ValueError(f"round_={round_} is invalid for {stream}: only ROLLOUT and REFILL have rounds.")
    if first is not None and round_ < first:
        raise ValueError(f"round_={round_} is invalid for {stream}: its rounds are numbered from {first}.")
    slot, offset = _PLACES[stream]
    if round_:
        slot = _FIRST_EXTRA_ROUND_SLOT + round_ - 1
    # Large primes as multipliers keep the seeds of nearby (rank, index, slot) triples apart.
    return (base_seed * 1_000_003 + rank * 7_919 + index * 104_729 + slot * 15_485_863 + offset) % (2**63 - 1)


def base_seed(seed: int | None) -> int:
    """A run's base seed: ``seed`` if given, else the ``seed_everything`` seed (0 when none was set)."""
    return int(seed) if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block with the global RNG seeded to ``seed``, restoring the caller's RNG state after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=True):
        torch.manual_seed(seed)
        yield
