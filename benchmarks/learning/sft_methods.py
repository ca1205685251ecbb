"""The supervised baselines: continued SFT on worked solutions, SFT on answers-only targets, and
rejection-sampling fine-tuning (RFT, expert iteration). Each trains ``task.module.policy`` in place
until ``clock`` says the budget is spent.

All three take optimizer steps with :class:`Optimizer` on batches from the tiny model recipe's
``sft_batch`` (loss on the target tokens only, target = text + EOS).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from budget import BudgetClock
from learning_task import Task

from grpo_lightning.data.synthetic import generate_problems
from grpo_lightning.recipes.tiny_math_sft import sft_batch
from grpo_lightning.training.optim import warmup_factor

#: The worked solutions the shipped tiny model was trained on (its recipe's data knobs and pool).
WORKED_DATA: dict[str, Any] = {"min_steps": 1, "max_steps": 3, "max_operand": 10}
WORKED_POOL, WORKED_SEED = 48_000, 0

Pair = tuple[str, str]  # (prompt text, target text without EOS)


@dataclass
class SFTSettings:
    """Optimizer and batch of every supervised update (AdamW as in the tiny model's recipe, constant lr
    after ``warmup`` steps of linear warmup)."""

    lr: float = 1.3e-3
    warmup: int = 0
    batch_size: int = 64
    max_grad_norm: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01


@dataclass
class RFTSettings:
    """One round: sample ``generations`` completions for each of ``chunk`` training problems
    (``prompts_per_call`` problems per sampling call), keep the distinct correct ones, train one epoch."""

    chunk: int = 256
    generations: int = 8
    prompts_per_call: int = 16
    distinct: bool = True
    """Keep each correct completion of a problem once (False: as often as it was sampled)."""


@dataclass
class Counters:
    steps: int = 0
    samples: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Optimizer:
    """AdamW with the learning-rate schedule of :class:`SFTSettings`."""

    def __init__(self, model: torch.nn.Module, s: SFTSettings) -> None:
        self.model, self.max_grad_norm = model, s.max_grad_norm
        self.adamw = torch.optim.AdamW(
            model.parameters(), lr=s.lr, betas=s.betas, weight_decay=s.weight_decay
        )
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.adamw, lambda step: warmup_factor(step, s.warmup)
        )

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """One optimizer step on the mean token loss of ``batch`` (``input_ids``, ``attention_mask``,
        ``labels`` [B, T]); returns the loss."""
        loss = self.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.adamw.step()
        self.schedule.step()
        self.adamw.zero_grad(set_to_none=True)
        return loss.item()


def epochs(n: int, rng: random.Random) -> Iterator[int]:
    """Indices ``0..n-1``, reshuffled every epoch, forever."""
    if n == 0:
        raise ValueError("Nothing to train on: the pool of examples is empty.")
    while True:
        order = list(range(n))
        rng.shuffle(order)
        yield from order


def check_prompt_tokens(task: Task) -> None:
    """SFT tokenizes prompt texts without special tokens; refuse a config whose prompts get them,
    since SFT would then train on prompts other than those the policy is evaluated on."""
    row = task.held_out[0]
    ids = task.module.tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    if list(ids) != list(row["input_ids"]):
        raise ValueError(
            "The data module's prompt token ids differ from the prompt text tokenized without special tokens "
            "(a BOS token?); the supervised baselines would train on other prompts. Use a tokenizer that adds "
            "no special tokens to prompts, or a chat template (use_chat_template: true)."
        )


def train_on_pool(
    task: Task, pairs: Sequence[Pair], clock: BudgetClock, s: SFTSettings, seed: int
) -> Counters:
    """SFT on ``pairs`` reshuffled every epoch, ``s.batch_size`` per step, until the budget is spent."""
    model, tok = task.module.policy, task.module.tokenizer
    model.train()
    optimizer, order, counters = Optimizer(model, s), epochs(len(pairs), random.Random(seed)), Counters()
    clock.start()
    while not clock.done:
        rows = [{"question": p, "solution": t} for p, t in (pairs[next(order)] for _ in range(s.batch_size))]
        optimizer.step(sft_batch(tok, rows, template="{question}"))
        counters.steps += 1
        counters.samples += len(rows)
        clock.tick(counters.steps, counters.samples)
    return counters


def worked_pairs(task: Task, data: dict[str, Any], pool: int) -> list[Pair]:
    """Worked solutions from the generator the start model was trained with, held-out questions removed."""
    fmt, held_out = task.formatter(), set(task.held_out["question"])
    problems = generate_problems(pool, seed=WORKED_SEED, **data)
    return [(fmt(p), p["solution"]) for p in problems if p["question"] not in held_out]


def answer_pairs(task: Task) -> list[Pair]:
    """The training problems with the bare final answer as the target: ``"#### <answer>"``."""
    return [(p, f"#### {a}") for p, a in zip(task.train["prompt"], task.train["answer"], strict=True)]


def sft_worked(task: Task, clock: BudgetClock, s: SFTSettings, seed: int, data: dict, pool: int) -> Counters:
    """Continued SFT on ``pool`` worked problems drawn with the generator knobs ``data``."""
    check_prompt_tokens(task)
    pairs = worked_pairs(task, data, pool)
    counters = train_on_pool(task, pairs, clock, s, seed)
    counters.extra["pool"] = len(pairs)
    return counters


def sft_answers(task: Task, clock: BudgetClock, s: SFTSettings, seed: int) -> Counters:
    """SFT on the training problems with answers-only targets."""
    check_prompt_tokens(task)
    return train_on_pool(task, answer_pairs(task), clock, s, seed)


def sample_correct(task: Task, rows: list[dict[str, Any]], generations: int, seed: int) -> list[Pair]:
    """Sample ``generations`` completions per row with the config's sampling settings; return the
    (prompt, completion) pairs that the config's accuracy reward scores correct and that
    ended with EOS (a target then ends as the completion did)."""
    module = task.module
    scored = module.sampler.sample(
        task.datamodule.collator(rows),
        seed,
        num_generations=generations,
        sampling=module.sampling,
        scorer=module.accuracy_scorer,
    )
    keep = module.evaluator.correct(scored) & ~scored.rollout.truncated.cpu()
    return [(scored.prompts[i], scored.completions[i]) for i in keep.nonzero().flatten().tolist()]


def round_pool(kept: list[Pair], distinct: bool) -> list[Pair]:
    """The (prompt, completion) pairs one RFT round trains on: with ``distinct``, each once, in first-seen order."""
    return list(dict.fromkeys(kept)) if distinct else kept


def rft(task: Task, clock: BudgetClock, s: SFTSettings, r: RFTSettings, seed: int) -> Counters:
    """Rounds of: sample ``r.generations`` per problem for the next ``r.chunk`` training problems,
    keep the correct completions (each once when ``r.distinct``), one epoch of SFT on them. Sampling
    counts in the budget."""
    check_prompt_tokens(task)
    model, tok = task.module.policy, task.module.tokenizer
    optimizer, counters, rng = Optimizer(model, s), Counters(), random.Random(seed)
    order = epochs(len(task.train), rng)
    kept_per_round: list[int] = []
    calls = 0
    clock.start()
    while not clock.done:
        chunk = [next(order) for _ in range(r.chunk)]
        kept: list[Pair] = []
        for start in range(0, len(chunk), r.prompts_per_call):
            rows = [task.train[i] for i in chunk[start : start + r.prompts_per_call]]
            kept += sample_correct(task, rows, r.generations, seed * 1_000_003 + calls)
            calls += 1
            counters.samples += len(rows) * r.generations
            if clock.tick(counters.steps, counters.samples):
                break
        kept = round_pool(kept, r.distinct)
        kept_per_round.append(len(kept))
        rng.shuffle(kept)
        model.train()
        for start in range(0, len(kept), s.batch_size):
            if clock.done:
                break
            batch_rows = [{"question": p, "solution": t} for p, t in kept[start : start + s.batch_size]]
            optimizer.step(sft_batch(tok, batch_rows, template="{question}"))
            counters.steps += 1
            clock.tick(counters.steps, counters.samples)
    counters.extra["kept_per_round"] = kept_per_round
    return counters
