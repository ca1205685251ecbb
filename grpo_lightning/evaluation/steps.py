"""Validation and test: greedy accuracy, and from ``val_num_samples`` (N) sampled completions per
prompt mean@N, unbiased pass@k and maj@k (:mod:`grpo_lightning.evaluation.metrics`); figures per source when
the rows carry a ``source`` column.

Every figure is a torchmetrics ``MeanMetric`` over problems, logged with ``on_epoch=True``, so
Lightning reduces it over every batch and every device before it reaches the loggers. Names
(``val/`` or ``test/`` first):

- ``accuracy``: greedy completions scored correct by the accuracy reward; ``reward``,
  ``completions/mean_length``: the greedy completions' total reward and length.
- with N > 1: ``mean@N`` (share of the N samples that are correct), ``pass@k`` and ``maj@k`` for
  the k of :func:`~grpo_lightning.evaluation.metrics.report_ks` (every k up to 16 samples). maj@k votes with the
  answers the accuracy reward extracts (its ``extract_answer`` method; a reward without one gets
  no maj@k, with a warning).
- with a ``source`` column: ``<source>/accuracy`` and, with N > 1, ``<source>/mean@N``,
  ``<source>/pass@N``, ``<source>/maj@N``.

``module`` below is a ``GRPOModule`` after ``configure_model``: its ``sampler`` samples and scores,
``greedy`` holds the greedy settings, ``scorer`` / ``accuracy_scorer`` the rewards.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric

from grpo_lightning.evaluation.metrics import majority_at_k_batch, mean_at_n, pass_at_k, report_ks
from grpo_lightning.rollout.scoring import ScoredRollout
from grpo_lightning.rollout.seeds import SeedStream, stream_seed

#: The optional column that names each row's source; figures are then also given per source.
SOURCE_COLUMN = "source"
#: The accuracy reward's method that gives a completion's answer (a hashable; None = no answer).
ANSWER_METHOD = "extract_answer"


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


def answer_extractor(module: LightningModule) -> Callable[[str], Hashable | None] | None:
    """The accuracy reward's ``extract_answer`` (the shipped accuracy rewards have one), else None."""
    return getattr(module.accuracy_scorer.funcs[0], ANSWER_METHOD, None)


def correct(module: LightningModule, scored: ScoredRollout) -> Tensor:
    """``[N]`` bool: the accuracy reward of each completion is >= ``accuracy_threshold`` (NaN: wrong)."""
    scorer = module.accuracy_scorer
    fn = scorer.funcs[0]
    if scored.per_func.shape[1] == len(module.scorer) and fn in module.scorer.funcs:
        values = scored.per_func[:, module.scorer.funcs.index(fn)]  # already computed
    else:
        values = scorer.score(scored.prompts, scored.completions, scored.columns)[:, 0]
    return values >= module.hparams.accuracy_threshold  # NaN compares False


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


@torch.no_grad()
def evaluate_batch(
    module: LightningModule, batch: dict[str, Any], batch_idx: int, num_samples: int
) -> BatchEvaluation:
    """Greedy completions of a batch (scored with every reward) and, when ``num_samples`` > 1, that
    many sampled ones per prompt (scored with the accuracy reward), with their extracted answers."""
    # Seeds depend on the batch, not on training progress: the same prompts get the same samples.
    base, rank = module.base_seed(), module.global_rank
    seed = stream_seed(base, rank, batch_idx, SeedStream.EVALUATION)
    sampler = module.sampler
    greedy = sampler.sample(batch, seed, num_generations=1, sampling=module.greedy)
    result = BatchEvaluation(greedy, correct(module, greedy), sources=batch_sources(batch))
    if num_samples > 1:
        sampled = sampler.sample(
            batch,
            stream_seed(base, rank, batch_idx, SeedStream.EVALUATION_SAMPLES),
            num_generations=num_samples,
            sampling=sampler.sampling,
            scorer=module.accuracy_scorer,
        )
        result.sampled = sampled
        ok = sampled.per_func[:, 0] >= module.hparams.accuracy_threshold  # NaN compares False
        result.sample_correct = ok.view(-1, num_samples)
        extract = answer_extractor(module)
        if extract is not None:
            flat = [extract(c) for c in sampled.completions]
            result.answers = [flat[i : i + num_samples] for i in range(0, len(flat), num_samples)]
        else:  # shown once per reward name (the warnings module drops repeats of the same text)
            rank_zero_warn(
                f"maj@k is left out: the accuracy reward {module.accuracy_scorer.names[0]!r} has no "
                f"'{ANSWER_METHOD}(completion)' method giving the answer each completion votes for. Add one "
                "(returning a hashable answer, or None) to get maj@k."
            )
    return result


