"""The rollout engines by name: ``auto`` (the default), ``fast`` and ``hf`` (see :mod:`grpo_lightning.rollout.engine`)."""

from __future__ import annotations

from typing import Literal

from grpo_lightning._checks import check_choice
from grpo_lightning.rollout.engine import HFGenerateEngine, RolloutEngine, SamplingConfig
from grpo_lightning.rollout.engines.fast import FastRolloutEngine
from grpo_lightning.rollout.engines.sampling import TokenSampler

EngineName = Literal["auto", "hf", "fast"]
ENGINE_NAMES: tuple[str, ...] = ("auto", "hf", "fast")


def fast_engine_supports(sampling: SamplingConfig) -> bool:
    """Whether :class:`FastRolloutEngine` implements every setting of ``sampling`` (it raises otherwise)."""
    try:
        # Placeholder token ids: only the sampling settings are checked here.
        TokenSampler.from_generation_config(sampling.generation_config([0], 0), [0])
    except ValueError:
        return False
    return True


def resolve_engine(
    engine: RolloutEngine | EngineName | None, sampling: SamplingConfig | None = None
) -> RolloutEngine:
    """An engine object from a name, or the engine passed in.

    ``"fast"``: :class:`FastRolloutEngine`; ``"hf"``: transformers' ``generate``; ``"auto"``: the
    fast engine when it implements every setting of ``sampling`` (``repetition_penalty`` and most
    ``generation_kwargs`` need ``generate``), else ``generate``. None means ``"hf"`` (the module's default is
    ``"auto"``).
    """
    if engine is None:
        return HFGenerateEngine()
    if isinstance(engine, str):
        check_choice("rollout_engine", engine, ENGINE_NAMES)
        if engine == "auto":
            engine = "fast" if sampling is None or fast_engine_supports(sampling) else "hf"
        return FastRolloutEngine() if engine == "fast" else HFGenerateEngine()
    if not isinstance(engine, RolloutEngine):
        raise TypeError(
            f"rollout_engine={engine!r} has no generate(model, request) method: pass 'auto', "
            "'fast', 'hf' or an object implementing grpo_lightning.rollout.engine.RolloutEngine."
        )
    return engine


__all__ = [
    "ENGINE_NAMES",
    "EngineName",
    "FastRolloutEngine",
    "fast_engine_supports",
    "resolve_engine",
]
