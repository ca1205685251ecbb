"""Where a training step's rollout comes from: a :class:`RolloutSource`.

Today's source is :class:`SyncRolloutSource`: it samples the step's batch with the current weights
right before the update (with DAPO dynamic sampling when asked). Every rollout carries the policy
version that sampled it (:attr:`StepRollout.policy_version`, the optimizer steps taken by then), so
the update can tell an on-policy rollout from a stale one, and an asynchronous source can be added
as one more implementation of the protocol below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from grpo_lightning.rollout.dynamic_sampling import DynamicSampling, StepSeed
from grpo_lightning.rollout.sampler import Sampler
from grpo_lightning.rollout.scoring import ScoredRollout
from grpo_lightning.rollout.seeds import SeedStream


@dataclass(frozen=True)
class StepRollout:
    """The scored rollout of one training step and where it came from."""

    scored: ScoredRollout
    """P * G rows, G per prompt."""
    policy_version: int
    """Optimizer steps the policy had taken when these completions were sampled."""
    refill_rounds: int = 0
    """Dynamic-sampling rounds that topped the rollout up (0 without dynamic sampling)."""


class RolloutSource(Protocol):
    """Gives the scored rollout each training step learns from.

    ``next(batch)`` is called once per training step, with that step's batch of prompts, and every
    rank calls it in the same order (a source may make collectives). The update checks that
    :attr:`StepRollout.policy_version` is the current optimizer step count: it takes pi_old to be
    the current weights (it computes pi_old with them, or reuses the sampling pass's log-probs only
    when they came from them).

    An asynchronous source (generation of step t+1 overlapping the update of step t, as verl, AReaL
    and TRL's async mode do) is one more implementation, and must settle the following:

    - **Overlap.** ``next(batch)`` returns the rollout sampled in the background for the previous
      call's batch and starts sampling this one, on a copy of the weights (a second model, or an
      inference engine) that the update does not touch while it samples. Weights are pushed to
      that copy after each update, and the version tag is the optimizer step count of the weights
      pushed, never of the live ones.
    - **pi_old.** With a lag of one version or more, pi_old is the sampling policy, not the current
      one. The rollout must carry the sampling pass's per-token log-probs
      (``Rollout.sampling_logp``), and the update must take them as ``old_logp`` even when
      ``num_iterations == 1`` (today it then skips pi_old as equal to pi_theta), ignoring
      ``reuse_sampling_logprobs=False``: recomputing pi_old with the live weights would make the
      ratio 1 and hide the staleness.
    - **Importance ratios.** The clipped ratio pi_theta / pi_old then corrects for the lag as PPO
      does for its reuse passes; when the sampling engine's numerics differ from the trainer's
      (bf16 engine, fp32 trainer), a truncated importance weight on the engine/trainer mismatch
      (as verl's and AReaL's decoupled objectives do) is a separate setting, not a silent change.
    - **Version lag limit.** A setting ``max_policy_lag`` (1 is the overlap of one step): a rollout
      older than that is dropped and resampled, never used, and the lag of each step is logged
      (``train/policy_lag``) next to the clip ratios it drives.
    - **Checkpoint and resume.** A checkpoint holds the weights, not the rollout in flight: on
      resume the source samples the current step's batch synchronously once (version = the
      restored step), then overlaps again, so a resumed run differs from an uninterrupted one only
      in that one step's staleness; the seeds stay those of :func:`~grpo_lightning.rollout.seeds.stream_seed`
      for the step the batch belongs to. The in-flight work is cancelled when fitting stops.
    - **Ranks.** Every rank runs its own source and all agree on the version (the optimizer steps
      are global); dynamic sampling's ``any_rank`` agreement works as in the synchronous source.
    """

    def next(self, batch: dict[str, Any]) -> StepRollout:
        """The scored rollout of ``batch`` for the current training step."""
        ...


@dataclass(eq=False)
class SyncRolloutSource:
    """Samples each step's batch with the current weights, then returns (no overlap with the update).

    ``policy_version()``: the optimizer steps taken so far (``trainer.global_step``); it also picks
    the step's seeds, ``seeds(version)(stream, round_)``, so a resumed run samples the same
    completions. ``dynamic_sampling()``: the step's dynamic sampling (looked up at every step:
    Lightning may rebuild the training loader each epoch), or None for one plain round.
    """

    sampler: Sampler
    policy_version: Callable[[], int]
    seeds: Callable[[int], StepSeed]
    dynamic_sampling: Callable[[], DynamicSampling] | None = None

    def next(self, batch: dict[str, Any]) -> StepRollout:
        version = self.policy_version()
        seed = self.seeds(version)
        if self.dynamic_sampling is None:
            return StepRollout(self.sampler.rollout(batch, seed(SeedStream.ROLLOUT, 0)), version)
        scored, rounds = self.dynamic_sampling().collect(self.sampler, batch, seed)
        return StepRollout(scored, version, rounds)
