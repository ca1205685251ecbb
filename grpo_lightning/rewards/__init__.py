"""Reward functions for math reasoning and the registry that lets configs name them.

Importing this package registers the built-in rewards: ``gsm8k_accuracy``, ``gsm8k_accuracy_flexible``,
``math_accuracy``, ``format_reward``, ``think_format_reward``, ``overlong_penalty``, ``length_penalty``.
"""

from grpo_lightning.rewards.format import FormatReward, format_reward, think_format_reward
from grpo_lightning.rewards.gsm8k import (
    Gsm8kAccuracy,
    gsm8k_accuracy,
    gsm8k_accuracy_flexible,
    gsm8k_accuracy_reward,
)
from grpo_lightning.rewards.length import LengthPenalty, OverlongPenalty, length_penalty, overlong_penalty
from grpo_lightning.rewards.math import MathAccuracy, math_accuracy, math_accuracy_reward
from grpo_lightning.rewards.registry import (
    RewardFunc,
    available_rewards,
    register_reward,
    resolve_reward,
)
from grpo_lightning.rewards.reward_model import RewardModel

__all__ = [
    "FormatReward",
    "Gsm8kAccuracy",
    "LengthPenalty",
    "MathAccuracy",
    "OverlongPenalty",
    "RewardFunc",
    "RewardModel",
    "available_rewards",
    "format_reward",
    "gsm8k_accuracy",
    "gsm8k_accuracy_flexible",
    "gsm8k_accuracy_reward",
    "length_penalty",
    "math_accuracy",
    "math_accuracy_reward",
    "overlong_penalty",
    "register_reward",
    "resolve_reward",
    "think_format_reward",
]
