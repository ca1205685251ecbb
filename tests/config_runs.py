"""Running the shipped configs shrunk to CPU: the one set of overrides, local stand-in data, and the
worker that runs several CLI invocations in one (possibly distributed) process.

``shrink_args(configs, data_dir)`` gives the command line for ``configs`` (a recipe, optionally followed by
a trainer preset); the overrides are the same for every config. As a script
(``python config_runs.py RUNS.json OUT.jsonl``) it runs each argument list of RUNS.json with
``grpo_lightning.cli.app.main`` in turn; Lightning launches the second process of a distributed preset, and
both processes then run every later config too. Rank 0 appends one JSON line per run to OUT.jsonl.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
RECIPES = sorted(CONFIG_DIR.glob("*.yaml"))
PRESETS = sorted((CONFIG_DIR / "trainer").glob("*.yaml"))

#: Hub data sets the recipes name -> the local stand-in of the same shape (a folder under data_dir).
STAND_INS = {
    "openai/gsm8k": "gsm8k",
    "DigitalLearningGmbH/MATH-lighteval": "math",
    "HuggingFaceH4/MATH-500": "math500",
}

DISTRIBUTED_DEVICES = 2


def _merged(configs: list[Path]) -> dict[str, Any]:
    """The configs' top-level sections merged one level deep (later files win), as the CLI reads them."""
    merged: dict[str, dict[str, Any]] = {}
    for path in configs:
        for section, values in (yaml.safe_load(path.read_text()) or {}).items():
            if isinstance(values, dict):
                merged.setdefault(section, {}).update(values)
    return merged


def is_distributed(configs: list[Path]) -> bool:
    """Whether the configs choose a multi-process strategy."""
    return _merged(configs).get("trainer", {}).get("strategy", "auto") not in ("auto", None)


def shrink_args(configs: list[Path], data_dir: Path) -> list[str]:
    """``fit`` on ``configs`` shrunk to CPU: 2 optimizer steps of the tiny model on local data.

    The same overrides apply to every config; only the data stand-in (by the Hub name the recipe gives)
    and the number of processes (2 where the preset is distributed) follow from the config itself.
    """
    data = _merged(configs).get("data", {})
    args = ["fit", *(f"--config={path}" for path in configs)]
    args += [
        "--trainer.accelerator=cpu",
        f"--trainer.devices={DISTRIBUTED_DEVICES if is_distributed(configs) else 1}",
        "--trainer.max_steps=2",  # with steps_per_rollout=2: one rollout, two optimizer steps
        "--trainer.val_check_interval=1",  # validate after that rollout (the recipes say every 25-50)
        "--trainer.limit_val_batches=1",  # also caps the sanity check
        "--trainer.enable_progress_bar=false",
        "--model.model=builtin:tiny-math",
        "--model.num_generations=4",
        "--model.max_completion_length=8",
        "--model.steps_per_rollout=2",
        "--model.micro_batch_size=2",  # 2 prompts x 4 completions / 2 steps = 4 rows: 2 micro-batches
        "--data.batch_size=2",
        "--data.val_batch_size=2",
        "--data.max_train_samples=8",
        "--data.max_val_samples=4",
        "--data.use_chat_template=false",  # the tiny model has no chat template
        # A recipe's LoRA names its own model's layers (layers_to_transform), which the tiny model lacks;
        # test_smollm2_recipe.py trains that recipe's adapter on its real model. Without the adapter
        # there is nothing to merge on export (a merge_lora the recipe sets would be refused).
        "--model.lora=null",
        "--export.merge_lora=false",
    ]
    for key in ("dataset", "val_dataset"):
        source = data.get(key)
        if source is None or source == "synthetic":
            continue
        if source not in STAND_INS:
            raise KeyError(f"No local stand-in for data set {source!r}: add one to STAND_INS.")
        args.append(f"--data.{key}={data_dir / STAND_INS[source]}")
    return args


def write_stand_ins(data_dir: Path) -> None:
    """Small GSM8K-, MATH- and MATH-500-shaped data sets (``save_to_disk`` folders) with their columns."""
    from datasets import Dataset, DatasetDict

    from grpo_lightning.data.synthetic import generate_problems

    def rows(n: int, seed: int) -> list[dict[str, str]]:
        return generate_problems(n, seed=seed, min_steps=1, max_steps=2, max_operand=9)

    def gsm8k(n: int, seed: int) -> Dataset:  # question / answer = worked solution + "#### <answer>"
        return Dataset.from_list(
            [{"question": r["question"], "answer": r["solution"]} for r in rows(n, seed)]
        )

    def math(n: int, seed: int, with_answer: bool) -> Dataset:  # problem / solution (+ answer), \boxed{}
        return Dataset.from_list(
            [
                {
                    "problem": r["question"],
                    "solution": f"{r['solution'].split(' ####')[0]}, so the answer is $\\boxed{{{r['answer']}}}$.",
                    "level": "Level 1",
                    "type": "Prealgebra",
                    **({"answer": r["answer"]} if with_answer else {}),
                }
                for r in rows(n, seed)
            ]
        )

    DatasetDict({"train": gsm8k(8, 1), "test": gsm8k(4, 2)}).save_to_disk(data_dir / "gsm8k")
    DatasetDict({"train": math(8, 3, False), "test": math(4, 4, False)}).save_to_disk(data_dir / "math")
    DatasetDict({"test": math(4, 5, True)}).save_to_disk(data_dir / "math500")


def summary(cli: Any) -> dict[str, Any]:
    """What a finished run did: steps, processes, strategy and its mesh, precision, the exported model."""
    trainer = cli.trainer
    strategy = trainer.strategy
    mesh = getattr(strategy, "_device_mesh", None)
    exported = glob.glob(os.path.join(trainer.log_dir or ".", "hf_model", "model.safetensors"))
    return {
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "strategy": type(strategy).__name__,
        "data_parallel_size": None if mesh is None else mesh["data_parallel"].size(),
        "precision": trainer.precision,
        "validated": "val/accuracy" in trainer.callback_metrics,
        "exported": bool(exported),
    }


def main(runs_file: str, out_file: str) -> None:
    import torch

    from grpo_lightning.cli.app import main as cli_main

    torch.set_num_threads(1)
    for args in json.loads(Path(runs_file).read_text()):
        cli = cli_main(args)
        result = summary(cli)  # on every rank: reading trainer.log_dir is a collective
        if cli.trainer.global_rank == 0:
            with open(out_file, "a") as out:
                out.write(json.dumps({"args": args, **result}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
