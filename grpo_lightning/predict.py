"""``predict``: completions and rewards for a data set, written as JSON lines next to the run.

``grpo-lightning predict --config run.yaml --ckpt_path .../last.ckpt`` samples the greedy
completion (and ``val_num_samples`` sampled ones when that is above 1) of every prompt of the test
split (the validation split when the source has no test split), scores them with the module's
reward functions and writes one JSON object per completion to ``<run folder>/predictions.jsonl``.
From Python, give the Trainer a :class:`PredictionWriter` and call ``trainer.predict``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from grpo_lightning.evaluation import correct
from grpo_lightning.runs import run_directory
from grpo_lightning.scoring import ScoredRollout, sample_and_score
from grpo_lightning.seeds import SeedStream, stream_seed

if TYPE_CHECKING:
    from grpo_lightning.module import GRPOModule

#: Columns that are already in a record under another name, or too bulky to repeat per completion.
_SKIPPED_COLUMNS = ("completion_ids", "input_ids", "attention_mask", "prompt")


@torch.no_grad()
def predict_records(module: GRPOModule, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
    """One record per completion of the batch's prompts: the greedy one (``sample`` 0), then
    ``val_num_samples`` sampled ones when that is above 1, each with its rewards and correctness."""
    base, rank = module.base_seed(), module.global_rank
    seed = stream_seed(base, rank, batch_idx, SeedStream.EVALUATION)
    greedy = sample_and_score(
        module, batch, num_generations=1, sampling=module.greedy, seed=seed, scorer=module.scorer
    )
    records = _records(module, greedy, "greedy", 1)
    k = module.hparams.val_num_samples
    if k > 1:
        seed = stream_seed(base, rank, batch_idx, SeedStream.EVALUATION_SAMPLES)
        sampled = sample_and_score(
            module, batch, num_generations=k, sampling=module.sampling, seed=seed, scorer=module.scorer
        )
        records += _records(module, sampled, "sampled", k)
    return records


def _records(module: GRPOModule, scored: ScoredRollout, kind: str, group: int) -> list[dict[str, Any]]:
    """``group`` completions per prompt, in prompt order."""
    ok = correct(module, scored).tolist()
    out = []
    for i, completion in enumerate(scored.completions):
        record: dict[str, Any] = {
            "prompt": scored.prompts[i],
            "kind": kind,
            "sample": i % group,
            "completion": completion,
            "reward": _number(scored.total[i]),
            "rewards": {n: _number(scored.per_func[i, k]) for k, n in enumerate(module.scorer.names)},
            "correct": bool(ok[i]),
        }
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
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a") as f:
            for record in prediction:
                f.write(json.dumps(record) + "\n")
        self.written += len(prediction)
