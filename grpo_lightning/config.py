"""Start-up checks for GRPOModule settings: every message names the setting to change.

The rollout layout: each device takes P prompts per training step and samples
G = ``num_generations`` completions of each, N = P * G rows. Each of the ``num_iterations`` passes
splits them into ``steps_per_rollout`` mini-batches (one optimizer step each), and every mini-batch
into micro-batches of ``micro_batch_size`` rows (one forward/backward each).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from grpo_lightning._checks import check_choice
from grpo_lightning.advantages import SCALE_REWARDS
from grpo_lightning.losses import IMPORTANCE_SAMPLING_LEVELS, LOSS_TYPES


@dataclass(frozen=True)
class BatchLayout:
    """How one device's rollout is cut for the updates."""

    num_rows: int
    """N = prompts per device * num_generations."""
    mini_batch_size: int
    """Rows per optimizer step: N / steps_per_rollout."""
    micro_batch_size: int
    """Rows per forward/backward; divides mini_batch_size."""

    @property
    def micro_batches_per_step(self) -> int:
        return self.mini_batch_size // self.micro_batch_size


def batch_layout(
    prompts_per_device: int, num_generations: int, steps_per_rollout: int, micro_batch_size: int | None
) -> BatchLayout:
    """Check that the settings divide and return the layout; ``micro_batch_size=None`` = whole mini-batch."""
    if prompts_per_device < 1:
        raise ValueError("The training batch holds no prompt: check the DataModule's batch_size and dataset.")
    rows = prompts_per_device * num_generations
    if rows % steps_per_rollout:
        raise ValueError(
            f"steps_per_rollout={steps_per_rollout} does not divide the {rows} completions of a step "
            f"({prompts_per_device} prompts per device x num_generations={num_generations}). Change "
            "steps_per_rollout, the DataModule's batch_size or num_generations so that it divides."
        )
    mini = rows // steps_per_rollout
    micro = mini if micro_batch_size is None else micro_batch_size
    if mini % micro:
        divisors = [d for d in range(1, mini + 1) if mini % d == 0]
        raise ValueError(
            f"micro_batch_size={micro} does not divide the mini-batch of {mini} completions "
            f"({rows} per device / steps_per_rollout={steps_per_rollout}). Set micro_batch_size to one of "
            f"{divisors}, or change steps_per_rollout / the batch size."
        )
    return BatchLayout(num_rows=rows, mini_batch_size=mini, micro_batch_size=micro)


def _positive(name: str, value: Any, minimum: float = 1) -> None:
    if value is None or value < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}.")


def validate_settings(h: Mapping[str, Any]) -> None:
    """Reject unknown names and impossible combinations before any model is loaded.

    ``h`` holds GRPOModule's arguments by name (its ``hparams``).
    """
    # NaN passes every comparison below (``nan < 0`` is False), so non-finite numbers go first.
    for name, value in h.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}={value} must be a finite number.")
    num_generations, max_completion_length = h["num_generations"], h["max_completion_length"]
    temperature, top_p, top_k, beta = h["temperature"], h["top_p"], h["top_k"], h["beta"]
    epsilon, epsilon_high, delta = h["epsilon"], h["epsilon_high"], h["delta"]
    loss_type, scale_rewards = h["loss_type"], h["scale_rewards"]
    importance_sampling_level = h["importance_sampling_level"]
    num_iterations, steps_per_rollout = h["num_iterations"], h["steps_per_rollout"]
    micro_batch_size, top_entropy_quantile = h["micro_batch_size"], h["top_entropy_quantile"]
    max_grad_norm, lora, sync_ref_model = h["max_grad_norm"], h.get("lora"), h["sync_ref_model"]
    ref_model_mixup_alpha, ref_model_sync_steps = h["ref_model_mixup_alpha"], h["ref_model_sync_steps"]
    max_dynamic_sampling_rounds, val_num_samples = h["max_dynamic_sampling_rounds"], h["val_num_samples"]
    check_choice("loss_type", loss_type, LOSS_TYPES)
    check_choice("scale_rewards", scale_rewards, SCALE_REWARDS)
    check_choice("importance_sampling_level", importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS)
    if num_generations < 2:
        raise ValueError(
            f"num_generations={num_generations}: GRPO compares completions of the same prompt, so it needs at "
            "least 2 per prompt (8 is usual)."
        )
    _positive("max_completion_length", max_completion_length)
    _positive("num_iterations", num_iterations)
    _positive("steps_per_rollout", steps_per_rollout)
    if micro_batch_size is not None:
        _positive("micro_batch_size", micro_batch_size)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(
            f"temperature={temperature} must be > 0 (sampling needs it; the loss divides by it)."
        )
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1]; 1.0 turns nucleus sampling off.")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k={top_k} must be >= 0; 0 (or None) turns it off.")
    if beta < 0:
        raise ValueError(f"beta={beta} must be >= 0 (0 = no KL penalty and no reference model).")
    if epsilon < 0 or (epsilon_high is not None and epsilon_high < 0):
        raise ValueError(f"epsilon={epsilon} and epsilon_high={epsilon_high} must be >= 0.")
    high = epsilon if epsilon_high is None else epsilon_high
    if delta is not None and delta <= 1 + high:
        raise ValueError(f"delta={delta} must exceed 1 + epsilon_high = {1 + high} (4 is usual), or be None.")
    if not 0 < top_entropy_quantile <= 1:
        raise ValueError(
            f"top_entropy_quantile={top_entropy_quantile} must be in (0, 1]; 1.0 keeps every token."
        )
    if max_grad_norm is not None and max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm={max_grad_norm} must be > 0, or None for no clipping.")
    if sync_ref_model:
        if beta == 0:
            raise ValueError(
                "sync_ref_model=True updates the reference model, which only exists when beta > 0: set beta > 0 "
                "or sync_ref_model=False."
            )
        if lora is not None:
            raise ValueError(
                "sync_ref_model=True cannot be used with lora: the reference of a LoRA policy is its base model "
                "with the adapter disabled, which is never updated. Drop lora or set sync_ref_model=False."
            )
        if not 0 < ref_model_mixup_alpha <= 1:
            raise ValueError(f"ref_model_mixup_alpha={ref_model_mixup_alpha} must be in (0, 1].")
        _positive("ref_model_sync_steps", ref_model_sync_steps)
    if max_dynamic_sampling_rounds < 0:
        raise ValueError(f"max_dynamic_sampling_rounds={max_dynamic_sampling_rounds} must be >= 0.")
    _positive("val_num_samples", val_num_samples)


def context_length(model: Any) -> int | None:
    """Positions the model can attend to (``max_position_embeddings``, GPT-2's ``n_positions``), if known."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context_length(longest_prompt: int, max_completion_length: int, context: int | None, where: str) -> None:
    """Refuse prompts that cannot be completed within the model's context, naming both numbers and
    the settings that fix it. ``where`` says whose prompts these are ("in the data", ...)."""
    if context is None or longest_prompt + max_completion_length <= context:
        return
    room = context - max_completion_length
    raise ValueError(
        f"The longest prompt ({where}) has {longest_prompt} tokens; with max_completion_length="
        f"{max_completion_length} a sequence needs {longest_prompt + max_completion_length} positions, but the "
        f"model's context is {context}. Lower max_completion_length to at most {max(context - longest_prompt, 0)}, "
        + (
            f"or set the DataModule's max_prompt_length to at most {room} (longer prompts are dropped)."
            if room > 0
            else "and shorten the prompts (the DataModule's max_prompt_length)."
        )
    )
