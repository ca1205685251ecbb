"""The pieces of the update loop that need no Lightning: cutting a rollout into micro-batches,
no-grad log-prob passes, the plan of optimizer steps, the loss normaliser counts, the gradient
scale rules, and the per-step metric sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from grpo_lightning.algorithm.aggregations import AGGREGATIONS, LossType
from grpo_lightning.logprobs import shared_prefix_logprobs

#: ``plan[step][micro]``: the rows (1-D int64 indices) of each micro-batch of each optimizer step.
Plan = list[list[Tensor]]


@dataclass(frozen=True)
class BatchLayout:
    """How one device's rollout is cut for the updates."""

    num_rows: int
    """N = prompts per device * num_generations."""
    mini_batch_size: int
    """Rows per optimizer step: N / steps_per_rollout."""
    micro_batch_size: int
    """Rows per forward/backward; divides mini_batch_size."""

    @property
    def micro_batches_per_step(self) -> int:
        return self.mini_batch_size // self.micro_batch_size


def batch_layout(
    prompts_per_device: int, num_generations: int, steps_per_rollout: int, micro_batch_size: int | None
) -> BatchLayout:
    """Check that the settings divide and return the layout; ``micro_batch_size=None`` = whole mini-batch."""
    if prompts_per_device < 1:
        raise ValueError("The training batch holds no prompt: check the DataModule's batch_size and dataset.")
    rows = prompts_per_device * num_generations
    if rows % steps_per_rollout:
        raise ValueError(
            f"steps_per_rollout={steps_per_rollout} does not divide the {rows} completions of a step "
            f"({prompts_per_device} prompts per device x num_generations={num_generations}). Change "
            "steps_per_rollout, the DataModule's batch_size or num_generations so that it divides."
        )
    mini = rows // steps_per_rollout
    micro = mini if micro_batch_size is None else micro_batch_size
    if mini % micro:
        divisors = [d for d in range(1, mini + 1) if mini % d == 0]
        raise ValueError(
            f"micro_batch_size={micro} does not divide the mini-batch of {mini} completions "
            f"({rows} per device / steps_per_rollout={steps_per_rollout}). Set micro_batch_size to one of "
            f"{divisors}, or change steps_per_rollout / the batch size."
        )
    return BatchLayout(num_rows=rows, mini_batch_size=mini, micro_batch_size=micro)


@dataclass
class UpdateBatch:
    """What the optimizer steps of one rollout consume; every tensor has N rows."""

    input_ids: Tensor
    """[N, L + T] prompt (left-padded) + completion."""
    attention_mask: Tensor
    """[N, L + T] 1 on prompt tokens and completion tokens up to the first EOS."""
    completion_mask: Tensor
    """[N, T] tokens that enter the loss."""
    advantages: Tensor
    """[N] float32."""
    old_logp: Tensor | None = None
    """[N, T] log-probs under the sampling policy; None = the current log-probs, detached."""
    ref_logp: Tensor | None = None
    """[N, T] log-probs under the reference; None when beta == 0."""

    @property
    def completion_width(self) -> int:
        return self.completion_mask.shape[1]


def trim(input_ids: Tensor, attention_mask: Tensor, completion_width: int) -> tuple[slice, int]:
    """Columns worth computing for these rows: drop prompt padding every row shares, and completion
    positions after every row's last token.

    Returns ``(columns, K)``: a slice of the ``[n, L + T]`` inputs and the kept completion width K
    (the first K of the T completion positions). A cheap saving when lengths vary a lot.
    """
    prompt_width = input_ids.shape[1] - completion_width
    used = attention_mask.bool().any(dim=0)  # [L + T]; one host sync below
    first = int(used[:prompt_width].int().argmax()) if bool(used[:prompt_width].any()) else prompt_width - 1
    completion_used = used[prompt_width:]
    keep = int(completion_used.nonzero().max()) + 1 if bool(completion_used.any()) else 1
    return slice(first, prompt_width + keep), keep


def micro_logprobs(
    model: nn.Module,
    batch: UpdateBatch,
    rows: Tensor,
    *,
    temperature: float,
    chunk_size: int,
    with_entropy: bool,
) -> tuple[Tensor, Tensor | None, int]:
    """Log-probs ``[n, K]`` (and entropy) of the completion tokens of ``rows`` after trimming; returns K.

    Rows that share a prompt (a group's G samples) compute it once, in the forward and the backward
    (:func:`~grpo_lightning.logprobs.shared_prefix_logprobs`; same values and gradients). The
    gradients are only ever taken by ``.backward()`` into ``.grad`` (micro-batch accumulation), so a
    tied LM head adds its weight gradient there directly (``backward_into_grad``).
    """
    columns, keep = trim(batch.input_ids[rows], batch.attention_mask[rows], batch.completion_width)
    logp, entropy = shared_prefix_logprobs(
        model,
        batch.input_ids[rows][:, columns],
        batch.attention_mask[rows][:, columns],
        keep,
        temperature=temperature,
        chunk_size=chunk_size,
        with_entropy=with_entropy,
        entropy_grad=False,  # a metric and a token filter (top_entropy_quantile); never differentiated
        backward_into_grad=True,
    )
    return logp, entropy, keep


@torch.no_grad()
def full_logprobs(
    model: nn.Module, batch: UpdateBatch, micro_batch_size: int, *, temperature: float, chunk_size: int
) -> Tensor:
    """No-grad log-probs ``[N, T]`` of every completion token (old policy or reference), micro-batch
    by micro-batch; positions past a row's trimmed width are 0 (they are masked anyway)."""
    n, width = batch.completion_mask.shape
    out = torch.zeros(n, width, dtype=torch.float32, device=batch.input_ids.device)
    for rows in torch.arange(n, device=batch.input_ids.device).split(micro_batch_size):
        logp, _, keep = micro_logprobs(
            model, batch, rows, temperature=temperature, chunk_size=chunk_size, with_entropy=False
        )
        out[rows, :keep] = logp
    return out


