"""Rollout engines beyond the default ``generate`` one (see :mod:`grpo_lightning.rollout`)."""

from __future__ import annotations

from typing import Literal

from grpo_lightning._checks import check_choice
from grpo_lightning.engines.fast import FastRollout, FastRolloutEngine
from grpo_lightning.rollout import HFGenerateEngine, RolloutEngine

EngineName = Literal["hf", "fast"]
ENGINE_NAMES: tuple[str, ...] = ("hf", "fast")


def resolve_engine(engine: RolloutEngine | EngineName | None) -> RolloutEngine:
    """An engine object from a name (``"hf"``: transformers' ``generate``; ``"fast"``:
    :class:`FastRolloutEngine`), an engine passed through, or None for the default ``"hf"``."""
    if engine is None:
        return HFGenerateEngine()
    if isinstance(engine, str):
        check_choice("rollout_engine", engine, ENGINE_NAMES)
        return FastRolloutEngine() if engine == "fast" else HFGenerateEngine()
    if not isinstance(engine, RolloutEngine):
        raise TypeError(
            f"rollout_engine={engine!r} has no generate(model, prompt_ids, prompt_mask, ...) method: pass 'hf', "
            "'fast' or an object implementing grpo_lightning.rollout.RolloutEngine."
        )
    return engine


__all__ = ["ENGINE_NAMES", "EngineName", "FastRollout", "FastRolloutEngine", "resolve_engine"]
