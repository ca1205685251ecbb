"""Reward functions for math reasoning and the registry that lets configs name them."""

from grpo_lightning.rewards.registry import (
    RewardFunc,
    available_rewards,
    register_reward,
    resolve_reward,
)

__all__ = ["RewardFunc", "available_rewards", "register_reward", "resolve_reward"]
