"""The update of a training step: the optimizer steps made from one scored rollout.

:class:`TrainingStep` is built from what it needs (the policy, the reference, the settings, the
collectives across ranks and the optimizer side), so it runs under a Trainer (through
:class:`~grpo_lightning.training.stepping.LightningStepping` and
:class:`~grpo_lightning.training.collectives.LightningCollectives`, unchanged under DDP and FSDP)
or without one (a plain torch optimizer on one process).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from grpo_lightning.algorithm.losses import grpo_loss
from grpo_lightning.algorithm.micro_batch import (
    StepMemory,
    activation_bytes_per_token,
    device_budget,
    training_state_bytes,
)
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
from grpo_lightning.rollout.dynamic_sampling import StepSeed
from grpo_lightning.rollout.engine import Rollout
from grpo_lightning.rollout.seeds import SeedStream
from grpo_lightning.rollout.source import StepRollout
from grpo_lightning.training.collectives import Collectives
from grpo_lightning.training.settings import Settings
from grpo_lightning.training.stepping import OptimizerStepping
from grpo_lightning.training.zero_signal import has_signal, skip_update


def _grad_norm(params: list[Tensor]) -> Tensor:
    """The total L2 norm of the gradients (a full tensor under FSDP2)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])
    norm = torch.linalg.vector_norm(norms)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


