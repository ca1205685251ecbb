"""The update of a training step: the optimizer steps made from one scored rollout.

Everything here goes through the module's Lightning API (``manual_backward``, ``optimizers``,
``clip_gradients``, the strategy's collectives), so it works unchanged under DDP and FSDP.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from grpo_lightning.algorithm.losses import grpo_loss
from grpo_lightning.algorithm.update import (
    GradientScales,
    Plan,
    StepMetrics,
    UpdateBatch,
    full_logprobs,
    gradient_scales,
    micro_logprobs,
    minibatch_plan,
    normalizer_counts,
    split_idle_rows,
)
from grpo_lightning.hf.models import reference_context
from grpo_lightning.rollout.engine import Rollout
from grpo_lightning.rollout.scoring import ScoredRollout
from grpo_lightning.rollout.seeds import SeedStream, stream_seed


@contextmanager
def _no_grad_sync(module: LightningModule) -> Iterator[None]:
    """Accumulate gradients locally (no all-reduce) for every micro-batch but a mini-batch's last."""
    policy = module.policy
    if hasattr(policy, "set_requires_gradient_sync"):  # FSDP2 module
        policy.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            policy.set_requires_gradient_sync(True)
    elif hasattr(module.trainer.strategy, "block_backward_sync"):  # DDP: model.no_sync()
        with module.trainer.strategy.block_backward_sync():
            yield
    else:
        yield


