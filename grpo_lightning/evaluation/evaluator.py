"""The evaluation of a batch of prompts: greedy and sampled completions, their correctness and answers.

:class:`Evaluator` holds what evaluation needs (the sampler, the greedy settings, the accuracy
reward and its threshold, N samples per prompt, the collectives) and nothing of Lightning, so the
module's validation and test steps, its predict step and
:func:`~grpo_lightning.evaluation.model_eval.evaluate_model` (no Trainer) all run the same code.
The figures and their names are described in :mod:`grpo_lightning.evaluation.steps`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from grpo_lightning.evaluation.metrics import majority_at_k_batch, mean_at_n, pass_at_k
from grpo_lightning.evaluation.predict import predict_records
from grpo_lightning.rewards.scorer import RewardScorer
from grpo_lightning.rollout.engine import SamplingConfig
from grpo_lightning.rollout.sampler import Sampler
from grpo_lightning.rollout.scoring import ScoredRollout
from grpo_lightning.rollout.seeds import SeedStream
from grpo_lightning.training.collectives import Collectives

#: The optional column that names each row's source; figures are then also given per source.
SOURCE_COLUMN = "source"
#: The accuracy reward's method that gives a completion's answer (a hashable; None = no answer).
ANSWER_METHOD = "extract_answer"

#: ``seed(stream)``: a batch's seed of the evaluation streams (``stream_seed`` with the base seed,
#: the rank and the batch index given).
BatchSeed = Callable[[SeedStream], int]


@dataclass
class BatchEvaluation:
    """The scored completions of one batch of P prompts and their correctness."""

    greedy: ScoredRollout
    """P rows, scored with every reward function."""
    greedy_correct: Tensor
    """[P] bool."""
    sampled: ScoredRollout | None = None
    """P * N rows (N per prompt, prompt-major), scored with the accuracy reward; None when N == 1."""
    sample_correct: Tensor | None = None
    """[P, N] bool."""
    answers: list[list[Hashable | None]] | None = None
    """[P][N] the answer of each sample; None when the accuracy reward extracts none."""
    sources: list[str] | None = None
    """[P] each row's source; None without a ``source`` column."""

    def figures(self, ks: list[int]) -> dict[str, Tensor]:
        """Each figure's ``[P]`` float64 per-problem values: ``accuracy``, then with samples ``mean@N``,
        ``pass@k`` and ``maj@k`` for each k of ``ks``. Their means over problems are the metrics."""
        out = {"accuracy": self.greedy_correct.to(torch.float64)}
        if self.sample_correct is None:
            return out
        n = self.sample_correct.shape[1]
        out[f"mean@{n}"] = mean_at_n(self.sample_correct)
        passes = pass_at_k(self.sample_correct.sum(dim=1), n)  # [P, N]
        out.update({f"pass@{k}": passes[:, k - 1] for k in ks})
        if self.answers is not None:
            majority = majority_at_k_batch(self.answers, self.sample_correct)  # [P, N]
            out.update({f"maj@{k}": majority[:, k - 1] for k in ks})
        return out


def source_figures(figures: dict[str, Tensor], num_samples: int) -> list[str]:
    """The figures also given per source: greedy accuracy, and with samples mean@N, pass@N, maj@N."""
    wanted = ["accuracy", *(f"{m}@{num_samples}" for m in ("mean", "pass", "maj"))]
    return [name for name in wanted if name in figures]


def batch_sources(batch: dict[str, Any]) -> list[str] | None:
    """The batch's ``source`` column as strings (None without one); a missing source is refused."""
    if SOURCE_COLUMN not in batch:
        return None
    values = list(batch[SOURCE_COLUMN])
    missing = [i for i, v in enumerate(values) if v is None or str(v) == ""]
    if missing:
        raise ValueError(
            f"Rows {missing[:5]} of a batch have no '{SOURCE_COLUMN}' (None or empty): figures per source need "
            f"one on every row. Fill it in, or drop the '{SOURCE_COLUMN}' column."
        )
    return [str(v) for v in values]


@dataclass(eq=False)
class Evaluator:
    """Greedy accuracy and N samples per prompt of a batch, judged by the accuracy reward."""

    sampler: Sampler
    """Samples and scores (its scorer: the training rewards, which score the greedy completions)."""
    greedy: SamplingConfig
    """The greedy settings (the sampler's settings with ``do_sample=False``)."""
    accuracy: RewardScorer
    """The one reward that decides correctness (and scores the N samples)."""
    accuracy_threshold: float
    """A completion is correct when its accuracy reward is at least this."""
    num_samples: int
    """N, sampled completions per prompt (1: greedy only)."""
    collectives: Collectives
    """The other ranks: every rank logs the sources any rank saw."""

    def correct(self, scored: ScoredRollout) -> Tensor:
        """``[N]`` bool: the accuracy reward of each completion is >= the threshold (NaN: wrong)."""
        scorer, fn = self.sampler.scorer, self.accuracy.funcs[0]
        if scored.per_func.shape[1] == len(scorer) and fn in scorer.funcs:
            values = scored.per_func[:, scorer.funcs.index(fn)]  # already computed
        else:
            values = self.accuracy.score(scored.prompts, scored.completions, scored.columns)[:, 0]
        return values >= self.accuracy_threshold  # NaN compares False

    def answer_extractor(self) -> Callable[[str], Hashable | None] | None:
        """The accuracy reward's ``extract_answer`` (the shipped accuracy rewards have one), else None."""
        return getattr(self.accuracy.funcs[0], ANSWER_METHOD, None)

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any], seed: BatchSeed) -> BatchEvaluation:
        """Greedy completions of a batch (scored with every reward) and, when N > 1, N sampled ones
        per prompt (scored with the accuracy reward), with their extracted answers."""
        sampler, n = self.sampler, self.num_samples
        greedy = sampler.sample(batch, seed(SeedStream.EVALUATION), num_generations=1, sampling=self.greedy)
        result = BatchEvaluation(greedy, self.correct(greedy), sources=batch_sources(batch))
        if n == 1:
            return result
        sampled = sampler.sample(
            batch,
            seed(SeedStream.EVALUATION_SAMPLES),
            num_generations=n,
            sampling=sampler.sampling,
            scorer=self.accuracy,
        )
        result.sampled = sampled
        ok = sampled.per_func[:, 0] >= self.accuracy_threshold  # NaN compares False
        result.sample_correct = ok.view(-1, n)
        extract = self.answer_extractor()
        if extract is not None:
            flat = [extract(c) for c in sampled.completions]
            result.answers = [flat[i : i + n] for i in range(0, len(flat), n)]
        else:  # shown once per reward name (the warnings module drops repeats of the same text)
            rank_zero_warn(
                f"maj@k is left out: the accuracy reward {self.accuracy.names[0]!r} has no "
                f"'{ANSWER_METHOD}(completion)' method giving the answer each completion votes for. Add one "
                "(returning a hashable answer, or None) to get maj@k."
            )
        return result

    def all_sources(self, local: list[str]) -> list[str]:
        """The sources of this batch on every rank, sorted: each rank must log the same metrics in
        the same order, or the reductions at the end of the loop would pair different metrics (or
        wait for one that a rank never logged)."""
        gathered = self.collectives.all_gather_object(sorted(set(local)))
        return sorted({name for part in gathered for name in part})

    def predict(self, batch: dict[str, Any], seed: BatchSeed) -> list[dict[str, Any]]:
        """The batch's prediction records (see :func:`~grpo_lightning.evaluation.predict.predict_records`)."""
        return predict_records(
            self.sampler, batch, seed, self.greedy, self.num_samples, self.correct, self.accuracy
        )
