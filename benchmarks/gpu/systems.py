"""The systems compared: rollouts through an engine, and full GRPO steps with grpo_lightning or TRL.

Every function builds nothing itself: the caller passes the model (fresh for each training run, so
each starts from the same weights), the tokenizer and the workload, and gets a dict of measurements.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from limits import sync


@dataclass(frozen=True)
class Workload:
    """``prompts x generations`` completions of exactly ``new_tokens`` tokens (EOS blocked until then)."""

    prompts: int
    generations: int
    new_tokens: int
    micro_batch_size: int | None  # rows per forward/backward in the training pass (None: all)
    repeats: int  # measured rollouts / steps, after one warm-up

    @property
    def rows(self) -> int:
        return self.prompts * self.generations


def peak_memory_gb(device: torch.device) -> float | None:
    """Peak memory allocated by tensors since the last reset (None on CPU: no per-run figure there)."""
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def sampling_config(work: Workload) -> Any:
    from grpo_lightning.rollout.engine import SamplingConfig

    return SamplingConfig(
        max_completion_length=work.new_tokens,
        temperature=1.0,
        generation_kwargs={"min_new_tokens": work.new_tokens},
    )


def time_rollouts(
    engine: Any, model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, work: Workload,
    eos_token_id: int, pad_token_id: int,
) -> dict[str, Any]:  # fmt: skip
    """One warm-up rollout (graph capture, kernel selection), then ``repeats`` timed ones: median."""
    from grpo_lightning.rollout.engine import RolloutRequest

    device = prompt_ids.device
    request = RolloutRequest(
        prompt_ids,
        prompt_mask,
        num_generations=work.generations,
        sampling=sampling_config(work),
        eos_token_ids=[eos_token_id],
        pad_token_id=pad_token_id,
        seed=0,
    )
    sync(device)
    start = time.perf_counter()
    engine.generate(model, request)
    sync(device)
    warmup = time.perf_counter() - start
    reset_peak(device)
    seconds = []
    for r in range(work.repeats):
        sync(device)
        start = time.perf_counter()
        out = engine.generate(model, replace(request, seed=r + 1))
        sync(device)
        seconds.append(time.perf_counter() - start)
    tokens = int(out.completion_mask.sum())
    if tokens != work.rows * work.new_tokens:
        raise RuntimeError(f"expected {work.rows * work.new_tokens} completion tokens, got {tokens}")
    median = statistics.median(seconds)
    return {
        "seconds": median,
        "all_seconds": seconds,
        "warmup_seconds": warmup,
        "tokens": tokens,
        "tokens_per_s": tokens / median,
        "peak_memory_gb": peak_memory_gb(device),
    }


def engine_used_graphs(engine: Any) -> bool | None:
    """Whether a fast engine's last rollout replayed CUDA graphs (None: not a fast engine). A capture
    that failed under ``decoder="auto"`` falls back to eager steps with a warning: this says which ran."""
    if not hasattr(engine, "release"):
        return None
    static = getattr(engine, "_static", None)
    return bool(static is not None and static.graphs and static.captures > 0)


class _Clock:
    """Step end times (after a device sync) and time spent in one wrapped call, after the warm-up step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks: list[float] = []
        self.sampling: list[float] = []

    def mark(self) -> None:
        sync(self.device)
        self.marks.append(time.perf_counter())
        if len(self.marks) == 1:
            reset_peak(self.device)  # peak memory of the measured steps (the warm-up allocates once)

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            sync(self.device)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync(self.device)
                if self.marks:  # not during the warm-up step
                    self.sampling.append(time.perf_counter() - start)

        return timed

    def result(self, work: Workload) -> dict[str, Any]:
        steps = [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]
        if len(steps) != work.repeats:
            raise RuntimeError(f"expected {work.repeats} measured steps, timed {len(steps)}")
        return {
            "step_s": statistics.median(steps),
            "all_step_s": steps,
            "sampling_s": statistics.median(self.sampling) if self.sampling else None,
            "peak_memory_gb": peak_memory_gb(self.device),
        }


def reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """Share of digit characters: differs between samples, so every group has non-zero advantages."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


def grpo_lightning_steps(
    model: torch.nn.Module, tokenizer: Any, prompts: list[str], work: Workload, engine: str,
    device: torch.device, precision: str,
) -> dict[str, Any]:  # fmt: skip
    """GRPOModule in a Lightning Trainer: one warm-up step, then ``repeats`` measured optimizer steps."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from grpo_lightning.module import GRPOModule

    module = GRPOModule(
        model, tokenizer=tokenizer, reward_funcs=[reward], num_generations=work.generations,
        max_completion_length=work.new_tokens, generation_kwargs={"min_new_tokens": work.new_tokens},
        temperature=1.0, beta=0.0, warmup_steps=0, max_grad_norm=1.0, loss_type="dapo",
        micro_batch_size=work.micro_batch_size, rollout_engine=engine, seed=0,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-6, fused=True),
    )  # fmt: skip
    clock = _Clock(device)
    module.rollout_engine.generate = clock.wrap(module.rollout_engine.generate)

    class StepClock(pl.Callback):
        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            clock.mark()

    loader = DataLoader(prompts, batch_size=work.prompts, collate_fn=lambda rows: {"prompt": list(rows)})
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision,
        max_steps=1 + work.repeats, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[StepClock()],
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    return {**clock.result(work), "cuda_graphs": engine_used_graphs(module.rollout_engine)}


def trl_steps(
    model: torch.nn.Module, tokenizer: Any, prompts: list[str], work: Workload, device: torch.device,
    bf16: bool,
) -> dict[str, Any]:  # fmt: skip
    """TRL's GRPOTrainer (transformers' generate, no vLLM) on the same job: one rollout and one
    optimizer step per step, the same micro-batch size, fused AdamW, no gradient checkpointing."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    micro = work.micro_batch_size or work.rows
    accumulation = work.rows // micro
    clock = _Clock(device)
    with tempfile.TemporaryDirectory() as out_dir:
        args = GRPOConfig(
            output_dir=out_dir, per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation,
            steps_per_generation=accumulation, num_generations=work.generations, num_iterations=1,
            max_completion_length=work.new_tokens, generation_kwargs={"min_new_tokens": work.new_tokens},
            temperature=1.0, beta=0.0, learning_rate=1e-6, max_steps=1 + work.repeats, seed=0, bf16=bf16,
            use_cpu=device.type == "cpu", gradient_checkpointing=False, logging_steps=1000, report_to="none",
            save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, optim="adamw_torch_fused",
            max_grad_norm=1.0, lr_scheduler_type="constant", loss_type="dapo", scale_rewards="group",
        )  # fmt: skip
        reward.__name__ = "digit_reward"
        trainer = GRPOTrainer(
            model=model, reward_funcs=reward, args=args,
            train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer,
        )  # fmt: skip
        trainer.model.generate = clock.wrap(trainer.model.generate)

        class StepClock(TrainerCallback):
            def on_step_end(self, *args: Any, **kwargs: Any) -> None:
                clock.mark()

        trainer.add_callback(StepClock())
        trainer.train()
    return clock.result(work)