class EvalMetrics(nn.Module):
    """The running means of one evaluation loop (validation or test), created as first logged."""

    def __init__(self, num_samples: int) -> None:
        super().__init__()
        self.num_samples = num_samples
        self.ks = report_ks(num_samples) if num_samples > 1 else []
        # A reward of None (NaN) means "not applicable": leave it out of the mean.
        self.reward = MeanMetric(nan_strategy="ignore")
        self.mean_length = MeanMetric()
        # Names are not module attribute names (they hold "@", "/" and any source's name): a list and an index.
        self.figures = nn.ModuleList()
        self._index: dict[str, int] = {}
        self._logged: list[str] = []  # in the order first logged in this loop, the same on every device
        self._attribute: str | None = None

    def figure(self, name: str, device: torch.device) -> MeanMetric:
        """The mean of figure ``name`` (``accuracy``, ``pass@4``, ``<source>/accuracy``, ...), made on first use."""
        if name not in self._index:
            self._index[name] = len(self.figures)
            self.figures.append(MeanMetric().to(device))
        return self.figures[self._index[name]]

    def index(self, name: str) -> int:
        return self._index[name]

    def attribute_name(self, module: nn.Module) -> str:
        """This object's attribute name in ``module`` (``val_metrics``, say)."""
        if self._attribute is None:
            self._attribute = next((n for n, m in module.named_children() if m is self), None)
            if self._attribute is None:
                raise ValueError("These EvalMetrics are not an attribute of the module that logs them.")
        return self._attribute

    def logged(self) -> dict[str, MeanMetric]:
        """Every metric logged in this loop, by name (without the stage), in the order first logged."""
        named = {"reward": self.reward, "completions/mean_length": self.mean_length}
        return {
            name: named[name] if name in named else self.figures[self._index[name]] for name in self._logged
        }

    def mark_logged(self, name: str) -> None:
        if name not in self._logged:
            self._logged.append(name)

    def reset(self) -> None:
        """Fresh states, made under the grad mode of the loop about to run: a stand-alone
        ``validate`` runs under inference mode, validation inside ``fit`` under no_grad, and states
        left by the one cannot be updated in place by the other."""
        for metric in (self.reward, self.mean_length, *self.figures):
            metric.reset()
        self._logged = []


def all_sources(local: list[str]) -> list[str]:
    """The sources of this batch on every device, sorted: each device must log the same metrics in
    the same order, or the reductions at the end of the loop would pair different metrics (or wait
    for one that a device never logged)."""
    names = sorted(set(local))
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[list[str] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, names)
        names = sorted({name for part in gathered for name in part or []})
    return names


def evaluate(
    module: LightningModule, batch: dict[str, Any], batch_idx: int, metrics: EvalMetrics, stage: str
) -> None:
    """Score one batch (see :func:`evaluate_batch`), update the running means and log them."""
    result = evaluate_batch(module, batch, batch_idx, metrics.num_samples)
    size = len(result.greedy.total)
    if module.trainer.state.fn == "fit":
        # Logged at the optimizer step the evaluation follows (Lightning's default counts rollouts).
        # Only while fitting: a stand-alone validate/test would print it among its results.
        module.log("step", float(module.trainer.global_step), on_step=False, on_epoch=True, batch_size=size)
    figures = result.figures(metrics.ks)
    for name, values in figures.items():
        _log(module, metrics, stage, name, values, size)
    metrics.reward.update(result.greedy.total)
    metrics.mean_length.update(result.greedy.rollout.lengths.float())
    for name, metric in (("reward", metrics.reward), ("completions/mean_length", metrics.mean_length)):
        module.log(f"{stage}/{name}", metric, on_epoch=True, batch_size=size)
        metrics.mark_logged(name)
    if result.sources is not None:
        rows_of = {s: [i for i, r in enumerate(result.sources) if r == s] for s in set(result.sources)}
        for source in all_sources(result.sources):
            rows = torch.tensor(rows_of.get(source, []), dtype=torch.long)
            for name in source_figures(figures, metrics.num_samples):
                _log(module, metrics, stage, f"{source}/{name}", figures[name][rows], size)


def _log(
    module: LightningModule, metrics: EvalMetrics, stage: str, name: str, values: Tensor, size: int
) -> None:
    """Add ``values`` ([rows], possibly none on this device) to figure ``name`` and log it."""
    metric = metrics.figure(name, module.device)
    if len(values):
        metric.update(values.to(device=module.device, dtype=torch.float32))
    # Lightning finds a logged metric's attribute name in a table it builds once, before this one
    # may have existed: name it.
    module.log(
        f"{stage}/{name}",
        metric,
        on_epoch=True,
        prog_bar=name == "accuracy",
        batch_size=size,
        metric_attribute=f"{metrics.attribute_name(module)}.figures.{metrics.index(name)}",
    )
    metrics.mark_logged(name)


def log_sanity_check(module: LightningModule, metrics: EvalMetrics, stage: str = "val") -> dict[str, float]:
    """Send the sanity check's validation metrics to the loggers at the current step.

    Lightning computes the sanity check (``num_sanity_val_steps``) and then drops its metrics. Run
    on the whole validation set (``num_sanity_val_steps=-1``) it is the accuracy before any update,
    the first point of every curve, so it is logged here (and printed on rank 0). ``compute``
    synchronises the metrics across devices: every rank must call this (each logged the same names).
    """
    values = {f"{stage}/{name}": float(metric.compute()) for name, metric in metrics.logged().items()}
    if not values:
        return values
    trainer = module.trainer
    sanity, full = trainer.num_sanity_val_batches, trainer.num_val_batches
    if list(sanity) != list(full):
        # A part of the validation set is not the accuracy before training: say so, log nothing.
        if trainer.is_global_zero:
            print(
                f"Sanity check on {sum(sanity)} of {sum(full)} validation batches (not logged as the "
                "accuracy before training; num_sanity_val_steps: -1 measures the whole set).",
                flush=True,
            )
        return {}
    step = module.trainer.global_step
    for logger in module.loggers:
        logger.log_metrics(values, step=step)
    if module.trainer.is_global_zero:
        # The whole curve is in the logs; the printout keeps pass@k and maj@k at k = N only.
        n = metrics.num_samples
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items() if "@" not in k or k.endswith(f"@{n}"))
        print(f"Validation before training (step {step}): {shown}", flush=True)
    return values