def minibatch_plan(
    layout: BatchLayout, num_iterations: int, seed: int, device: torch.device | str = "cpu"
) -> Plan:
    """The rows of every optimizer step of one rollout, cut into micro-batches.

    ``num_iterations`` passes over the ``N = layout.num_rows`` rows; each pass is cut into
    mini-batches of ``layout.mini_batch_size`` rows (one optimizer step each), each mini-batch into
    micro-batches of ``layout.micro_batch_size`` rows. With more than one mini-batch per pass, every
    pass takes its own permutation of the rows from a generator seeded with ``seed`` (the same seed
    gives the same plan, so a resumed run is exact); with one, the rows stay in order.

    Returns ``plan[step][micro]``: 1-D int64 row indices on ``device``;
    ``len(plan) == num_iterations * N / mini_batch_size``.
    """
    n = layout.num_rows
    shuffle = layout.mini_batch_size < n
    gen = torch.Generator().manual_seed(seed)
    plan: Plan = []
    for _ in range(num_iterations):
        order = (torch.randperm(n, generator=gen) if shuffle else torch.arange(n)).to(device)
        plan.extend(list(mini.split(layout.micro_batch_size)) for mini in order.split(layout.mini_batch_size))
    return plan


def split_idle_rows(advantages: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """``rows`` (1-D indices) split into those with a non-zero advantage and those with 0.

    ``advantages: [N]``. A group whose completions all scored the same has advantage 0 on every row,
    so a group usually moves as a whole and its rows still share their prompt's forward pass.
    """
    active = advantages[rows].ne(0)
    return rows[active], rows[~active]


def normalizer_counts(completion_mask: Tensor, plan: Plan, loss_type: LossType) -> Tensor:
    """This rank's count of the loss normaliser's unit (the ``loss_type`` aggregation's
    :meth:`~grpo_lightning.algorithm.aggregations.Aggregation.count`) in each optimizer step's
    mini-batch: ``[len(plan)]`` float32. Summed over ranks, entry s is the ``normalizer`` of every
    micro-batch of step s. ``completion_mask: [N, T]``.
    """
    aggregation = AGGREGATIONS.get(loss_type)
    return torch.stack([sum(aggregation.count(completion_mask[rows]) for rows in step) for step in plan])


@dataclass(frozen=True)
class GradientScales:
    """Factors of one micro-batch's loss: ``backward`` multiplies the loss that is backpropagated,
    ``logged`` its share of the logged step loss."""

    backward: float
    logged: float


def gradient_scales(loss_type: LossType, micro_batches_per_step: int, world_size: int) -> GradientScales:
    """How a micro-batch's loss enters the gradient and the logged loss, given that DDP/FSDP average
    gradients over the ``world_size`` ranks.

    With a global normaliser (an aggregation that is not ``local``, every loss type but ``bnpo``)
    each micro-batch's loss is already its share of the global mini-batch loss, so the ranks'
    gradients must be summed: the backward scale ``world_size`` undoes the strategy's mean, and the
    logged shares (summed over micro-batches and ranks) add up to the mini-batch loss. A ``local``
    aggregation (``bnpo``, a token mean per micro-batch) makes the mini-batch loss the mean of the
    ``k = micro_batches_per_step`` micro-batch losses on each rank and of the ranks' values, so the
    backward scale is ``1 / k`` (the strategy averages over ranks) and the logged share
    ``1 / (k * world_size)``.
    """
    if AGGREGATIONS.get(loss_type).local:
        return GradientScales(
            backward=1.0 / micro_batches_per_step, logged=1.0 / (micro_batches_per_step * world_size)
        )
    return GradientScales(backward=float(world_size), logged=1.0)


@dataclass
class StepMetrics:
    """Sums over one training step's micro-batches; reduced over ranks in one collective."""

    names: tuple[str, ...] = (
        "kl",
        "entropy",
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "clip_ratio/region_mean",
        "ratio_mean",
    )
    token_sums: dict[str, Tensor] = field(default_factory=dict)
    tokens: Tensor | None = None
    loss: Tensor | None = None

    def add(self, loss: Tensor, metrics: dict[str, Tensor], entropy: Tensor | None, mask: Tensor) -> None:
        """Add one micro-batch: ``loss`` (its share of the step loss), token-mean ``metrics``, ``mask: [n, K]``."""
        tokens = mask.sum().float()
        values = dict(metrics)
        if entropy is not None:
            values["entropy"] = (entropy.detach() * mask).sum() / tokens.clamp(min=1)
        for name in self.names:
            if name in values:
                s = values[name].detach().float() * tokens
                self.token_sums[name] = self.token_sums.get(name, 0) + s
        self.tokens = tokens if self.tokens is None else self.tokens + tokens
        self.loss = loss.detach().float() if self.loss is None else self.loss + loss.detach().float()

    def packed(self) -> tuple[list[str], Tensor]:
        """Names and a 1-D tensor [loss, tokens, *token_sums] to all-reduce (sum)."""
        keys = [n for n in self.names if n in self.token_sums]
        assert self.loss is not None and self.tokens is not None, "no micro-batch was added"
        values = torch.stack([self.loss, self.tokens, *(self.token_sums[k] for k in keys)])
        return keys, values
