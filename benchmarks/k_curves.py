"""pass@k and maj@k against k before and after GRPO on the shipped tiny model.

Trains ``builtin:tiny-math`` with GRPO (gsm8k_accuracy, G = 8, 16 prompts
per step, lr 5e-5, beta 0.01) for ``--steps`` optimizer steps on fresh 3-operation problems, and
evaluates the starting and the trained policy on the same ``--problems`` held-out problems with
``--samples`` samples each (``grpo_lightning.evaluation.model_eval.evaluate_model``). Writes the figures as JSON
and the plot as PNG; prints a table and the CPU time of each part.

    python benchmarks/k_curves.py --steps 60 --out benchmarks/results/k-curves-tiny-math

DeepSeekMath (Shao et al. 2024) reports that RL raises maj@k more than pass@k: the table says
whether it does here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from grpo_lightning import GRPOModule, PromptDataModule
from grpo_lightning.data.synthetic import generate_problems
from grpo_lightning.evaluation.model_eval import evaluate_model, plot_k_curves

TEMPLATE = "Q: {question}\nA: "
PROBLEMS = {"min_steps": 3, "max_steps": 3, "max_operand": 10}
HELD_OUT_SEED = 12345  # the training problems come from the data module's own seed


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="GRPO optimizer steps")
    parser.add_argument("--problems", type=int, default=200, help="held-out problems")
    parser.add_argument("--samples", type=int, default=8, help="samples per problem (N)")
    parser.add_argument("--train-size", type=int, default=2000, help="training problems")
    parser.add_argument(
        "--out", default="benchmarks/results/k-curves-tiny-math", help="path without extension"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pl.seed_everything(0)
    problems = generate_problems(args.problems, seed=HELD_OUT_SEED, **PROBLEMS)
    settings = {"num_samples": args.samples, "prompt_template": TEMPLATE, "max_completion_length": 48}

    start = time.process_time()
    before = evaluate_model("builtin:tiny-math", problems, **settings)
    eval_cpu = time.process_time() - start
    module = GRPOModule(
        "builtin:tiny-math",
        reward_funcs=["gsm8k_accuracy"],
        num_generations=8,
        max_completion_length=48,
        learning_rate=5e-5,
        warmup_steps=0,
        beta=0.01,
    )
    data = PromptDataModule(
        dataset="synthetic",
        prompt_template=TEMPLATE,
        batch_size=16,
        synthetic={"train_size": args.train_size, "val_size": 0, "test_size": 0, **PROBLEMS},
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    start = time.process_time()
    trainer.fit(module, datamodule=data)
    train_cpu = time.process_time() - start
    after = evaluate_model(module.policy, problems, tokenizer=module.tokenizer, **settings)

    results = {"before": before, f"after {args.steps} GRPO steps": after}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    title = f"builtin:tiny-math, {args.problems} held-out problems, N = {args.samples}"
    plot_k_curves(results, out.with_suffix(".png"), title=title)
    n = args.samples
    print(f"{'figure':<10} {'before':>7} {'after':>7} {'change':>7}")
    for name in ["accuracy", f"mean@{n}", *(f"{m}@{k}" for m in ("pass", "maj") for k in (1, n // 2, n))]:
        if name in before:
            print(f"{name:<10} {before[name]:7.3f} {after[name]:7.3f} {after[name] - before[name]:+7.3f}")
    print(f"CPU time: evaluation {eval_cpu:.1f} s per model, training {train_cpu:.1f} s")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return results


if __name__ == "__main__":
    main()
