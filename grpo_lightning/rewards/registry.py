"""A small registry so YAML configs can name reward functions.

A reward function is a plain callable ``f(prompts, completions, **columns) -> list[float | None]``:
one value per completion, ``None`` meaning "not applicable" (ignored by the statistics).
``columns`` are the batch's other dataset columns (``answer``, ...), repeated per completion.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from grpo_lightning.rewards._import_path import import_reward_module, reward_attribute

#: ``f(prompts, completions, **columns)`` -> one float (or None) per completion, in order. A list is
#: usual; any sequence of that length is accepted (a tuple, a 1-D tensor).
RewardFunc = Callable[..., Sequence[float | None]]

_REGISTRY: dict[str, RewardFunc] = {}
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")

#: The built-in rewards and the module that registers each. A module is imported when one of its
#: names is first resolved, so math-verify (``math_accuracy``) loads only for runs that use it.
BUILTIN_REWARDS: dict[str, str] = {
    "format_reward": "grpo_lightning.rewards.format",
    "think_format_reward": "grpo_lightning.rewards.format",
    "gsm8k_accuracy": "grpo_lightning.rewards.gsm8k",
    "gsm8k_accuracy_flexible": "grpo_lightning.rewards.gsm8k",
    "overlong_penalty": "grpo_lightning.rewards.length",
    "length_penalty": "grpo_lightning.rewards.length",
    "math_accuracy": "grpo_lightning.rewards.math",
}


def register_reward(name: str) -> Callable[[RewardFunc], RewardFunc]:
    """Decorator: make ``fn`` available to configs as ``name``."""

    def decorate(fn: RewardFunc) -> RewardFunc:
        if name in BUILTIN_REWARDS:
            # Load the built-in first (a no-op while its own module registers it), so that another
            # function cannot take a built-in's name just because that module was not imported yet.
            importlib.import_module(BUILTIN_REWARDS[name])
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"A reward named {name!r} is already registered ({_REGISTRY[name]!r}).")
        _REGISTRY[name] = fn
        return fn

    return decorate


def available_rewards() -> list[str]:
    """Names that :func:`resolve_reward` accepts besides import paths (built-in ones included)."""
    return sorted({*_REGISTRY, *BUILTIN_REWARDS})


def names_a_model(spec: str) -> bool:
    """Whether ``spec`` names a model rather than a function: a local folder, or a Hub id (``org/name``:
    a slash, which neither registry names nor import paths have)."""
    return Path(spec).expanduser().is_dir() or (":" not in spec and _HUB_ID.fullmatch(spec) is not None)


def resolve_reward(spec: str | RewardFunc | Any) -> RewardFunc:
    """Turn a registry name, an import path (``pkg.mod:fn`` or ``pkg.mod.fn``), a reward model (a Hub id
    ``org/name`` or a local folder, as TRL's ``reward_funcs`` takes them) or a callable into a callable.

    An import path's module is also looked for in the current folder, as ``python -m`` does (see
    :func:`~grpo_lightning.rewards._import_path.import_reward_module`). A reward model is a
    sequence-classification model scoring prompt + completion
    (:class:`~grpo_lightning.rewards.reward_model.RewardModel` with its defaults; build one yourself for
    other settings).
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"A reward must be a callable, a registered name or an import path; got {spec!r}.")
    if spec not in _REGISTRY and spec in BUILTIN_REWARDS:
        importlib.import_module(BUILTIN_REWARDS[spec])  # registers the names it defines
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    if names_a_model(spec):
        from grpo_lightning.rewards.reward_model import RewardModel  # transformers' model classes, when used

        return RewardModel(spec, name=Path(spec.rstrip("/")).name)
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name:
        raise ValueError(
            f"Unknown reward {spec!r}. Registered rewards: {', '.join(available_rewards()) or '(none)'}; "
            "or give an import path such as 'my_pkg.rewards:my_reward'."
        )
    fn = reward_attribute(spec, import_reward_module(spec, module_name), attr)
    if not callable(fn):
        raise TypeError(f"Reward {spec!r} resolved to {fn!r}, which is not callable.")
    return fn
