"""Accuracy on the held-out problems, scored as GRPO's validation scores it.

Completions come from the module's rollout engine and are judged by the module's accuracy reward
(:func:`grpo_lightning.evaluation.correct`), so these figures are the ones ``val/accuracy`` reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from datasets import Dataset

from grpo_lightning.data import PromptDataModule
from grpo_lightning.evaluation import correct
from grpo_lightning.model_eval import evaluate_batches
from grpo_lightning.module import GRPOModule
from grpo_lightning.scoring import ScoredRollout, sample_and_score

#: Seed of the sampled completions in :func:`final_evaluation` (greedy decoding ignores it).
EVAL_SEED = 12345


def batches(datamodule: PromptDataModule, data: Dataset, batch_size: int) -> Iterator[dict[str, Any]]:
    """Collated batches of ``data`` in order (``prompt``, ``input_ids`` [P, L], ``answer``, ...)."""
    collate = datamodule.collator
    for start in range(0, len(data), batch_size):
        yield collate([data[i] for i in range(start, min(start + batch_size, len(data)))])


def _scored(
    module: GRPOModule, batch: dict[str, Any], num_samples: int, seed: int
) -> tuple[ScoredRollout, torch.Tensor]:
    """``num_samples`` completions per prompt (0 = one greedy) and their correctness ``[P * max(n, 1)]``."""
    sampling = module.greedy if num_samples == 0 else module.sampling
    scored = sample_and_score(
        module,
        batch,
        num_generations=max(num_samples, 1),
        sampling=sampling,
        seed=seed,
        scorer=module.accuracy_scorer,
    )
    return scored, correct(module, scored)


@torch.no_grad()
def greedy_correct(
    module: GRPOModule, datamodule: PromptDataModule, data: Dataset, batch_size: int
) -> list[bool]:
    """Whether the greedy completion of each problem of ``data`` is correct, in order."""
    out: list[bool] = []
    for batch in batches(datamodule, data, batch_size):
        out += _scored(module, batch, 0, EVAL_SEED)[1].tolist()
    return out


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

    Returns validation's figures (:func:`grpo_lightning.model_eval.evaluate_batches`): ``accuracy``
    (greedy), ``mean@N``, unbiased ``pass@k`` and exact ``maj@k`` for k <= N; plus ``greedy`` (the
    same accuracy, under the name the report uses), ``num_samples`` and ``problems``: per problem its
    answer, greedy correctness, each sample's correctness and the sampled completions.
    """
    if num_samples < 2:
        raise ValueError(f"num_samples={num_samples}: the final evaluation samples at least 2 per problem.")
    records: list[dict[str, Any]] = []
    device = module.device

    def on_device() -> Iterator[dict[str, Any]]:
        for batch in batches(datamodule, data, batch_size):
            yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    figures = evaluate_batches(module, on_device(), num_samples, records)
    problems = [
        {
            "answer": r["answer"],
            "greedy_correct": r["correct"],
            "correct": r["samples_correct"],
            "completions": r["samples"],
        }
        for r in records
    ]
    return {**figures, "greedy": figures["accuracy"], "num_samples": num_samples, "problems": problems}
