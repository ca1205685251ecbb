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

from grpo_lightning.losses import aggregation_count, grpo_loss
from grpo_lightning.models import reference_context
from grpo_lightning.rollout import rollout_seed
from grpo_lightning.scoring import ScoredRollout
from grpo_lightning.update import StepMetrics, UpdateBatch, full_logprobs, micro_logprobs


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
        m, h = self.module, self.module.hparams
        rollout = scored.rollout
        layout = m.layout(len(rollout) // h.num_generations)
        batch = UpdateBatch(rollout.input_ids, rollout.attention_mask, rollout.completion_mask, advantages)
        opts = {"temperature": h.temperature, "chunk_size": h.logprob_chunk_size}
        # pi_old is only needed when the policy moves before the rollout is used again; the sampling
        # pass already computed it when the engine reports its log-probs (one forward pass saved).
        if h.num_iterations > 1 or h.steps_per_rollout > 1:
            if h.reuse_sampling_logprobs and rollout.sampling_logp is not None:
                batch.old_logp = rollout.sampling_logp.float()
            else:
                batch.old_logp = full_logprobs(m.policy, batch, layout.micro_batch_size, **opts)
        if h.beta > 0:
            with reference_context(m.policy, m.ref_model) as ref:
                batch.ref_logp = full_logprobs(ref, batch, layout.micro_batch_size, **opts)

        # Mini-batches of every optimizer step, shuffled per pass with a seed fixed by the step.
        gen = torch.Generator().manual_seed(rollout_seed(m.base_seed(), m.global_rank, step, 7))
        device = rollout.completion_ids.device
        plan: list[list[Tensor]] = []
        for _ in range(h.num_iterations):
            order = torch.randperm(layout.num_rows, generator=gen) if h.steps_per_rollout > 1 else None
            order = (order if order is not None else torch.arange(layout.num_rows)).to(device)
            for mini in order.split(layout.mini_batch_size):
                plan.append(list(mini.split(layout.micro_batch_size)))
        # Each step's loss normaliser counts its whole mini-batch on every rank: one all-reduce for all.
        counts = torch.stack(
            [sum(aggregation_count(batch.completion_mask[r], h.loss_type) for r in micro) for micro in plan]
        )
        counts = m.trainer.strategy.reduce(counts, reduce_op="sum")
        world = m.trainer.world_size
        # DDP/FSDP average gradients over ranks; the normaliser is already global, so undo the mean.
        # bnpo is a local mean per micro-batch by definition: average the micro-batches instead.
        scale = 1.0 / layout.micro_batches_per_step if h.loss_type == "bnpo" else float(world)
        # Each micro-batch's share of the logged loss, so that the sum over micro-batches and ranks
        # is the mini-batch loss (for bnpo: the mean of the ranks' micro-batch means).
        share = 1.0 / (layout.micro_batches_per_step * world) if h.loss_type == "bnpo" else 1.0

        opt, sched = m.optimizers(), m.lr_schedulers()
        params = [p for group in opt.param_groups for p in group["params"]]
        metrics = StepMetrics()
        norms, lrs = [], []
        for micro_batches, normalizer in zip(plan, counts, strict=True):
            for j, rows in enumerate(micro_batches):
                sync = j == len(micro_batches) - 1
                with nullcontext() if sync else _no_grad_sync(m):
                    loss, parts, entropy, mask = self._micro_loss(batch, rows, normalizer)
                    m.manual_backward(loss * scale)
                metrics.add(loss * share, parts, entropy, mask)
            norms.append(_grad_norm(params))
            if h.max_grad_norm is not None:
                m.clip_gradients(opt, gradient_clip_val=h.max_grad_norm, gradient_clip_algorithm="norm")
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            opt.zero_grad(set_to_none=True)
            if sched is not None:
                sched.step()
        return self._reduce_metrics(metrics, len(plan), torch.stack(norms), lrs[-1])

    def _micro_loss(
        self, batch: UpdateBatch, rows: Tensor, normalizer: Tensor
    ) -> tuple[Tensor, dict[str, Tensor], Tensor | None, Tensor]:
        m, h = self.module, self.module.hparams
        # Entropy always: train/entropy is logged every step, and top_entropy_quantile needs it.
        logp, entropy, keep = micro_logprobs(
            m.policy,
            batch,
            rows,
            temperature=h.temperature,
            chunk_size=h.logprob_chunk_size,
            with_entropy=True,
        )
        mask = batch.completion_mask[rows][:, :keep]
        old = batch.old_logp[rows][:, :keep] if batch.old_logp is not None else None
        ref = batch.ref_logp[rows][:, :keep] if batch.ref_logp is not None else None
        loss, parts = grpo_loss(
            logp,
            old,
            ref,
            batch.advantages[rows],
            mask,
            loss_type=h.loss_type,
            epsilon=h.epsilon,
            epsilon_high=h.epsilon_high,
            delta=h.delta,
            beta=h.beta,
            importance_sampling_level=h.importance_sampling_level,
            max_completion_length=h.max_completion_length,
            normalizer=normalizer,
            top_entropy_quantile=h.top_entropy_quantile,
            entropy=entropy,
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