class TrainingStep:
    """The update made from each training step's rollout; holds no state of its own between steps.

    Args:
        policy: The model being trained.
        reference: The frozen reference for the KL term (None: beta == 0, or LoRA, whose reference
            is the policy with its adapter off).
        settings: The run's settings (loss, cadence, sampling temperature, gradient clipping).
        collectives: The other ranks (sums of loss normalisers and metrics, the world size).
        stepping: The optimizer side (backward, clipping, optimizer and scheduler, gradient sync).
        seeds: ``seeds(step)(stream)``: the seeds of optimizer step ``step`` (the mini-batch shuffle).
        reward_names: The reward functions' names, for the warning of a step without signal.
    """

    def __init__(
        self,
        policy: nn.Module,
        reference: nn.Module | None,
        settings: Settings,
        collectives: Collectives,
        stepping: OptimizerStepping,
        seeds: Callable[[int], StepSeed],
        reward_names: Sequence[str],
    ) -> None:
        self.policy = policy
        self.reference = reference
        self.settings = settings
        self.collectives = collectives
        self.stepping = stepping
        self.seeds = seeds
        self.reward_names = list(reward_names)

    def run(
        self, rollout: StepRollout, advantages: Tensor, gathered: dict[str, Tensor], step: int
    ) -> tuple[dict[str, Tensor], bool]:
        """Learn from ``rollout`` at optimizer step ``step``: its loss metrics, and whether the update
        was skipped because every advantage of the global batch (``gathered``) is 0."""
        cadence, sampling = self.settings.cadence, self.settings.sampling
        if not has_signal(gathered["advantages"]):  # every group zero-spread: the weights must not move
            losses = skip_update(
                self.stepping,
                cadence.optimizer_steps,
                gathered,
                self.reward_names,
                cadence.num_generations,
                sampling.max_completion_length,
                rollout.refill_rounds,
            )
            return losses, True
        return self.update(rollout, advantages, step), False

    # ---- update ----------------------------------------------------------------------------------

    def update(self, rollout: StepRollout, advantages: Tensor, step: int) -> dict[str, Tensor]:
        """``num_iterations`` passes of ``steps_per_rollout`` optimizer steps over the rollout
        (``advantages: [N]``, this rank's rows), starting at optimizer step ``step``."""
        if rollout.policy_version != step:
            # pi_old below is the current weights: a rollout of older ones would be used as if on-policy.
            raise ValueError(
                f"The rollout was sampled by the policy of optimizer step {rollout.policy_version}, and the update "
                f"is at step {step}: this update takes pi_old to be the current weights. A rollout source that "
                "samples ahead must give the update its sampling log-probs (see grpo_lightning.rollout.source)."
            )
        cadence, loss_type = self.settings.cadence, self.settings.loss.loss_type
        sampled = rollout.scored.rollout
        prompts = len(sampled) // cadence.num_generations
        layout = cadence.layout(prompts, self._step_memory(sampled))
        batch = UpdateBatch(sampled.input_ids, sampled.attention_mask, sampled.completion_mask, advantages)
        self._old_and_ref_logprobs(batch, sampled, layout.micro_batch_size)
        # Mini-batches of every optimizer step, shuffled per pass with a seed fixed by the step.
        seed = self.seeds(step)(SeedStream.SHUFFLE)
        plan = minibatch_plan(layout, cadence.num_iterations, seed, sampled.completion_ids.device)
        # Each step's loss normaliser counts its whole mini-batch on every rank: one all-reduce for all.
        counts = self.collectives.reduce_sum(normalizer_counts(batch.completion_mask, plan, loss_type))
        scales = gradient_scales(loss_type, layout.micro_batches_per_step, self.collectives.world_size)
        return self._optimizer_steps(batch, plan, counts, scales)

    def _step_memory(self, rollout: Rollout) -> StepMemory | None:
        """What the default micro-batch is chosen from: the rows' padded width (the widest rank's, so
        that every rank makes the same number of forward calls, as FSDP needs) and the models' sizes.
        None when ``micro_batch_size`` is set, or when the loss depends on the split (``bnpo``, a
        token mean per micro-batch): the default must not change what is optimized."""
        if self.settings.cadence.micro_batch_size is not None or self.settings.loss.aggregation.local:
            return None
        width = rollout.prompt_ids.shape[1] + rollout.completion_ids.shape[1]
        budget = device_budget(rollout.completion_ids.device)
        if self.collectives.world_size > 1:
            # Every rank takes the widest rollout and the smallest device budget: the same split everywhere.
            mine = torch.tensor([width, -1 if budget is None else budget], device=self.collectives.device)
            both = self.collectives.all_gather({"both": mine.unsqueeze(0)})["both"]
            width, budget = int(both[:, 0].max()), (None if budget is None else int(both[:, 1].min()))
        per_token = activation_bytes_per_token(self.policy, self.settings.model.gradient_checkpointing)
        return StepMemory(width, per_token, training_state_bytes(self.policy, self.reference), budget)

    def _old_and_ref_logprobs(self, batch: UpdateBatch, rollout: Rollout, micro_batch_size: int) -> None:
        """Fill ``batch.old_logp`` (only when the policy moves before the rollout is used again) and
        ``batch.ref_logp`` (only when beta > 0) with no-grad passes."""
        s = self.settings
        opts = {"temperature": s.sampling.temperature, "chunk_size": s.model.logprob_chunk_size}
        # The sampling pass already computed pi_old when the engine reports its log-probs (one forward saved).
        if s.cadence.policy_moves_before_reuse:
            if s.cadence.reuse_sampling_logprobs and rollout.sampling_logp is not None:
                batch.old_logp = rollout.sampling_logp.float()
            else:
                batch.old_logp = full_logprobs(self.policy, batch, micro_batch_size, **opts)
        if s.loss.beta > 0:
            with reference_context(self.policy, self.reference) as ref:
                batch.ref_logp = full_logprobs(ref, batch, micro_batch_size, **opts)

    def _optimizer_steps(
        self, batch: UpdateBatch, plan: Plan, counts: Tensor, scales: GradientScales
    ) -> dict[str, Tensor]:
        """One optimizer step per entry of ``plan``: accumulate its micro-batches' gradients (synced
        on the last one only), clip, step the optimizer and the scheduler."""
        stepping, max_grad_norm = self.stepping, self.settings.optimizer.max_grad_norm
        opt, sched = stepping.optimizer(), stepping.scheduler()
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
                    with nullcontext() if sync else stepping.no_grad_sync():
                        loss, parts, entropy, mask = self._micro_loss(batch, learn, normalizer)
                        stepping.backward(loss * scales.backward)
                    metrics.add(loss * scales.logged, parts, entropy, mask)
                if idle.numel():
                    # Their gradient is exactly 0: a no-grad pass gives their share of the metrics.
                    with torch.no_grad():
                        loss, parts, entropy, mask = self._micro_loss(batch, idle, normalizer)
                    metrics.add(loss * scales.logged, parts, entropy, mask)
            norms.append(_grad_norm(params))
            if max_grad_norm is not None:
                stepping.clip_gradients(opt, max_grad_norm)
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
        s = self.settings
        return (
            s.loss.beta == 0
            and s.loss.aggregation.skips_idle_rows_exactly
            and s.loss.top_entropy_quantile >= 1.0
            and self.collectives.world_size == 1
        )

    def _micro_loss(
        self, batch: UpdateBatch, rows: Tensor, normalizer: Tensor
    ) -> tuple[Tensor, dict[str, Tensor], Tensor | None, Tensor]:
        s = self.settings
        # Entropy always: train/entropy is logged every step, and top_entropy_quantile needs it.
        logp, entropy, keep = micro_logprobs(
            self.policy,
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
        keys, values = metrics.packed()
        values = self.collectives.reduce_sum(values)  # the step's one metrics collective
        loss, tokens = values[0], values[1].clamp(min=1)
        out = {"loss": loss / num_steps, "grad_norm": norms.mean(), "lr": torch.tensor(lr)}
        out.update({k: v / tokens for k, v in zip(keys, values[2:], strict=True)})
        return out
