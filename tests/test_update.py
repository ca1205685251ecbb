"""The update's pure pieces: the mini-batch plan, the normaliser counts, the gradient scale rules
(hand-derived numbers, bnpo included), and one bnpo training step against a naive reference."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from helpers import (  # noqa: F401
    PromptsDataModule,
    char_code_mean,
    make_module,
    make_trainer,
    one_thread,
    tiny_model,
    tiny_tokenizer,
    weights,
)
from lightning.pytorch import Callback
from torch.testing import assert_close

from grpo_lightning.algorithm.losses import LossConfig, grpo_loss
from grpo_lightning.algorithm.update import batch_layout, gradient_scales, minibatch_plan, normalizer_counts
from grpo_lightning.rollout.engine import HFGenerateEngine, Rollout


def rows(plan):
    return [[r.tolist() for r in step] for step in plan]


def test_one_step_per_pass_keeps_the_rows_in_order():
    # N = 2 prompts x 3 generations = 6 rows, one mini-batch of 6 per pass, micro-batches of 2.
    layout = batch_layout(2, 3, steps_per_rollout=1, micro_batch_size=2)
    plan = minibatch_plan(layout, num_iterations=2, seed=123)
    assert rows(plan) == [[[0, 1], [2, 3], [4, 5]]] * 2  # no shuffling: nothing to reorder between steps


def test_several_steps_per_pass_shuffle_each_pass_reproducibly():
    # N = 8 rows, 2 mini-batches of 4 (micro-batches of 2), 2 passes: 4 optimizer steps.
    layout = batch_layout(2, 4, steps_per_rollout=2, micro_batch_size=2)
    plan = minibatch_plan(layout, num_iterations=2, seed=7)
    assert len(plan) == 4 and all(len(step) == 2 for step in plan)
    for first, second in ((0, 1), (2, 3)):  # each pass covers every row exactly once
        seen = sorted(r for step in plan[first : second + 1] for micro in step for r in micro.tolist())
        assert seen == list(range(8))
    assert rows(plan) == rows(minibatch_plan(layout, num_iterations=2, seed=7))  # same seed, same plan
    assert rows(plan) != rows(minibatch_plan(layout, num_iterations=2, seed=8))
    # Pinned: pass p takes the p-th torch.randperm(8) of a generator seeded with 7, here
    # [7, 0, 3, 4, 1, 5, 2, 6] and [7, 4, 0, 6, 2, 1, 5, 3], cut in order into 4-row steps and 2-row
    # micro-batches. A resumed run (and every later version) must cut the same way.
    assert rows(plan) == [[[7, 0], [3, 4]], [[1, 5], [2, 6]], [[7, 4], [0, 6]], [[2, 1], [5, 3]]]


# Four rows of completion mask: 3, 1, 0 and 2 active tokens.
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]])
PLAN = [[torch.tensor([0, 1])], [torch.tensor([2]), torch.tensor([3])]]  # step 0: rows 0, 1; step 1: 2 | 3


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [
        ("dapo", [4.0, 2.0]),  # active tokens: 3 + 1, then 0 + 2
        ("bnpo", [4.0, 2.0]),  # counted like dapo (bnpo's loss itself divides locally)
        ("grpo", [2.0, 2.0]),  # sequences, the empty one included
        ("dr_grpo", [2.0, 2.0]),
    ],
)
def test_normalizer_counts_each_steps_unit(loss_type, expected):
    counts = normalizer_counts(MASK, PLAN, loss_type)
    assert counts.dtype == torch.float32
    assert counts.tolist() == expected


@pytest.mark.parametrize(
    ("loss_type", "k", "world", "backward", "logged"),
    [
        ("dapo", 4, 1, 1.0, 1.0),
        ("dapo", 4, 4, 4.0, 1.0),  # the strategy's mean over 4 ranks is undone: the ranks' shares add up
        ("grpo", 2, 2, 2.0, 1.0),
        ("dr_grpo", 1, 8, 8.0, 1.0),
        ("bnpo", 4, 1, 0.25, 0.25),  # mean of 4 local micro-batch means
        ("bnpo", 2, 4, 0.5, 0.125),  # mean over 2 micro-batches (backward; ranks averaged by the strategy)
    ],
)
def test_gradient_scales(loss_type, k, world, backward, logged):
    scales = gradient_scales(loss_type, micro_batches_per_step=k, world_size=world)
    assert (scales.backward, scales.logged) == (backward, logged)


# Two ranks, each with one optimizer step of two one-row micro-batches; on-policy (ratio 1), so each
# token's term is -A and its gradient -A / (the micro-batch's divisor).
#   rank 0: row a, 2 tokens, A = 1;   row b, 1 token, A = -0.5
#   rank 1: row c, 4 tokens, A = 2;   row d, 1 token, A = 1
MASKS = [torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]), torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])]
ADVANTAGES = [torch.tensor([1.0, -0.5]), torch.tensor([2.0, 1.0])]
ONE_STEP = [[torch.tensor([0]), torch.tensor([1])]]  # each rank's plan: one step, two micro-batches


def _simulate(loss_type):
    """Each row's first-token gradient after the strategy's mean over ranks, and the logged step loss."""
    world, k = len(MASKS), len(ONE_STEP[0])
    scales = gradient_scales(loss_type, k, world)
    normalizer = sum(normalizer_counts(mask, ONE_STEP, loss_type) for mask in MASKS)[0]  # the all-reduce
    config = LossConfig(loss_type, max_completion_length=4)
    grads, logged = [], 0.0
    for mask, adv in zip(MASKS, ADVANTAGES, strict=True):
        for rows in ONE_STEP[0]:
            logp = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
            loss, _ = grpo_loss(logp, None, None, adv[rows], mask[rows], config, normalizer=normalizer)
            (loss * scales.backward).backward()
            grads.append(logp.grad[0, 0].item() / world)  # DDP averages the ranks' gradients
            logged += loss.item() * scales.logged  # summed over micro-batches, then over ranks
    return grads, logged


def test_dapo_rule_gives_the_global_token_mean():
    # 8 tokens in all: each token's gradient is -A / 8, as for one call over the whole mini-batch.
    grads, logged = _simulate("dapo")
    assert grads == pytest.approx([-1 / 8, 0.5 / 8, -2 / 8, -1 / 8])
    # loss = sum of -A over tokens / 8 = (-2 + 0.5 - 8 - 1) / 8 = -1.3125
    assert logged == pytest.approx(-1.3125)


def test_bnpo_rule_gives_the_mean_of_local_micro_batch_means():
    # Each micro-batch is a token mean (-A / n per token), averaged over 2 micro-batches and 2 ranks:
    # a: -1/2/4 = -0.125, b: 0.5/1/4 = 0.125, c: -2/4/4 = -0.125, d: -1/1/4 = -0.25.
    grads, logged = _simulate("bnpo")
    assert grads == pytest.approx([-0.125, 0.125, -0.125, -0.25])
    # loss = mean of the micro-batch means (-1, 0.5, -2, -1) = -0.875
    assert logged == pytest.approx(-0.875)


class KeepRollout(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.outputs = outputs


class VariedLengths(HFGenerateEngine):
    """Samples, then ends row i after ``i % T + 1`` tokens with EOS: completions of different lengths,
    so bnpo's local token means differ from dapo's global one."""

    def __init__(self, eos: int, pad: int, filler: int) -> None:
        super().__init__()
        self.eos, self.pad, self.filler = eos, pad, filler

    def generate(self, *args, **kwargs) -> Rollout:
        out = super().generate(*args, **kwargs)
        n, width = out.completion_ids.shape
        lengths = torch.arange(n) % width + 1
        position = torch.arange(width).expand(n, width)
        ids = out.completion_ids.masked_fill(out.completion_ids == self.eos, self.filler)  # no early EOS
        ids = torch.where(position == (lengths - 1).unsqueeze(1), self.eos, ids)
        ids = torch.where(position >= lengths.unsqueeze(1), self.pad, ids)
        mask = (position < lengths.unsqueeze(1)).to(out.completion_mask.dtype)
        return Rollout(out.prompt_ids, out.prompt_mask, ids, mask, torch.zeros(n, dtype=torch.bool), lengths)


def _naive_logp(model, rollout):
    """[N, T] log-probs of the completion tokens by one plain forward over the whole sequences."""
    ids, attn = rollout.input_ids, rollout.attention_mask
    positions = (attn.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=positions).logits.float()
    width = rollout.completion_ids.shape[1]
    predicted = logits[:, -width - 1 : -1].log_softmax(-1)  # temperature 1
    return predicted.gather(-1, rollout.completion_ids.unsqueeze(-1)).squeeze(-1)


def test_a_bnpo_training_step_matches_a_naive_reference():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    start = copy.deepcopy(model)
    # 2 prompts x 4 = 8 rows, one optimizer step, micro-batches of 2 rows; SGD with lr 1: the weights
    # move by exactly the gradient.
    engine = VariedLengths(tok.eos_token_id, tok.pad_token_id, filler=tok.convert_tokens_to_ids("1"))
    module = make_module(
        tok, model=model, loss_type="bnpo", micro_batch_size=2, max_grad_norm=None, rollout_engine=engine,
        optimizer=functools.partial(torch.optim.SGD, lr=1.0),
    )  # fmt: skip
    keep = KeepRollout()
    trainer = make_trainer(max_steps=1, callbacks=[keep])
    trainer.fit(module, datamodule=PromptsDataModule(tok, batch_size=2))
    rollout, adv = keep.outputs["samples"].rollout, keep.outputs["advantages"]

    # Naive bnpo: the mean over the 4 micro-batches of each one's token mean of -A * ratio (on-policy,
    # ratio = exp(logp - logp.detach()) = 1 carrying the gradient).
    logp = _naive_logp(start, rollout)
    mask = rollout.completion_mask.float()
    per_token = -adv.unsqueeze(1) * torch.exp(logp - logp.detach()) * mask
    micro_means = [per_token[r].sum() / mask[r].sum().clamp(min=1) for r in torch.arange(8).split(2)]
    loss = torch.stack(micro_means).mean()
    dapo = per_token.sum() / mask.sum()  # the same rollout under dapo, to show the test tells them apart
    assert abs(loss.item() - dapo.item()) > 1e-4
    loss.backward()
    with torch.no_grad():
        expected = {k: p - p.grad for k, p in start.named_parameters()}

    assert float(trainer.logged_metrics["train/loss"]) == pytest.approx(loss.item(), abs=1e-6)
    moved = weights(module)
    for name, value in expected.items():
        assert_close(moved[name], value, atol=1e-6, rtol=1e-5, msg=name)


def split_reward(prompts, completions, **columns) -> list[float | None]:
    """1.0 for every completion of a prompt with an even first character (a group with no spread,
    advantage 0); the dense ``char_code_mean`` for the others (a spread, non-zero advantages)."""
    dense = char_code_mean(prompts, completions)
    return [1.0 if ord(p[0]) % 2 == 0 else d for p, d in zip(prompts, dense, strict=True)]


class GradRows:
    """Wraps a policy's forward and counts the rows it saw with and without autograd."""

    def __init__(self, policy) -> None:
        self.with_grad = self.without_grad = 0
        self.forward = policy.forward

    def __call__(self, *args, **kwargs):
        rows = (kwargs.get("input_ids") if "input_ids" in kwargs else args[0]).shape[0]
        if torch.is_grad_enabled():
            self.with_grad += rows
        else:
            self.without_grad += rows
        return self.forward(*args, **kwargs)


