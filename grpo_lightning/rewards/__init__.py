"""Reward functions for math reasoning and the registry that lets configs name them.

Built-in rewards, resolvable by name: ``gsm8k_accuracy``, ``gsm8k_accuracy_flexible``,
``math_accuracy``, ``format_reward``, ``think_format_reward``, ``overlong_penalty``,
``length_penalty``. Each module loads when a reward of it is first named or accessed (math-verify
and the reward model's transformers classes only then).
"""

from typing import TYPE_CHECKING

from grpo_lightning._lazy import lazy_exports
from grpo_lightning.rewards.registry import (
    RewardFunc,
    available_rewards,
    register_reward,
    resolve_reward,
)

_FORMAT = "grpo_lightning.rewards.format"
_GSM8K = "grpo_lightning.rewards.gsm8k"
_LENGTH = "grpo_lightning.rewards.length"
_MATH = "grpo_lightning.rewards.math"
_REWARD_MODEL = "grpo_lightning.rewards.reward_model"
_EXPORTS = {
    "FormatReward": _FORMAT,
    "format_reward": _FORMAT,
    "think_format_reward": _FORMAT,
    "Gsm8kAccuracy": _GSM8K,
    "gsm8k_accuracy": _GSM8K,
    "gsm8k_accuracy_flexible": _GSM8K,
    "gsm8k_accuracy_reward": _GSM8K,
    "LengthPenalty": _LENGTH,
    "OverlongPenalty": _LENGTH,
    "length_penalty": _LENGTH,
    "overlong_penalty": _LENGTH,
    "MathAccuracy": _MATH,
    "math_accuracy": _MATH,
    "math_accuracy_reward": _MATH,
    "RewardModel": _REWARD_MODEL,
    # The submodules themselves, as attributes of the package.
    **{path.rpartition(".")[2]: path for path in (_FORMAT, _GSM8K, _LENGTH, _MATH, _REWARD_MODEL)},
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from grpo_lightning.rewards.format import FormatReward, format_reward, think_format_reward
    from grpo_lightning.rewards.gsm8k import (
        Gsm8kAccuracy,
        gsm8k_accuracy,
        gsm8k_accuracy_flexible,
        gsm8k_accuracy_reward,
    )
    from grpo_lightning.rewards.length import LengthPenalty, OverlongPenalty, length_penalty, overlong_penalty
    from grpo_lightning.rewards.math import MathAccuracy, math_accuracy, math_accuracy_reward
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
