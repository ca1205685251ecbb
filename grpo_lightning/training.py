"""The body of GRPOModule.training_step: rollout, rewards, advantages, then the update loop.

Kept apart from ``module.py`` so the module reads as a list of Lightning hooks; everything here
goes through the module's Lightning API (``manual_backward``, ``optimizers``, ``log_dict``,
``all_gather``, the strategy's collectives), so it works unchanged under DDP and FSDP.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from grpo_lightning.advantages import compute_advantages, group_stats
from grpo_lightning.losses import grpo_loss
from grpo_lightning.models import reference_context
from grpo_lightning.rollout import Rollout
from grpo_lightning.scoring import ScoredRollout, concat_scored, sample_and_score
from grpo_lightning.seeds import SeedStream, stream_seed
from grpo_lightning.update import (
    GradientScales,
    Plan,
    StepMetrics,
    UpdateBatch,
    full_logprobs,
    gradient_scales,
    micro_logprobs,
    minibatch_plan,
    normalizer_counts,
)
from grpo_lightning.zero_signal import has_signal, skip_update

if TYPE_CHECKING:
    from grpo_lightning.module import GRPOModule


@contextmanager
def _no_grad_sync(module: GRPOModule) -> Iterator[None]:
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
    """Runs one training step for ``module``; holds no state of its own between steps."""

    def __init__(self, module: GRPOModule) -> None:
        self.module = module

    def run(self, batch: dict[str, Any]) -> dict[str, Any]:
        m = self.module
        step = m.trainer.global_step  # optimizer steps so far: fixes the seeds, so resume is exact
        prompts = batch["input_ids"].shape[0] if "input_ids" in batch else len(batch["prompt"])
        m.layout(prompts)  # settings that do not divide fail here, before any generation
        t0 = time.perf_counter()
        scored = self.collect(batch, step)
        advantages, stats = self.advantages(scored)
        t1 = time.perf_counter()
        signal = has_signal(stats["advantages"])  # every group zero-spread: the weights must not move
        h = m.hparams
        losses = (
            self.update(scored, advantages, step)
            if signal
            else skip_update(m, h.num_iterations * h.steps_per_rollout)
        )
        t2 = time.perf_counter()
        self.log(scored, advantages, stats, losses, rollout_s=t1 - t0, update_s=t2 - t1)
        m.log(
            "train/skipped_zero_advantage",
            float(not signal),
            on_step=True,
            on_epoch=False,
            batch_size=prompts,
        )
        return {"loss": losses["loss"], "samples": scored, "advantages": advantages.cpu()}

    # ---- rollout ---------------------------------------------------------------------------------

    def collect(self, batch: dict[str, Any], step: int) -> ScoredRollout:
        """Sample and score; with dynamic sampling, replace all-equal groups by fresh ones."""
        m, h = self.module, self.module.hparams
        rank, base = m.global_rank, m.base_seed()

        def sample(b: dict[str, Any], round_: int) -> ScoredRollout:
            return sample_and_score(
                m,
                b,
                num_generations=h.num_generations,
                sampling=m.sampling,
                seed=stream_seed(base, rank, step, SeedStream.ROLLOUT, round_),
                scorer=m.scorer,
                mask_truncated=h.mask_truncated_completions,
            )

        parts = [sample(batch, 0)]
        if not h.dynamic_sampling:
            return parts[0]
        G = h.num_generations
        groups = len(parts[0].total) // G
        for round_ in range(1, h.max_dynamic_sampling_rounds + 1):
            informative = sum(int((~group_stats(p.total, G).zero_std).sum()) for p in parts)
            # Every rank must agree (generation can be collective under FSDP): go on if any needs more.
            if not m.trainer.strategy.reduce_boolean_decision(informative < groups, all=False):
                break
            extra = self._next_train_batch()
            if extra is None:
                break
            parts.append(sample(extra, round_))
        merged = concat_scored(parts, m.tokenizer.pad_token_id)
        zero = group_stats(merged.total, G).zero_std
        order = torch.cat([(~zero).nonzero().flatten(), zero.nonzero().flatten()])[:groups]
        rows = (order.unsqueeze(1) * G + torch.arange(G)).flatten()
        return merged.select(rows)

    def _next_train_batch(self) -> dict[str, Any] | None:
        """The next batch of the training dataloader's own iterator (None when the epoch is over)."""
        trainer = self.module.trainer
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if fetcher is None:
            return None
        try:
            batch, _, _ = next(fetcher)
        except StopIteration:
            return None
        # Let Lightning see that the epoch's data ran out during this step (validation at epoch end).
        trainer.fit_loop.epoch_loop.batch_progress.is_last_batch = fetcher.done
        batch = trainer.precision_plugin.convert_input(batch)
        batch = self.module._on_before_batch_transfer(batch, dataloader_idx=0)
        return trainer.strategy.batch_to_device(batch, dataloader_idx=0)

    def advantages(self, scored: ScoredRollout) -> tuple[Tensor, dict[str, Tensor]]:
        """Local advantages ``[N]`` from statistics over every rank's rewards, and gathered values for
        the metrics."""
        m, h = self.module, self.module.hparams
        rollout = scored.rollout
        local = {
            "total": scored.total.to(m.device),
            "per_func": scored.per_func.to(m.device),
            "lengths": rollout.lengths.float(),
            "truncated": rollout.truncated.float(),
        }
        gathered = {
            k: v.reshape(-1, *v.shape[2:]) if m.trainer.world_size > 1 else v
            for k, v in m.all_gather(local).items()
        }
        adv = compute_advantages(gathered["total"], h.num_generations, h.scale_rewards)
        n = len(scored.total)
        gathered["advantages"] = adv
        return adv[m.global_rank * n : (m.global_rank + 1) * n], gathered

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
        opts = {"temperature": s.sampling.temperature, "chunk_size": s.logprob_chunk_size}
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
        for micro_batches, normalizer in zip(plan, counts, strict=True):
            for j, rows in enumerate(micro_batches):
                sync = j == len(micro_batches) - 1
                with nullcontext() if sync else _no_grad_sync(m):
                    loss, parts, entropy, mask = self._micro_loss(batch, rows, normalizer)
                    m.manual_backward(loss * scales.backward)
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
            chunk_size=s.logprob_chunk_size,
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

    # ---- logging ---------------------------------------------------------------------------------

    def log(
        self,
        scored: ScoredRollout,
        advantages: Tensor,
        gathered: dict[str, Tensor],
        losses: dict[str, Tensor],
        *,
        rollout_s: float,
        update_s: float,
    ) -> None:
        """Every training metric the README lists, once per training step (values are global)."""
        m, h = self.module, self.module.hparams
        total, per_func, lengths = gathered["total"], gathered["per_func"], gathered["lengths"]
        stats = group_stats(total, h.num_generations)
        values: dict[str, Tensor | float] = {
            "train/reward": total.nanmean(),
            "train/reward_std": stats.std.mean(),
            "train/advantage_abs_mean": gathered["advantages"].abs().mean(),
            "train/frac_zero_std_groups": stats.zero_std.float().mean(),
            "train/completions/mean_length": lengths.mean(),
            "train/completions/min_length": lengths.min(),
            "train/completions/max_length": lengths.max(),
            "train/completions/clipped_ratio": gathered["truncated"].mean(),
            "perf/rollout_s": rollout_s,
            "perf/update_s": update_s,
            "perf/tokens_per_s": float(lengths.sum()) / max(rollout_s + update_s, 1e-9),
        }
        for k, name in enumerate(m.scorer.names):
            column = per_func[:, k]
            valid = column[~column.isnan()]
            values[f"train/rewards/{name}/mean"] = valid.mean() if valid.numel() else float("nan")
            values[f"train/rewards/{name}/std"] = valid.std() if valid.numel() > 1 else 0.0
        for key in (
            "loss",
            "grad_norm",
            "lr",
            "entropy",
            "clip_ratio/low_mean",
            "clip_ratio/high_mean",
            "clip_ratio/region_mean",
            "kl",
        ):
            if key in losses:
                values[f"train/{key}"] = losses[key]
        progress = {k: values.pop(k) for k in ("train/reward", "train/kl") if k in values}
        # Lightning's own x-axis counts training steps (rollouts); the metrics belong to the optimizer
        # step they follow, as in TRL, so that curves of runs with other cadences line up.
        values["step"] = float(m.trainer.global_step)
        batch_size = len(scored.total) // h.num_generations
        m.log_dict(values, on_step=True, on_epoch=False, batch_size=batch_size)
        m.log_dict(progress, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)
