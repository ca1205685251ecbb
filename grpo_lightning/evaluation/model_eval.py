"""Evaluate a model on a list of problems without a Trainer, with the figures of validation, and plot
pass@k and maj@k against k for several models.

:func:`evaluate_model` samples with the package's rollout engine (the lean KV-cache loop on CPU),
exactly as validation does: the same prompt formatting, seeds, rewards and estimators
(:meth:`grpo_lightning.evaluation.evaluator.Evaluator.evaluate`), so its numbers match ``trainer.validate`` on the
same problems and settings. :func:`plot_k_curves` draws the results of several models (``"before"``,
``"after"``) into one PNG; it needs matplotlib (``pip install grpo-lightning[bench]``).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grpo_lightning._quiet import quiet_known_noise
from grpo_lightning.data.prompts import (
    DEFAULT_PROMPT_TEMPLATE,
    PromptCollator,
    PromptFormatter,
    tokenize_prompts,
)
from grpo_lightning.data.sources import normalize_columns
from grpo_lightning.evaluation.evaluator import BatchEvaluation, Evaluator, source_figures
from grpo_lightning.evaluation.metrics import report_ks
from grpo_lightning.hf.model_setup import build_models
from grpo_lightning.hf.models import eos_token_ids, eval_mode, load_tokenizer
from grpo_lightning.rewards.scorer import RewardScorer
from grpo_lightning.rollout.engine import SamplingConfig
from grpo_lightning.rollout.engines import resolve_engine
from grpo_lightning.rollout.sampler import Sampler
from grpo_lightning.rollout.seeds import stream_seed
from grpo_lightning.training.collectives import SingleProcess

_K_FIGURE = re.compile(r"^(pass|maj)@(\d+)$")


def evaluate_model(
    model: str | PreTrainedModel,
    problems: Sequence[Mapping[str, Any]] | Dataset,
    *,
    tokenizer: str | PreTrainedTokenizerBase | None = None,
    num_samples: int = 8,
    reward: Any = "gsm8k_accuracy",
    accuracy_threshold: float = 1.0,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    system_prompt: str | None = None,
    max_completion_length: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    rollout_engine: Any = "auto",
    records: list[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Greedy accuracy and, from ``num_samples`` (N) samples per problem, mean@N, pass@k and maj@k.

    Args:
        model: a model folder, Hub id, ``builtin:tiny-math``, or a model in memory (then give
            ``tokenizer``). A model in memory is left as it was found (train/eval mode, weights).
        problems: rows with ``question`` and ``answer`` (any form ``PromptDataModule`` reads: a GSM8K
            answer text, a MATH solution ...), optionally ``source``; other columns reach the reward.
        num_samples: N; 1 gives the greedy figures only.
        reward: the accuracy reward (a registered name, an import path or a callable); maj@k needs
            its ``extract_answer`` method (the shipped accuracy rewards have one).
        accuracy_threshold: a completion is correct when its reward is at least this.
        prompt_template, system_prompt: as in ``PromptDataModule``.
        max_completion_length, temperature, top_p, seed, rollout_engine: as in ``GRPOModule``.
        batch_size: prompts per generation call.
        records: a list that receives one dict per problem: ``prompt``, ``answer``, ``greedy`` (its
            completion), ``correct``, and with N > 1 ``samples`` and ``samples_correct``.

    Returns:
        ``{"accuracy", "reward", "completions/mean_length", "mean@N", "pass@k", "maj@k",
        "<source>/accuracy", ...}``: the names of the ``val/`` metrics without the prefix (see
        :mod:`grpo_lightning.evaluation.steps`), each a mean over problems.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1; got {num_samples}.")
    quiet_known_noise()  # the weights' loading bars, as for a GRPOModule
    sampling = SamplingConfig(
        max_completion_length=max_completion_length, temperature=temperature, top_p=top_p
    )
    was_training = model.training if isinstance(model, torch.nn.Module) else None
    padding_side = getattr(tokenizer, "padding_side", None)
    tok = load_tokenizer(tokenizer, model)
    try:
        evaluator = model_evaluator(
            model, tok, reward, accuracy_threshold, sampling, num_samples, rollout_engine
        )
        batches = problem_batches(tok, problems, prompt_template, system_prompt, batch_size)
        with eval_mode(evaluator.sampler.policy):
            return evaluate_batches(evaluator, batches, seed, records)
    finally:
        if was_training is not None:
            model.train(was_training)
        if padding_side is not None:
            tokenizer.padding_side = padding_side


def model_evaluator(
    model: str | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward: Any,
    accuracy_threshold: float,
    sampling: SamplingConfig,
    num_samples: int,
    rollout_engine: Any,
) -> Evaluator:
    """The evaluator of ``model`` (loaded when a name) on one process, as a ``GRPOModule`` with
    ``reward`` as its only reward would build it; a model in memory keeps its dropout (never change
    a model that is not ours)."""
    policy, _ = build_models(
        model if isinstance(model, torch.nn.Module) else None,
        model if isinstance(model, str) else None,
        model_kwargs=None,
        no_dropout=False,
        gradient_checkpointing=False,
        with_reference=False,
        lora=None,
        device_mesh=None,
    )
    scorer = RewardScorer([reward])
    engine = resolve_engine(rollout_engine, sampling)
    eos = eos_token_ids(policy, tokenizer)
    sampler = Sampler(policy, tokenizer, engine, eos, scorer, sampling, num_generations=num_samples)
    greedy = replace(sampling, do_sample=False)
    collectives = SingleProcess(sampler.device)
    return Evaluator(sampler, greedy, scorer, accuracy_threshold, num_samples, collectives)


def evaluate_batches(
    evaluator: Evaluator,
    batches: Iterable[dict[str, Any]],
    seed: int,
    records: list[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """The figures of :func:`evaluate_model` from an evaluator and collated batches (the data module's,
    or :func:`problem_batches`), with validation's seeds of base ``seed`` on rank 0: means over
    problems of each figure, of the greedy reward (NaN left out) and of the greedy length."""
    num_samples = evaluator.num_samples
    ks = report_ks(num_samples) if num_samples > 1 else []
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)

    def add(name: str, values: torch.Tensor) -> None:
        values = values.double()[~torch.isnan(values.double())]
        sums[name] += float(values.sum())
        counts[name] += len(values)

    device = evaluator.sampler.device
    for batch_idx, batch in enumerate(batches):
        for key in ("input_ids", "attention_mask"):  # what Lightning does for a validation batch
            batch[key] = batch[key].to(device)
        result = evaluator.evaluate(batch, partial(stream_seed, seed, 0, batch_idx))
        figures = result.figures(ks)
        for name, values in figures.items():
            add(name, values)
        add("reward", result.greedy.total)
        add("completions/mean_length", result.greedy.rollout.lengths)
        for source in sorted(set(result.sources or [])):
            rows = torch.tensor([i for i, s in enumerate(result.sources) if s == source])
            for name in source_figures(figures, num_samples):
                add(f"{source}/{name}", figures[name][rows])
        if records is not None:
            records.extend(_records(batch, result, num_samples))
    return {name: sums[name] / counts[name] if counts[name] else math.nan for name in sums}


def _records(batch: dict[str, Any], result: BatchEvaluation, num_samples: int) -> list[dict[str, Any]]:
    """One record per prompt of the batch: its greedy completion and, with samples, theirs."""
    out = []
    for p, prompt in enumerate(batch["prompt"]):
        record = {
            "prompt": prompt,
            "answer": batch["answer"][p],
            "greedy": result.greedy.completions[p],
            "correct": bool(result.greedy_correct[p]),
        }
        if result.sampled is not None:
            record["samples"] = result.sampled.completions[p * num_samples : (p + 1) * num_samples]
            record["samples_correct"] = result.sample_correct[p].tolist()
        out.append(record)
    return out


def problem_batches(
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Mapping[str, Any]] | Dataset,
    template: str,
    system_prompt: str | None,
    batch_size: int,
) -> Iterator[dict[str, Any]]:
    """The problems as the data module's batches: gold answers extracted, prompts formatted and
    tokenized the same way, left-padded ``input_ids`` [P, L], every other column as lists."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}.")
    data = problems if isinstance(problems, Dataset) else Dataset.from_list([dict(p) for p in problems])
    if len(data) == 0:
        raise ValueError("No problems to evaluate: give at least one row with 'question' and 'answer'.")
    where = "the problems to evaluate"
    rows = normalize_columns(data, where)
    if len(rows) != len(data):
        raise ValueError(
            f"{len(data) - len(rows)} of the {len(data)} problems have no question or no usable gold answer "
            "(see the warning above): fix or remove them, so that every figure is over the problems given."
        )
    formatter = PromptFormatter(tokenizer, template, system_prompt)
    rows = tokenize_prompts(rows, formatter, None, "raise", where).to_list()
    collate = PromptCollator(tokenizer.pad_token_id)
    for start in range(0, len(rows), batch_size):
        yield collate(rows[start : start + batch_size])


