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

_MODULES = {
    "grpo_lightning.rewards.format": ("FormatReward", "format_reward", "think_format_reward"),
    "grpo_lightning.rewards.gsm8k": (
        "Gsm8kAccuracy",
        "gsm8k_accuracy",
        "gsm8k_accuracy_flexible",
        "gsm8k_accuracy_reward",
    ),
    "grpo_lightning.rewards.length": (
        "LengthPenalty",
        "OverlongPenalty",
        "length_penalty",
        "overlong_penalty",
    ),
    "grpo_lightning.rewards.math": ("MathAccuracy", "math_accuracy", "math_accuracy_reward"),
    "grpo_lightning.rewards.reward_model": ("RewardModel",),
}
# The submodules themselves are attributes of the package too (``grpo_lightning.rewards.length``).
__getattr__, __dir__ = lazy_exports(__name__, _MODULES, globals(), submodules=_MODULES)

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
