"""GRPOModule: the Lightning system that wires rollout, rewards, advantages and the clipped loss.

One ``training_step`` = one rollout and every optimizer step made from it::

    rollout  = sample num_generations completions of each of the batch's P prompts
    rewards  = score them; advantages over the global batch (all ranks)
    old, ref = no-grad log-probs, only when needed
    for each of num_iterations passes, for each of steps_per_rollout mini-batches:
        accumulate gradients over micro-batches, clip, optimizer step, LR scheduler step

So ``trainer.global_step`` counts optimizer steps (``num_iterations * steps_per_rollout`` per
training step) and ``Trainer(max_steps=...)`` counts those; loggers draw one point per training
step. Nothing is carried from one training step to the next: a checkpoint taken between steps
resumes exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from transformers import PreTrainedTokenizerBase

from grpo_lightning._quiet import quiet_known_noise, quiet_logger_start
from grpo_lightning.algorithm.advantages import ScaleRewards
from grpo_lightning.algorithm.losses import ImportanceSamplingLevel, LossType
from grpo_lightning.algorithm.update import BatchLayout
from grpo_lightning.evaluation.evaluator import Evaluator
from grpo_lightning.evaluation.steps import EvalMetrics, log_evaluation, log_sanity_check
from grpo_lightning.hf.model_card import ModelCardInfo, run_card_info
from grpo_lightning.hf.model_setup import (
    build_models,
    drop_rebuilt_weights,
    rebuilt_keys,
    restore_rebuilt_weights,
)
from grpo_lightning.hf.models import ModelSource, eos_token_ids, load_tokenizer, push_to_hub, save_pretrained
from grpo_lightning.logprobs import DEFAULT_CHUNK_SIZE
from grpo_lightning.rewards.scorer import RewardErrors, RewardFunc, RewardScorer
from grpo_lightning.rollout.dynamic_sampling import DynamicSampling, StepSeed
from grpo_lightning.rollout.engine import RolloutEngine
from grpo_lightning.rollout.engines import EngineName, resolve_engine
from grpo_lightning.rollout.sampler import Sampler, num_prompts
from grpo_lightning.rollout.seeds import base_seed, stream_seed
from grpo_lightning.rollout.source import RolloutSource, SyncRolloutSource
from grpo_lightning.training.collectives import LightningCollectives
from grpo_lightning.training.optim import configure_optimizers
from grpo_lightning.training.rollout_stats import global_advantages, rollout_metrics
from grpo_lightning.training.settings import Settings, unsaved_arguments
from grpo_lightning.training.step import TrainingStep
from grpo_lightning.training.stepping import LightningStepping
from grpo_lightning.training.threads import apply_thread_policy

quiet_known_noise()


class GRPOModule(LightningModule):
    """GRPO (Group Relative Policy Optimization) of a causal LM on verifiable rewards.

    Use it from LightningCLI YAML (each argument is a ``model.*`` key), from a notebook
    (``Trainer(...).fit(GRPOModule(...), datamodule=...)``) or in an existing pipeline. A batch is
    a dict with ``prompt`` (P texts), ``input_ids``/``attention_mask`` ([P, L], left-padded;
    tokenized from ``prompt`` when absent) and any other columns, which reach the reward functions
    repeated once per completion.

    Counting: ``trainer.global_step``, ``max_steps``, ``ModelCheckpoint(every_n_train_steps=...)``,
    the logged step of every metric and the progress bar count optimizer steps
    (``num_iterations * steps_per_rollout`` per training step); ``val_check_interval`` and
    ``limit_train_batches`` count training steps (rollouts). Metrics are logged once per training
    step, so use ``Trainer(log_every_n_steps=1)``.

    Each argument below but the objects (``model``, ``tokenizer``, ``reward_funcs``, ``optimizer``,
    ``lr_scheduler``, ``lora``, ``accuracy_reward``, ``rollout_engine``) is a field of one typed group
    of ``module.settings`` (:class:`~grpo_lightning.training.settings.Settings`), by the same name and
    default, checked when the module is built; ``hparams`` keeps the arguments as given, for checkpoints.

    Args:
        model: Hub id, local path, ``"builtin:tiny-math"``, or a built ``PreTrainedModel``.
        tokenizer: Tokenizer object, Hub id or path; default: the model's.
        reward_funcs: Reward functions ``f(prompts, completions, **columns) -> list[float | None]``:
            callables, registered names (``gsm8k_accuracy``, ``math_accuracy``, ...) or import paths
            (``pkg.module:func``). Besides the dataset's columns they receive ``completion_ids``,
            ``completion_lengths``, ``truncated`` and ``max_completion_length``.
        reward_weights: One weight per reward function (default 1 each); the reward is the weighted sum.
        reward_workers: Score in this many worker processes, one call per completion, so a reward that
            hangs or crashes cannot stall or end the run (0 = in the training process). The functions must
            be importable (registered names, import paths, module-level functions).
        reward_timeout: Seconds one reward call may take in a worker (needs reward_workers >= 1; None = no limit).
        reward_errors: A reward call that raises, times out or crashes its worker: "raise" stops the run
            naming the reward and the sample; "none" scores that completion None and warns.
        num_generations: G, completions sampled per prompt (at least 2).
        max_completion_length: Most tokens per completion.
        temperature: Sampling temperature; the log-probs of the loss use it too.
        top_p: Nucleus sampling mass (1.0 = off).
        top_k: Sample among the k most likely tokens (None or 0 = off).
        min_p: Drop tokens below min_p times the top probability (None = off).
        repetition_penalty: transformers' repetition penalty (1.0 = off; other values sample with ``generate``).
        generation_kwargs: Any other ``GenerationConfig`` field for sampling (these sample with ``generate``).
        beta: KL weight to the reference model (k3 estimator); 0 = no KL and no reference model at all.
        epsilon: Lower clip range of the importance ratio (and upper one unless ``epsilon_high`` is set).
        epsilon_high: Upper clip range (DAPO clip-higher); None = ``epsilon``.
        delta: Two-sided clip: cap of the ratio in the unclipped term (None = off; 4 is usual).
        loss_type: Aggregation of the per-token loss: ``dapo`` (over the mini-batch's tokens), ``grpo``
            (per sequence, then mean), ``bnpo`` (local micro-batch tokens), ``dr_grpo`` (constant length).
        scale_rewards: Advantage scaling: ``group`` (divide by the group's std), ``batch`` (by the batch's
            std), ``none`` (Dr. GRPO: only subtract the group mean); TRL's ``true``/``false`` mean ``group``/``none``.
        importance_sampling_level: ``token`` ratios, or ``sequence`` (GSPO: one length-normalised ratio per completion).
        num_iterations: Passes over each rollout (mu); pi_old is then needed.
        steps_per_rollout: Optimizer steps per pass (mini-batches of the rollout).
        micro_batch_size: Rows per forward/backward; the gradient does not depend on it. None (the
            default): the most rows whose activations, estimated from the rollout's padded width and
            the model's layers and hidden size, fit beside the training state (weights, gradients,
            AdamW, reference) in 2.25 GiB (or a tenth of the state, when that is more) on the CPU, or
            in 60% of a CUDA device's free memory, and at least one (:mod:`~grpo_lightning.algorithm.micro_batch`: the whole mini-batch for small
            models, one row for a 135M model in float32 on the CPU). With
            ``loss_type="bnpo"``, whose loss is a mean per micro-batch, None is the whole mini-batch.
        mask_truncated_completions: Leave completions that hit the length limit without EOS out of the loss.
        top_entropy_quantile: Keep only this fraction of the highest-entropy tokens in the loss (1.0 = all).
        optimizer: An optimizer callable (LightningCLI ``class_path``); default AdamW. When given, the
            learning rate and weight decay are its own arguments (a non-default ``learning_rate`` or
            ``weight_decay`` is then refused: it could not take effect).
        lr_scheduler: A scheduler callable, stepped once per optimizer step; default linear warmup
            over ``warmup_steps``, then constant (a non-default ``warmup_steps`` is then refused).
        learning_rate: AdamW learning rate (default optimizer only).
        weight_decay: AdamW weight decay on matrices (default optimizer only).
        warmup_steps: Linear warmup (default scheduler only): optimizer steps, or a fraction of the run's
            optimizer steps when a float below 1 (``0.1``), as transformers' ``TrainingArguments``.
        warmup_ratio: The warmup as a fraction of the run's optimizer steps (the name in transformers 4 and
            older TRL; the same as ``warmup_steps`` below 1). Give it or ``warmup_steps``, not both.
        max_grad_norm: Clip the gradient norm to this (None = no clipping); use it instead of the
            Trainer's ``gradient_clip_val``.
        gradient_checkpointing: Recompute activations in the backward pass (less memory, more time).
        lora: LoRA adapter: a dict of ``peft.LoraConfig`` fields or a ``LoraConfig``. The reference is
            then the base model with the adapter disabled (no copy).
        model_kwargs: Passed to ``from_pretrained`` (``dtype``, ``attn_implementation``, ``revision``, ...).
        disable_dropout: Set dropout to 0, so that pi and pi_old are the same function.
        sync_ref_model: TR-DPO: mix the policy into the reference every ``ref_model_sync_steps`` optimizer steps.
        ref_model_mixup_alpha: TR-DPO mixing weight: ``ref <- alpha * policy + (1 - alpha) * ref``.
        ref_model_sync_steps: TR-DPO period, in optimizer steps.
        dynamic_sampling: DAPO dynamic sampling: drop groups whose rewards are all equal and top the
            rollout up with groups of prompts drawn at random (seeded by step) from the training set
            (a map-style dataset); every batch is still one training step.
        max_dynamic_sampling_rounds: Most extra generation rounds per training step for dynamic sampling.
        val_num_samples: Sampled completions per validation prompt (N) for ``val/mean@N``, ``val/pass@k`` and
            ``val/maj@k`` (1 = greedy only; see :mod:`grpo_lightning.evaluation.steps`).
        accuracy_reward: The reward that decides ``val/accuracy`` (default: the first reward function).
        accuracy_threshold: A completion is correct when its accuracy reward is at least this.
        log_completions: TRL's switch: with ``log_completions_every_n_steps`` 0, show sample completions
            every ``Trainer(log_every_n_steps=...)`` optimizer steps, as TRL does every ``logging_steps``.
        log_completions_every_n_steps: Print sample completions and log them as a table every n
            optimizer steps (0 = never, unless ``log_completions``).
        num_completions_to_log: How many completions each table shows (spread over different prompts).
        logprob_chunk_size: Token positions per LM-head chunk in the log-prob passes; lower it to save
            memory with a large vocabulary.
        rollout_engine: ``auto`` (the lean KV-cache sampling loop, or ``generate`` when a setting needs
            it), ``fast``, ``hf`` (transformers' ``generate``) or a ``RolloutEngine`` object.
        reuse_sampling_logprobs: Take pi_old from the sampling pass when the engine reports it (saves a
            forward pass; equal to about 1e-6 in float32). Set False to recompute it, as TRL does.
        seed: Base of the per-rank, per-step sampling seeds (default: the ``seed_everything`` seed).
    """

    def __init__(
        self,
        model: ModelSource,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        reward_funcs: Sequence[str | RewardFunc] | str | RewardFunc | None = None,
        reward_weights: Sequence[float] | None = None,
        reward_workers: int = 0,
        reward_timeout: float | None = None,
        reward_errors: RewardErrors = "raise",
        num_generations: int = 8,
        max_completion_length: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        min_p: float | None = None,
        repetition_penalty: float = 1.0,
        generation_kwargs: dict[str, Any] | None = None,
        beta: float = 0.0,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        delta: float | None = None,
        loss_type: LossType = "dapo",
        scale_rewards: ScaleRewards | bool = "group",
        importance_sampling_level: ImportanceSamplingLevel = "token",
        num_iterations: int = 1,
        steps_per_rollout: int = 1,
        micro_batch_size: int | None = None,
        mask_truncated_completions: bool = False,
        top_entropy_quantile: float = 1.0,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        learning_rate: float = 1e-6,
        weight_decay: float = 0.0,
        warmup_steps: int | float = 10,
        warmup_ratio: float | None = None,
        max_grad_norm: float | None = 1.0,
        gradient_checkpointing: bool = False,
        lora: dict[str, Any] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        disable_dropout: bool = True,
        sync_ref_model: bool = False,
        ref_model_mixup_alpha: float = 0.6,
        ref_model_sync_steps: int = 512,
        dynamic_sampling: bool = False,
        max_dynamic_sampling_rounds: int = 4,
        val_num_samples: int = 1,
        accuracy_reward: str | Callable[..., Any] | None = None,
        accuracy_threshold: float = 1.0,
        log_completions: bool = False,
        log_completions_every_n_steps: int = 0,
        num_completions_to_log: int = 4,
        logprob_chunk_size: int = DEFAULT_CHUNK_SIZE,
        rollout_engine: RolloutEngine | EngineName | None = "auto",
        reuse_sampling_logprobs: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        # Every argument by name, taken before any other local exists: the settings are built from them.
        arguments = {name: value for name, value in locals().items() if name not in ("self", "__class__")}
        if reward_funcs is None:
            raise ValueError(
                "reward_funcs is required: give callables f(prompts, completions, **columns), registered "
                "names (grpo_lightning.rewards.available_rewards()) or import paths."
            )
        funcs = (
            [reward_funcs] if isinstance(reward_funcs, str) or callable(reward_funcs) else list(reward_funcs)
        )
        # Lightning saves the arguments (objects left out) in checkpoints; the code reads self.settings.
        self.save_hyperparameters(ignore=unsaved_arguments(model, tokenizer, funcs, accuracy_reward, lora))
        # Every setting checked once, here: each group checks its own fields when built.
        self.settings = Settings.from_arguments(arguments)
        self.automatic_optimization = False

        r = self.settings.rewards
        calls = (r.reward_workers, r.reward_timeout, r.reward_errors)
        self.scorer = RewardScorer(funcs, r.reward_weights, *calls)
        # Validation's sampled pass@k (and an accuracy reward of its own) are scored with the same
        # workers, time limit and error handling as training.
        accuracy = [accuracy_reward] if accuracy_reward is not None else funcs[:1]
        self.accuracy_scorer = RewardScorer(accuracy, None, *calls)
        self.tokenizer = load_tokenizer(tokenizer, model, self.settings.model.model_kwargs)
        self._model_spec = model if isinstance(model, str) else None
        self._lora = lora
        # A built model is registered right away (Lightning moves it); a named one loads in configure_model.
        self.policy: nn.Module | None = model if isinstance(model, nn.Module) else None
        self.ref_model: nn.Module | None = None
        # Built with the policy in configure_model: sampling, the rollout source, the update, evaluation.
        self.sampler: Sampler | None = None
        self.rollouts: RolloutSource | None = None
        self.updater: TrainingStep | None = None
        self.evaluator: Evaluator | None = None
        self.collectives = LightningCollectives(self)
        self._configured = False
        self.sampling = self.settings.sampling
        self.greedy = replace(self.sampling, do_sample=False)
        self.rollout_engine: RolloutEngine = resolve_engine(rollout_engine, self.sampling)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.val_metrics = EvalMetrics(self.settings.evaluation.val_num_samples)
        self.test_metrics = EvalMetrics(self.settings.evaluation.val_num_samples)

    # ---- models ----------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Build the policy (and the reference when beta > 0), and the sampler, rollout source, update
        and evaluator made from them. Idempotent; called by Lightning before fitting (under the
        strategy's device and sharding context) and by any method that needs it."""
        if self._configured:
            return
        m = self.settings.model
        policy, ref = build_models(
            self.policy,
            self._model_spec,
            model_kwargs=m.model_kwargs,
            no_dropout=m.disable_dropout,
            gradient_checkpointing=m.gradient_checkpointing,
            with_reference=self.settings.loss.beta > 0,
            lora=self._lora,
            device_mesh=self.device_mesh,
        )
        self.policy, self.ref_model = policy, ref
        s, eos = self.settings, eos_token_ids(policy, self.tokenizer)
        engine, G, mask = self.rollout_engine, s.cadence.num_generations, s.loss.mask_truncated_completions
        sampler = Sampler(policy, self.tokenizer, engine, eos, self.scorer, self.sampling, G, mask)
        refill = self._dynamic_sampling if s.cadence.dynamic_sampling else None
        self.sampler = sampler
        self.rollouts = SyncRolloutSource(sampler, self._policy_version, self._seeds, refill)
        stepping = LightningStepping(self, policy)
        names = self.scorer.names
        self.updater = TrainingStep(policy, ref, s, self.collectives, stepping, self._seeds, names)
        e = s.evaluation
        self.evaluator = Evaluator(
            sampler, self.greedy, self.accuracy_scorer, e.accuracy_threshold, e.val_num_samples, self.collectives
        )
        self._configured = True

    def setup(self, stage: str) -> None:
        """Choose this process's CPU thread count once, the node's CPUs shared among its training
        processes (see :mod:`grpo_lightning.training.threads`)."""
        apply_thread_policy(processes=self.trainer.num_devices)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave the weights training never changes (the frozen reference, a LoRA base) out of the
        checkpoint: they are rebuilt from ``model`` on load."""
        synced = self.settings.ref_sync.sync_ref_model  # reference sync moves it: kept
        drop_rebuilt_weights(checkpoint, rebuilt_keys(self.policy, self.ref_model, synced))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put the rebuilt weights back into the state to load, and refuse a checkpoint of another
        configuration, or other starting weights, with a readable message."""
        self.configure_model()
        own, has_ref = self.state_dict(), self.ref_model is not None
        restore_rebuilt_weights(checkpoint, own, has_ref, self.hparams.get("model"))

    # ---- optimizer -------------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over the trainable parameters (weight decay on matrices only) with linear warmup,
        unless ``optimizer`` / ``lr_scheduler`` callables were given. The frozen reference is never
        in the optimizer."""
        self.configure_model()
        assert self.policy is not None
        config = self.settings.optimizer
        total = self._run_optimizer_steps() if config.warmup_fraction is not None else None
        return configure_optimizers(self.policy, config, self.optimizer_factory, self.lr_scheduler_factory, total)

    def _run_optimizer_steps(self) -> int | float:
        """The run's optimizer steps: ``max_steps`` (it counts them), else Lightning's estimate of the
        training steps (from the epochs) times the optimizer steps each makes."""
        trainer = self.trainer
        if trainer.max_steps > 0:
            return trainer.max_steps
        return trainer.estimated_stepping_batches * self.settings.cadence.optimizer_steps

    def configure_callbacks(self) -> list[Any]:
        """The checks before any step, callbacks that the settings ask for (reference sync, completion
        logging), the progress bar that counts optimizer steps and the RunGuard: see
        :func:`~grpo_lightning.training.callbacks.module_callbacks`."""
        from grpo_lightning.training.callbacks import module_callbacks

        quiet_logger_start(self.trainer.loggers)  # Lightning starts the loggers' runs right after this hook
        return module_callbacks(self.trainer, self.settings)

    # ---- steps -----------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """One rollout and ``num_iterations * steps_per_rollout`` optimizer steps (see the module docs)."""
        G = self.settings.cadence.num_generations
        step = self.trainer.global_step  # optimizer steps: resume is exact
        self.layout(num_prompts(batch))  # settings that do not divide fail here, before any generation
        start = time.perf_counter()
        rollout = self.rollouts.next(batch)
        scale = self.settings.loss.scale_rewards
        advantages, gathered = global_advantages(rollout.scored, G, scale, self.collectives, self.scorer)
        sampled = time.perf_counter()
        losses, skipped = self.updater.run(rollout, advantages, gathered, step)
        timings = {"rollout_s": sampled - start, "update_s": time.perf_counter() - sampled}
        metrics = rollout_metrics(gathered, self.scorer.names, G, losses, **timings)
        self._log_step(metrics, skipped=skipped, batch_size=len(rollout.scored.total) // G)
        return {"loss": losses["loss"], "samples": rollout.scored, "advantages": advantages.cpu()}

    def _log_step(self, metrics: dict[str, Any], *, skipped: bool, batch_size: int) -> None:
        """Log one training step's metrics (values are global); reward and KL also on the progress bar."""
        progress = {k: metrics.pop(k) for k in ("train/reward", "train/kl") if k in metrics}
        # Lightning's own x-axis counts training steps (rollouts); the metrics belong to the optimizer
        # step they follow, as in TRL, so that curves of runs with other cadences line up.
        metrics.update(
            step=float(self.trainer.global_step), **{"train/skipped_zero_advantage": float(skipped)}
        )
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=batch_size)
        self.log_dict(progress, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        result = self.evaluator.evaluate(batch, self._seeds(batch_idx))
        log_evaluation(self, self.evaluator, result, self.val_metrics, "val")

    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()

    def on_validation_epoch_end(self) -> None:
        # Lightning drops the sanity check's metrics; with num_sanity_val_steps=-1 that check is the
        # accuracy before training, the first point of the curve: log it at step 0 ourselves.
        if self.trainer.sanity_checking:
            log_sanity_check(self, self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        result = self.evaluator.evaluate(batch, self._seeds(batch_idx))
        log_evaluation(self, self.evaluator, result, self.test_metrics, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Records (prompt, completion, rewards, correct, the row's columns) of the greedy completion
        and of ``val_num_samples`` sampled ones; :class:`~grpo_lightning.evaluation.predict.PredictionWriter`
        writes them as JSON lines."""
        return self.evaluator.predict(batch, self._seeds(batch_idx))

    # ---- helpers used by the steps ---------------------------------------------------------------

    def layout(self, prompts_per_device: int) -> BatchLayout:
        """The rows / mini-batch / micro-batch sizes for this many prompts per device (checked)."""
        return self.settings.cadence.layout(prompts_per_device)

    def base_seed(self) -> int:
        """``seed`` if given, else the ``seed_everything`` seed (0 when none was set)."""
        return base_seed(self.settings.sampling.seed)

    def _seeds(self, index: int) -> StepSeed:
        """``seed(stream, round_)``: this rank's seeds of training step ``index`` (its optimizer step
        count) or of evaluation batch ``index``; read at each call, after any ``seed_everything``."""
        return partial(stream_seed, self.base_seed(), self.global_rank, index)

    def _policy_version(self) -> int:
        """The optimizer steps taken so far: the version of the weights that sample now."""
        return self.trainer.global_step

    def _dynamic_sampling(self) -> DynamicSampling:
        """This step's dynamic sampling, from the Trainer's current training loader."""
        return DynamicSampling.from_trainer(self.trainer, self.settings.cadence.max_dynamic_sampling_rounds)

    # ---- export ----------------------------------------------------------------------------------

    def save_pretrained(self, path: str, merge_lora: bool = False, card: ModelCardInfo | None = None) -> str:
        """Write the policy, tokenizer (``from_pretrained`` format) and model card to ``path``; returns the path.

        A LoRA policy is saved as its adapter, or merged into a plain model with ``merge_lora=True``.
        The card says what :meth:`model_card_info` gathers unless ``card`` is given.
        """
        self.configure_model()
        assert self.policy is not None
        card = card if card is not None else self.model_card_info()
        return str(save_pretrained(self.policy, self.tokenizer, path, merge_lora=merge_lora, card=card))

    def model_card_info(self) -> ModelCardInfo:
        """The model card's facts (see :func:`~grpo_lightning.hf.model_card.run_card_info`)."""
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached to a Trainer (an export outside fit): no run facts
            trainer = None
        return run_card_info(self.hparams, self.scorer.names, trainer)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Export and upload to the Hub repository ``repo_id``; ``kwargs`` as in ``models.push_to_hub``
        (the model card says what :meth:`model_card_info` gathers unless ``card`` is given)."""
        self.configure_model()
        if kwargs.get("card") is None:
            kwargs["card"] = self.model_card_info()
        return push_to_hub(self.policy, self.tokenizer, repo_id, **kwargs)
