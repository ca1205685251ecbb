"""Rollout engines beyond the default ``generate`` one (see :mod:`grpo_lightning.rollout`)."""

from grpo_lightning.engines.fast import FastRollout, FastRolloutEngine

__all__ = ["FastRollout", "FastRolloutEngine"]
