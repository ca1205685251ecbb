"""``predict``: completions and rewards for a data set, written as JSON lines next to the run.

``grpo-lightning predict --config run.yaml --ckpt_path .../last.ckpt`` samples the greedy
completion (and ``val_num_samples`` sampled ones when that is above 1) of every prompt of the test
split (the validation split when the source has no test split), scores them with the module's
reward functions and writes one JSON object per completion to ``<run folder>/predictions.jsonl``.
From Python, give the Trainer a :class:`PredictionWriter` and call ``trainer.predict``.

Prompts without gold answers (``require_answer: false``) are predicted too: a reward that needs a
column the data lacks (the accuracy reward's ``answer``) is not called; its value and ``correct``
are null, each such record's ``skipped_rewards`` says why, and the writer says so once.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from grpo_lightning.evaluation.skipped_rewards import reward_columns, skipped_rewards, skipping_scorer
from grpo_lightning.rewards.scorer import RewardScorer
from grpo_lightning.rollout.engine import SamplingConfig
from grpo_lightning.rollout.sampler import Sampler
from grpo_lightning.rollout.scoring import ScoredRollout
from grpo_lightning.rollout.seeds import SeedStream
from grpo_lightning.run.folders import run_directory

#: Columns that are already in a record under another name, or too bulky to repeat per completion.
_SKIPPED_COLUMNS = ("completion_ids", "input_ids", "attention_mask", "prompt")


@torch.no_grad()
def predict_records(
    sampler: Sampler,
    batch: dict[str, Any],
    seed: Callable[[SeedStream], int],
    greedy: SamplingConfig,
    num_samples: int,
    correct: Callable[[ScoredRollout], Tensor],
    accuracy: RewardScorer | None = None,
) -> list[dict[str, Any]]:
    """One record per completion of the batch's prompts: the greedy one (``sample`` 0), then
    ``num_samples`` ones sampled with the sampler's settings when that is above 1, each with its
    rewards and ``correct(scored)`` (``[N]`` bool). ``seed(stream)``: the batch's seed of the
    :attr:`~SeedStream.EVALUATION` (greedy) and :attr:`~SeedStream.EVALUATION_SAMPLES` streams.

    A reward that needs a column the batch lacks is not called (null, and named in the record's
    ``skipped_rewards``); when ``accuracy`` (the scorer behind ``correct``) is such a reward,
    ``correct`` is null."""
    columns = reward_columns(batch)
    skipped = skipped_rewards(sampler.scorer.names, sampler.scorer.funcs, columns)
    scorer = skipping_scorer(sampler.scorer, skipped) if skipped else None
    unjudged = skipped_rewards(accuracy.names, accuracy.funcs, columns) if accuracy is not None else {}
    skipped.update({name: f"{why}; so 'correct' is null" for name, why in unjudged.items()})

    def judge(scored: ScoredRollout) -> list[bool | None]:
        return [None] * len(scored.completions) if unjudged else correct(scored).tolist()

    scored = sampler.sample(
        batch, seed(SeedStream.EVALUATION), num_generations=1, sampling=greedy, scorer=scorer  # type: ignore[arg-type]
    )
    records = _records(scored, "greedy", 1, sampler.scorer.names, judge(scored), skipped)
    if num_samples > 1:
        scored = sampler.sample(
            batch,
            seed(SeedStream.EVALUATION_SAMPLES),
            num_generations=num_samples,
            sampling=sampler.sampling,
            scorer=scorer,  # type: ignore[arg-type]
        )
        records += _records(scored, "sampled", num_samples, sampler.scorer.names, judge(scored), skipped)
    return records


def _records(
    scored: ScoredRollout,
    kind: str,
    group: int,
    names: Sequence[str],
    ok: list[bool | None],
    skipped: dict[str, str],
) -> list[dict[str, Any]]:
    """``group`` completions per prompt, in prompt order; ``ok``: [N] correctness (None: unknown)."""
    out = []
    for i, completion in enumerate(scored.completions):
        record: dict[str, Any] = {
            "prompt": scored.prompts[i],
            "kind": kind,
            "sample": i % group,
            "completion": completion,
            "reward": _number(scored.total[i]),
            "rewards": {n: _number(scored.per_func[i, k]) for k, n in enumerate(names)},
            "correct": None if ok[i] is None else bool(ok[i]),
        }
        if skipped:
            record["skipped_rewards"] = dict(skipped)
        for key, value in scored.columns.items():
            if key not in _SKIPPED_COLUMNS and isinstance(value, Sequence) and not isinstance(value, str):
                record.setdefault(key, _plain(value[i]))
        out.append(record)
    return out


def _number(value: torch.Tensor) -> float | None:
    v = float(value)
    return None if v != v else v  # NaN (not applicable) -> null


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)


class PredictionWriter(BasePredictionWriter):
    """Appends each predict batch's records to a JSON-lines file (one per rank past rank 0).

    Args:
        path: The file; default ``<run folder>/predictions.jsonl`` (see :func:`run_directory`).
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self.written = 0
        self.skipped: dict[str, str] = {}  # the rewards not called, and why (said once each)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        path = self.path or os.path.join(run_directory(trainer), "predictions.jsonl")
        if trainer.global_rank > 0:
            stem, ext = os.path.splitext(path)
            path = f"{stem}.rank{trainer.global_rank}{ext}"
        self.path = path
        if os.path.exists(path):
            raise FileExistsError(
                f"{path} exists: predictions never overwrite a file. Move it or give another path."
            )
        # The file is made with the first records: a predict that fails before writing leaves none.

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        assert self.path is not None
        self._say_skipped(trainer, prediction)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a") as f:
            for record in prediction:
                f.write(json.dumps(record) + "\n")
        self.written += len(prediction)

    def _say_skipped(self, trainer: Trainer, records: Sequence[dict[str, Any]]) -> None:
        """One line for the rewards not called that this run has not named yet."""
        new = {}
        for record in records:
            new.update({k: v for k, v in record.get("skipped_rewards", {}).items() if k not in self.skipped})
        self.skipped.update(new)
        if new and trainer.is_global_zero:
            why = "; ".join(f"{name!r} {reason}" for name, reason in new.items())
            warnings.warn(
                f"predict: rewards not called: {why}. Their values are null in {self.path}, where each record's "
                "'skipped_rewards' says why; the completions and the other rewards are written as usual.",
                stacklevel=2,
            )