def k_curves(metrics: Mapping[str, float]) -> dict[str, tuple[list[int], list[float]]]:
    """``{"pass": (ks, values), "maj": (ks, values)}`` from a metrics dict (``val/`` prefixes allowed)."""
    curves: dict[str, dict[int, float]] = {"pass": {}, "maj": {}}
    for name, value in metrics.items():
        stage, _, figure = name.rpartition("/")
        match = _K_FIGURE.match(figure)
        if match is not None and stage in ("", "val", "test"):  # not the per-source figures
            curves[match.group(1)][int(match.group(2))] = float(value)
    return {kind: (sorted(points), [points[k] for k in sorted(points)]) for kind, points in curves.items()}


def plot_k_curves(
    results: Mapping[str, Mapping[str, float]], path: str | Path, title: str | None = None
) -> Path:
    """Plot pass@k (solid) and maj@k (dashed) against k, one colour per model, to a PNG at ``path``.

    Args:
        results: model label (``"before"``, ``"after"``) -> the metrics of :func:`evaluate_model` (or
            of ``trainer.validate``, with their ``val/`` prefix).
        path: the PNG to write (folders are made).
        title: the figure's title.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plot_k_curves needs matplotlib: pip install 'grpo-lightning[bench]'.") from err
    curves = {label: k_curves(metrics) for label, metrics in results.items()}
    empty = [label for label, c in curves.items() if not c["pass"][0]]
    if not results or empty:
        raise ValueError(
            f"No pass@k figures for {empty or 'any model'}: evaluate with num_samples > 1 (val_num_samples)."
        )
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, c) in enumerate(curves.items()):
        color = f"C{i}"
        ax.plot(*c["pass"], marker="o", color=color, label=f"{label}: pass@k")
        if c["maj"][0]:
            ax.plot(*c["maj"], marker="s", linestyle="--", color=color, label=f"{label}: maj@k")
    all_ks = sorted({k for c in curves.values() for k in c["pass"][0]})
    ax.set_xscale("log", base=2)
    ax.set_xticks(all_ks, [str(k) for k in all_ks])
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("share of problems solved")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
