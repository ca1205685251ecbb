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
    """The end-of-run evaluation of the module's current weights with ``num_samples`` per problem.

    Returns ``greedy`` (accuracy), ``mean@N`` (share of correct samples), ``pass@N`` (share of
    problems with at least one correct sample) and ``problems``: per problem its greedy correctness,
    the correctness of each sample and the sampled completions, from which estimators over k <= N
    (unbiased pass@k, maj@k) can be computed.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples}: sample at least 1 completion per problem.")
    problems: list[dict[str, Any]] = []
    for i, batch in enumerate(batches(datamodule, data, batch_size)):
        greedy = _scored(module, batch, 0, EVAL_SEED)[1].tolist()
        scored, ok = _scored(module, batch, num_samples, EVAL_SEED + 1 + i)
        ok = ok.view(-1, num_samples).tolist()
        for p, answer in enumerate(batch["answer"]):
            problems.append(
                {
                    "answer": answer,
                    "greedy_correct": greedy[p],
                    "correct": ok[p],
                    "completions": scored.completions[p * num_samples : (p + 1) * num_samples],
                }
            )
    n = len(problems)
    return {
        "num_samples": num_samples,
        "greedy": sum(p["greedy_correct"] for p in problems) / n,
        f"mean@{num_samples}": sum(sum(p["correct"]) for p in problems) / (n * num_samples),
        f"pass@{num_samples}": sum(any(p["correct"]) for p in problems) / n,
        "problems": problems,
    }