def _grad_norm(params: list[Tensor]) -> Tensor:
    """The total L2 norm of the gradients (a full tensor under FSDP2)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])
    norm = torch.linalg.vector_norm(norms)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


class TrainingStep:
    """The update of ``module`` (a ``GRPOModule``: its policy, reference, settings and optimizer);
    holds no state of its own between steps."""

    def __init__(self, module: LightningModule) -> None:
        self.module = module

    # ---- update ----------------------------------------------------------------------------------

    def update(self, scored: ScoredRollout, advantages: Tensor, step: int) -> dict[str, Tensor]:
        """``num_iterations`` passes of ``steps_per_rollout`` optimizer steps over the rollout."""
        m, cadence, loss_type = self.module, self.module.settings.cadence, self.module.settings.loss.loss_type
        rollout = scored.rollout
        layout = m.layout(len(rollout) // cadence.num_generations)
        batch = UpdateBatch(rollout.input_ids, rollout.attention_mask, rollout.completion_mask, advantages)
        self._old_and_ref_logprobs(batch, rollout, layout.micro_batch_size)
        # Mini-batches of every optimizer step, shuffled per pass with a seed fixed by the step.
        seed = stream_seed(m.base_seed(), m.global_rank, step, SeedStream.SHUFFLE)
        plan = minibatch_plan(layout, cadence.num_iterations, seed, rollout.completion_ids.device)
        # Each step's loss normaliser counts its whole mini-batch on every rank: one all-reduce for all.
        counts = m.trainer.strategy.reduce(
            normalizer_counts(batch.completion_mask, plan, loss_type), reduce_op="sum"
        )
        scales = gradient_scales(loss_type, layout.micro_batches_per_step, m.trainer.world_size)
        return self._optimizer_steps(batch, plan, counts, scales)

    def _old_and_ref_logprobs(self, batch: UpdateBatch, rollout: Rollout, micro_batch_size: int) -> None:
        """Fill ``batch.old_logp`` (only when the policy moves before the rollout is used again) and
        ``batch.ref_logp`` (only when beta > 0) with no-grad passes."""
        m, s = self.module, self.module.settings
        opts = {"temperature": s.sampling.temperature, "chunk_size": s.model.logprob_chunk_size}
        # The sampling pass already computed pi_old when the engine reports its log-probs (one forward saved).
        if s.cadence.policy_moves_before_reuse:
            if s.cadence.reuse_sampling_logprobs and rollout.sampling_logp is not None:
                batch.old_logp = rollout.sampling_logp.float()
            else:
                batch.old_logp = full_logprobs(m.policy, batch, micro_batch_size, **opts)
        if s.loss.beta > 0:
            with reference_context(m.policy, m.ref_model) as ref:
                batch.ref_logp = full_logprobs(ref, batch, micro_batch_size, **opts)

    def _optimizer_steps(
        self, batch: UpdateBatch, plan: Plan, counts: Tensor, scales: GradientScales
    ) -> dict[str, Tensor]:
        """One optimizer step per entry of ``plan``: accumulate its micro-batches' gradients (synced
        on the last one only), clip, step the optimizer and the scheduler."""
        m, max_grad_norm = self.module, self.module.settings.optimizer.max_grad_norm
        opt, sched = m.optimizers(), m.lr_schedulers()
        params = [p for group in opt.param_groups for p in group["params"]]
        metrics = StepMetrics()
        norms, lrs = [], []
        skip_idle = self._can_skip_idle_rows()
        for micro_batches, normalizer in zip(plan, counts, strict=True):
            splits = [split_idle_rows(batch.advantages, rows) for rows in micro_batches] if skip_idle else []
            # A mini-batch with no row to learn from still takes the full pass, so the optimizer
            # sees the zero gradients (and moves its moments and weight decay) exactly as before.
            if not any(learn.numel() for learn, _ in splits):
                splits = [(rows, rows[:0]) for rows in micro_batches]
            for j, (learn, idle) in enumerate(splits):
                sync = j == len(splits) - 1
                if learn.numel():
                    with nullcontext() if sync else _no_grad_sync(m):
                        loss, parts, entropy, mask = self._micro_loss(batch, learn, normalizer)
                        m.manual_backward(loss * scales.backward)
                    metrics.add(loss * scales.logged, parts, entropy, mask)
                if idle.numel():
                    # Their gradient is exactly 0: a no-grad pass gives their share of the metrics.
                    with torch.no_grad():
                        loss, parts, entropy, mask = self._micro_loss(batch, idle, normalizer)
                    metrics.add(loss * scales.logged, parts, entropy, mask)
            norms.append(_grad_norm(params))
            if max_grad_norm is not None:
                m.clip_gradients(opt, gradient_clip_val=max_grad_norm, gradient_clip_algorithm="norm")
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            opt.zero_grad(set_to_none=True)
            if sched is not None:
                sched.step()
        return self._reduce_metrics(metrics, len(plan), torch.stack(norms), lrs[-1])

    def _can_skip_idle_rows(self) -> bool:
        """Whether rows with advantage 0 may skip the backward pass without changing the update.

        Their per-token loss is ``-min(rho * 0, clip(rho) * 0) + beta * kl``: exactly 0 with
        ``beta == 0``, so their gradient is 0 and dropping them from the backward changes nothing,
        provided the loss's normaliser does not depend on which rows a call holds. That rules out
        ``bnpo`` (a token mean per call) and ``top_entropy_quantile < 1`` (a threshold per call).
        One process only: under DDP/FSDP every rank must make the same forward and backward calls,
        and ranks would split their rows differently.
        """
        s = self.module.settings
        return (
            s.loss.beta == 0
            and s.loss.aggregation.skips_idle_rows_exactly
            and s.loss.top_entropy_quantile >= 1.0
            and self.module.trainer.world_size == 1
        )

    def _micro_loss(
        self, batch: UpdateBatch, rows: Tensor, normalizer: Tensor
    ) -> tuple[Tensor, dict[str, Tensor], Tensor | None, Tensor]:
        m, s = self.module, self.module.settings
        # Entropy always: train/entropy is logged every step, and top_entropy_quantile needs it.
        logp, entropy, keep = micro_logprobs(
            m.policy,
            batch,
            rows,
            temperature=s.sampling.temperature,
            chunk_size=s.model.logprob_chunk_size,
            with_entropy=True,
        )
        mask = batch.completion_mask[rows][:, :keep]
        old = batch.old_logp[rows][:, :keep] if batch.old_logp is not None else None
        ref = batch.ref_logp[rows][:, :keep] if batch.ref_logp is not None else None
        loss, parts = grpo_loss(
            logp, old, ref, batch.advantages[rows], mask, s.loss, normalizer=normalizer, entropy=entropy
        )
        return loss, parts, entropy, mask

    def _reduce_metrics(
        self, metrics: StepMetrics, num_steps: int, norms: Tensor, lr: float
    ) -> dict[str, Tensor]:
        m = self.module
        keys, values = metrics.packed()
        values = m.trainer.strategy.reduce(values, reduce_op="sum")  # the step's one metrics collective
        loss, tokens = values[0], values[1].clamp(min=1)
        out = {"loss": loss / num_steps, "grad_norm": norms.mean(), "lr": torch.tensor(lr)}
        out.update({k: v / tokens for k, v in zip(keys, values[2:], strict=True)})
        return out