def _step_with(skip: bool, monkeypatch, loss_type: str = "dapo", beta: float = 0.0):
    """One training step (16 rows, 2 optimizer steps of 8, micro-batches of 4) from the same seed."""
    from grpo_lightning.training.step import TrainingStep

    if not skip:
        monkeypatch.setattr(TrainingStep, "_can_skip_idle_rows", lambda self: False)
    tok = tiny_tokenizer()
    module = make_module(
        tok, model=tiny_model(tok), reward_funcs=[split_reward], loss_type=loss_type, beta=beta,
        steps_per_rollout=2, micro_batch_size=4, max_grad_norm=None,
    )  # fmt: skip
    counter = GradRows(module.policy)
    module.policy.forward = counter
    keep = KeepRollout()
    trainer = make_trainer(max_steps=2, callbacks=[keep])
    trainer.fit(module, datamodule=PromptsDataModule(tok, batch_size=4))
    monkeypatch.undo()
    metrics = {k: float(v) for k, v in trainer.logged_metrics.items() if k.startswith("train/")}
    return weights(module), metrics, keep.outputs["advantages"], counter


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_rows_without_signal_skip_the_backward_and_change_nothing(monkeypatch, loss_type):
    skipped, skipped_metrics, advantages, skipped_rows = _step_with(True, monkeypatch, loss_type)
    full, full_metrics, full_advantages, full_rows = _step_with(False, monkeypatch, loss_type)
    # The rollout mixes groups with and without a spread, so the skip had rows to act on.
    assert bool(advantages.eq(0).any()) and bool(advantages.ne(0).any())
    assert_close(advantages, full_advantages)
    for name, value in full.items():
        assert_close(skipped[name], value, atol=1e-6, rtol=1e-5, msg=name)
    assert skipped_metrics.keys() == full_metrics.keys()
    for name, value in full_metrics.items():
        assert skipped_metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    # Fewer rows went through autograd; every row was still seen (the idle ones without autograd).
    assert skipped_rows.with_grad < full_rows.with_grad
    assert skipped_rows.with_grad + skipped_rows.without_grad == full_rows.with_grad + full_rows.without_grad


@pytest.mark.parametrize(("loss_type", "beta"), [("bnpo", 0.0), ("dapo", 0.1)])
def test_rows_without_signal_keep_the_backward_when_they_carry_a_gradient(monkeypatch, loss_type, beta):
    # beta > 0: their KL term has a gradient; bnpo: its normaliser is each call's own token count.
    _, _, advantages, rows = _step_with(True, monkeypatch, loss_type, beta)
    _, _, _, full_rows = _step_with(False, monkeypatch, loss_type, beta)
    assert bool(advantages.eq(0).any())
    assert rows.with_grad == full_rows.with_grad
