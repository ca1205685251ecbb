"""Accuracy on the held-out problems, scored as GRPO's validation scores it.

Both functions run validation's own evaluation (:func:`grpo_lightning.evaluation.model_eval.evaluate_batches`:
the module's rollout engine, its accuracy reward, validation's seeds), so the figures are the ones
``val/accuracy``, ``val/pass@k`` and ``val/maj@k`` report.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from datasets import Dataset

from grpo_lightning.data import PromptDataModule
from grpo_lightning.evaluation.evaluator import Evaluator
from grpo_lightning.evaluation.model_eval import evaluate_batches
from grpo_lightning.module import GRPOModule
from grpo_lightning.rewards.gsm8k import final_answer_text


def batches(datamodule: PromptDataModule, data: Dataset, batch_size: int) -> Iterator[dict[str, Any]]:
    """Collated batches of ``data`` in order (``prompt``, ``input_ids`` [P, L], ``answer``, ...)."""
    collate = datamodule.collator
    for start in range(0, len(data), batch_size):
        yield collate([data[i] for i in range(start, min(start + batch_size, len(data)))])


@torch.no_grad()
def greedy_accuracy(
    module: GRPOModule, datamodule: PromptDataModule, data: Dataset, batch_size: int
) -> float:
    """Share of the problems of ``data`` whose greedy completion is correct: ``val/accuracy``."""
    batches = _on_device(module, datamodule, data, batch_size)
    return evaluate_batches(_evaluator(module, 1), batches, module.base_seed())["accuracy"]


def _evaluator(module: GRPOModule, num_samples: int) -> Evaluator:
    """The module's validation evaluator, with ``num_samples`` samples per problem."""
    module.configure_model()
    assert module.evaluator is not None
    return replace(module.evaluator, num_samples=num_samples)


def _on_device(
    module: GRPOModule, datamodule: PromptDataModule, data: Dataset, batch_size: int
) -> Iterator[dict[str, Any]]:
    """:func:`batches` with their tensors on the module's device, as Lightning hands them to a step."""
    for batch in batches(datamodule, data, batch_size):
        yield {k: v.to(module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def final_evaluation(
    module: GRPOModule,
    datamodule: PromptDataModule,
    data: Dataset,
    *,
    num_samples: int,
    batch_size: int,
) -> dict[str, Any]:
    """The end-of-run evaluation of the module's current weights with ``num_samples`` (N) per problem.

    Returns validation's figures (:func:`grpo_lightning.evaluation.model_eval.evaluate_batches`): ``accuracy``
    (greedy), ``mean@N``, unbiased ``pass@k`` and exact ``maj@k`` for k <= N; plus ``greedy`` (the
    same accuracy, under the name the report uses), ``num_samples`` and ``problems``: per problem its
    answer, greedy completion and correctness, each sample's correctness and the sampled completions;
    ``greedy_format``: the share of greedy completions with a marked final answer (``####`` or ``\\boxed{}``).
    """
    if num_samples < 2:
        raise ValueError(f"num_samples={num_samples}: the final evaluation samples at least 2 per problem.")
    records: list[dict[str, Any]] = []
    batches = _on_device(module, datamodule, data, batch_size)
    figures = evaluate_batches(_evaluator(module, num_samples), batches, module.base_seed(), records)
    problems = [
        {
            "answer": r["answer"],
            "greedy_correct": r["correct"],
            "greedy_completion": r["greedy"],
            "correct": r["samples_correct"],
            "completions": r["samples"],
        }
        for r in records
    ]
    # The format the accuracy reward reads: a "####" answer line or a \boxed{} (whether right or not).
    marked = [final_answer_text(r["greedy"]) is not None for r in records]
    return {
        **figures,
        "greedy": figures["accuracy"],
        "greedy_format": sum(marked) / len(marked),
        "num_samples": num_samples,
        "problems": problems,
    }
