"""Worker: run one benchmark case with grpo_lightning (GRPOModule in a Lightning Trainer), print one JSON line.

Started in its own process by bench_vs_trl.py (so peak memory is this system's alone):
    python benchmarks/run_ours.py '<case json>' [--variant default|generate|plain]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from grpo_lightning.training.openmp import prepare_openmp

prepare_openmp()  # as the grpo-lightning command does, before torch loads: idle OpenMP threads sleep

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workloads import (  # noqa: E402
    MODELS,
    Case,
    PhaseTimer,
    build_model,
    build_tokenizer,
    digit_reward,
    emit,
    make_prompts,
    measuring_trainer,
    peak_rss_mb,
    set_threads,
)

VARIANTS = {
    # GRPOModule's defaults: the lean sampling loop, pi_old from the sampling pass, each prompt computed
    # once per group in the log-prob passes.
    "default": {},
    # transformers' generate for sampling (so pi_old is a forward pass again); shared prompts kept.
    "generate": {"rollout_engine": "hf"},
    # generate, pi_old recomputed, every row's prompt computed again (the LM-head changes stay on).
    "plain": {"rollout_engine": "hf"},
}


def main(case: Case, variant: str) -> None:
    import lightning as L
    from torch.utils.data import DataLoader

    import grpo_lightning.algorithm.update as update
    from grpo_lightning.logprobs import sequence_logprobs
    from grpo_lightning.module import GRPOModule

    threads = set_threads()
    torch.manual_seed(case.seed)
    spec = MODELS[case.model]
    tokenizer = build_tokenizer(spec)
    model = build_model(spec, tokenizer, seed=case.seed)
    rollouts = case.rollouts_warmup + case.rollouts_measured
    prompts = make_prompts(case.prompts_per_step * rollouts, case.seed, spec, tokenizer)
    loader = DataLoader(
        prompts, batch_size=case.prompts_per_step, collate_fn=lambda rows: {"prompt": list(rows)}
    )
    timer = PhaseTimer()

    def reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        with timer.phase("rewards"):
            return digit_reward(prompts, completions)

    module = GRPOModule(
        model=model,
        tokenizer=tokenizer,
        reward_funcs=[reward],
        num_generations=case.num_generations,
        max_completion_length=case.completion_length,
        # EOS blocked until the last token: every completion is exactly completion_length tokens
        generation_kwargs={"min_new_tokens": case.completion_length},
        temperature=1.0,
        beta=case.beta,
        num_iterations=case.num_iterations,
        warmup_steps=0,
        max_grad_norm=1.0,
        loss_type="dapo",
        scale_rewards="group",
        # The default optimizer (fused AdamW, as TRL's default), constant after warmup_steps=0.
        learning_rate=case.learning_rate,
        seed=case.seed,
        **{**VARIANTS[variant], **(case.module_settings or {})},
    )
    if variant == "plain":
        update.shared_prefix_logprobs = sequence_logprobs
    # Phase timers around the module's own calls.
    module.rollout_engine.generate = timer.wrap(module.rollout_engine.generate, "sampling")

    def logp_label(model: Any, *args: Any, **kwargs: Any) -> str:
        if torch.is_grad_enabled():
            return "policy_logp"
        return "ref_logp" if model is module.ref_model else "old_logp"

    update.shared_prefix_logprobs = timer.wrap(update.shared_prefix_logprobs, logp_label)
    module.manual_backward = timer.wrap(module.manual_backward, "backward")
    timer.time_optimizer_steps()
    memory = timer.trace_memory() if os.environ.get("BENCH_MEMTRACE") else None

    marks: list[float] = []
    cpu_marks: list[float] = []

    class StepClock(L.Callback):
        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            marks.append(time.perf_counter())
            cpu_marks.append(time.process_time())
            if len(marks) == case.rollouts_warmup:
                timer.reset()  # phases count only the measured steps

    # max_steps counts optimizer steps
    trainer = measuring_trainer(rollouts * case.num_iterations, StepClock(), devices=1)
    trainer.fit(module, train_dataloaders=loader)

    seconds = marks[-1] - marks[case.rollouts_warmup - 1]
    measured_steps = (len(marks) - case.rollouts_warmup) * case.num_iterations
    emit(
        {
            "system": f"grpo_lightning[{variant}]",
            "case": case.name,
            "optimizer_steps": measured_steps,
            "seconds": seconds,
            "step_s": seconds / measured_steps,
            # Process CPU time (all threads): with one thread on a busy machine it tracks the idle-machine time.
            "cpu_step_s": (cpu_marks[-1] - cpu_marks[case.rollouts_warmup - 1]) / measured_steps,
            "completion_tokens": case.rollouts_measured
            * case.prompts_per_step
            * case.num_generations
            * case.completion_length,
            "phases": dict(timer.seconds),
            "peak_rss_mb": peak_rss_mb(),
            "has_ref_model": module.ref_model is not None,
            "threads": threads,
            **({"peak_rss_mb_by_phase": dict(memory)} if memory is not None else {}),
        }
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("--variant", choices=list(VARIANTS), default="default")
    args = parser.parse_args()
    main(Case.from_json(args.case), args.variant)
