"""Worker: run one benchmark case with TRL's GRPOTrainer and print its timings as one JSON line.

Started in its own process by bench_vs_trl.py (so peak memory is this system's alone):
    python benchmarks/run_trl.py '<case json>'
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workloads import (
    MODELS,
    Case,
    PhaseTimer,
    build_model,
    build_tokenizer,
    digit_reward,
    emit,
    make_prompts,
    peak_rss_mb,
    set_threads,
)

# TRL's fastest settings for this job on CPU; printed by the orchestrator.
TRL_SETTINGS: dict[str, Any] = {
    "gradient_checkpointing": False,  # recomputation only saves memory; it costs ~30% time
    "bf16": False,  # fp32 on both sides
    "use_cpu": True,
    "logging_steps": 1000,  # log once: TRL's per-log gather and print are not part of the step
    "report_to": "none",
    "save_strategy": "no",
    "disable_tqdm": True,
    "dataloader_num_workers": 0,
    "optim": "adamw_torch_fused",  # TRL's default, the fastest AdamW on CPU
    "max_grad_norm": 1.0,
    "lr_scheduler_type": "constant",
    "loss_type": "dapo",
    "scale_rewards": "group",
}


def main(case: Case) -> None:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    threads = set_threads()
    torch.manual_seed(case.seed)
    spec = MODELS[case.model]
    tokenizer = build_tokenizer(spec)
    model = build_model(spec, tokenizer, seed=case.seed)
    rollouts = case.rollouts_warmup + case.rollouts_measured
    n_prompts = case.prompts_per_step * rollouts
    dataset = Dataset.from_dict({"prompt": make_prompts(n_prompts, case.seed, spec, tokenizer)})
    batch = case.prompts_per_step * case.num_generations

    timer = PhaseTimer()

    def reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        with timer.phase("rewards"):
            return digit_reward(prompts, completions)

    reward.__name__ = "digit_reward"
    with tempfile.TemporaryDirectory() as out_dir:
        # TRL loads the reference model from the policy's path, so hand it a saved checkpoint.
        model_dir = os.path.join(out_dir, "model")
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        del model
        args = GRPOConfig(
            output_dir=out_dir,
            per_device_train_batch_size=batch,
            num_generations=case.num_generations,
            gradient_accumulation_steps=1,
            steps_per_generation=1,
            num_iterations=case.num_iterations,
            max_completion_length=case.completion_length,
            # EOS blocked until the last token: every completion is exactly completion_length tokens
            generation_kwargs={"min_new_tokens": case.completion_length},
            temperature=1.0,
            beta=case.beta,
            learning_rate=case.learning_rate,
            max_steps=rollouts * case.num_iterations,
            seed=case.seed,
            model_init_kwargs={"dtype": torch.float32},
            **TRL_SETTINGS,
        )
        trainer = GRPOTrainer(
            model=model_dir, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tokenizer
        )

        # Phase timers: wrap the trainer's own calls (instance attributes shadow the methods).
        policy = trainer.model
        policy.generate = timer.wrap(policy.generate, "sampling")
        ref_model = trainer.ref_model

        def logp_label(model: Any, *args: Any, **kwargs: Any) -> str:
            if torch.is_grad_enabled():
                return "policy_logp"
            return "ref_logp" if model is ref_model else "old_logp"

        trainer._get_per_token_logps_and_entropies = timer.wrap(
            trainer._get_per_token_logps_and_entropies, logp_label
        )
        trainer.accelerator.backward = timer.wrap(trainer.accelerator.backward, "backward")
        timer.time_optimizer_steps()
        memory = timer.trace_memory() if os.environ.get("BENCH_MEMTRACE") else None

        marks: list[float] = []
        cpu_marks: list[float] = []
        warmup_steps = case.rollouts_warmup * case.num_iterations

        class StepClock(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                marks.append(time.perf_counter())
                cpu_marks.append(time.process_time())
                if len(marks) == warmup_steps:
                    timer.reset()  # phases count only the measured steps

        trainer.add_callback(StepClock())
        trainer.train()

    measured_steps = len(marks) - warmup_steps
    seconds = marks[-1] - marks[warmup_steps - 1]
    emit(
        {
            "system": "trl",
            "case": case.name,
            "optimizer_steps": measured_steps,
            "seconds": seconds,
            "step_s": seconds / measured_steps,
            # Process CPU time (all threads): with one thread on a busy machine it tracks the idle-machine time.
            "cpu_step_s": (cpu_marks[-1] - cpu_marks[warmup_steps - 1]) / measured_steps,
            "completion_tokens": case.rollouts_measured * batch * case.completion_length,
            "phases": dict(timer.seconds),
            "peak_rss_mb": peak_rss_mb(),
            "has_ref_model": ref_model is not None,
            "threads": threads,
            **({"peak_rss_mb_by_phase": dict(memory)} if memory is not None else {}),
        }
    )


if __name__ == "__main__":
    main(Case.from_json(sys.argv[1]))
