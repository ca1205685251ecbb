"""TRL's names and habits carry over: ``scale_rewards: true/false``, ``log_completions: true``, a warmup
given as a fraction of the run (``warmup_steps: 0.1`` as transformers' ``TrainingArguments``, or the older
``warmup_ratio``) and ``shuffle_dataset: false``."""

from __future__ import annotations

import math

import pytest
from helpers import make_module, make_trainer, one_thread, tiny_tokenizer  # noqa: F401 (autouse fixture)
from test_readme import readme_section
from torch.utils.data import DataLoader

from grpo_lightning.data import PromptDataModule
from grpo_lightning.data.prompts import EpochSequentialSampler
from grpo_lightning.training.callbacks import CompletionLogger
from grpo_lightning.training.optim import OptimizerConfig, warmup_factor
from grpo_lightning.training.settings_groups import LoggingSettings


@pytest.mark.parametrize(("given", "name"), [(True, "group"), (False, "none"), ("batch", "batch")])
def test_scale_rewards_takes_trls_booleans(given, name):
    module = make_module(scale_rewards=given)
    assert module.settings.loss.scale_rewards == name
    assert module.hparams.scale_rewards == given  # the argument as given: the saved config reloads it


@pytest.mark.parametrize(
    ("warmup_steps", "warmup_ratio", "total", "steps"),
    [
        (10, None, 100, 10),  # a number of optimizer steps, whatever the run's length
        (0.1, None, 100, 10),  # transformers' float below 1: a tenth of 100 steps
        (0.25, None, 6, 2),  # ceil(1.5) = 2, rounded up as transformers does
        (10, 0.05, 40, 2),  # the older name, with warmup_steps left at its default
        (10.0, None, None, 10),  # a whole float is a number of steps (YAML may write 10.0)
        (0, None, None, 0),
    ],
)
def test_the_warmup_as_steps_or_as_a_fraction_of_the_run(warmup_steps, warmup_ratio, total, steps):
    config = OptimizerConfig(warmup_steps=warmup_steps, warmup_ratio=warmup_ratio)
    assert config.warmup(total) == steps


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"warmup_steps": 5, "warmup_ratio": 0.1}, "both set the warmup: give one of them"),
        ({"warmup_steps": 2.5}, "a number of optimizer steps is a whole number"),
        ({"warmup_ratio": 1.0}, r"warmup_ratio=1.0 must be in \[0, 1\)"),
        ({"warmup_steps": math.nan}, "must be a finite number"),
    ],
)
def test_a_warmup_that_cannot_be_meant_is_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        make_module(**settings)


def test_a_fraction_of_an_unknown_run_length_is_refused():
    with pytest.raises(ValueError, match=r"run's length is unknown: set Trainer\(max_steps=...\)"):
        OptimizerConfig(warmup_ratio=0.1).warmup(math.inf)


def test_a_fractional_warmup_ramps_over_that_share_of_max_steps():
    # warmup_steps=0.5 of max_steps=4: 2 warmup steps, so the LR of the optimizer steps 0..3 is
    # lr * (1/2, 2/2, 1, 1).
    module = make_module(warmup_steps=0.5, learning_rate=1e-3)
    trainer = make_trainer(max_steps=4)
    trainer.strategy.connect(module)
    module.trainer = trainer
    (optimizer,), (scheduler,) = _optimizers(module)
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])
    assert warmup_factor(0, 2) == 0.5


def _optimizers(module):
    out = module.configure_optimizers()
    return [out["optimizer"]], [out["lr_scheduler"]["scheduler"]]


@pytest.mark.parametrize(
    ("log_completions", "every_n", "log_every_n_steps", "period"),
    [(False, 0, 5, 0), (True, 0, 5, 5), (True, 3, 5, 3), (False, 3, 5, 3), (True, 0, 0, 1)],
)
def test_log_completions_logs_every_logging_step_as_trl_does(log_completions, every_n, log_every_n_steps, period):
    logging = LoggingSettings(log_completions=log_completions, log_completions_every_n_steps=every_n)
    assert logging.completions_every(log_every_n_steps) == period


def test_log_completions_adds_the_completion_table_to_a_run():
    module = make_module(log_completions=True)
    trainer = make_trainer(max_steps=1, log_every_n_steps=7)
    module.trainer = trainer
    loggers = [c for c in module.configure_callbacks() if isinstance(c, CompletionLogger)]
    assert len(loggers) == 1 and loggers[0].every_n_steps == 7


def test_shuffle_dataset_false_keeps_the_datas_order_every_epoch():
    tokenizer = tiny_tokenizer()
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(8)]
    data = PromptDataModule(
        dataset=_dataset(rows), tokenizer=tokenizer, batch_size=4, val_fraction=0.0, shuffle_dataset=False,
        prompt_template="{question}",
    )  # fmt: skip
    data.setup("fit")
    loader: DataLoader = data.train_dataloader()
    assert isinstance(loader.sampler, EpochSequentialSampler)
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        prompts = [p for batch in loader for p in batch["prompt"]]
        assert prompts == [r["question"] for r in rows]
    # The resume key records that the order is not shuffled, so a resume with shuffling is told apart.
    assert data.state_dict()["train_batches"]["order_seed"] is None
    shuffled = PromptDataModule(
        dataset=_dataset(rows), tokenizer=tokenizer, batch_size=4, val_fraction=0.0, prompt_template="{question}"
    )
    shuffled.setup("fit")
    order = [p for batch in shuffled.train_dataloader() for p in batch["prompt"]]
    assert sorted(order) == sorted(r["question"] for r in rows) and order != [r["question"] for r in rows]
    assert shuffled.state_dict()["train_batches"]["order_seed"] == 0


def _dataset(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


def test_every_trl_setting_named_in_the_readme_table():
    """The README's table lists every ``GRPOConfig`` field of TRL 1.16 (where it went or why not)."""
    table = readme_section("## Settings")
    missing = [name for name in TRL_GRPO_CONFIG_FIELDS if f"`{name}`" not in table]
    assert not missing, f"TRL GRPOConfig fields missing from the README's TRL table: {missing}"


#: TRL 1.16.0's ``GRPOConfig`` fields (beside those of ``transformers.TrainingArguments``).
TRL_GRPO_CONFIG_FIELDS = ["learning_rate", "model_init_kwargs", "trust_remote_code", "router_aux_loss_coef", "disable_dropout", "cast_lm_head_to_fp32", "remove_unused_columns", "num_generations", "num_generations_eval", "max_completion_length", "ds3_gather_for_generation", "shuffle_dataset", "pad_to_multiple_of", "generation_batch_size", "steps_per_generation", "temperature", "top_p", "top_k", "min_p", "generation_kwargs", "chat_template_kwargs", "repetition_penalty", "cache_implementation", "use_vllm", "vllm_mode", "vllm_model_impl", "vllm_enable_sleep_mode", "vllm_structured_outputs_regex", "vllm_server_base_url", "vllm_server_host", "vllm_server_port", "vllm_server_timeout", "vllm_group_port", "vllm_gpu_memory_utilization", "vllm_max_model_length", "vllm_tensor_parallel_size", "beta", "num_iterations", "epsilon", "delta", "epsilon_high", "sapo_temperature_neg", "sapo_temperature_pos", "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg", "importance_sampling_level", "reward_weights", "multi_objective_aggregation", "scale_rewards", "loss_type", "mask_truncated_completions", "sync_ref_model", "ref_model_mixup_alpha", "ref_model_sync_steps", "top_entropy_quantile", "entropy_coef", "use_adaptive_entropy", "entropy_coef_min", "entropy_coef_max", "entropy_coef_delta", "entropy_target", "max_tool_calling_iterations", "vllm_importance_sampling_correction", "vllm_importance_sampling_mode", "vllm_importance_sampling_clip_max", "vllm_importance_sampling_clip_min", "off_policy_mask_threshold", "use_bias_correction_kl", "log_completions", "log_multimodal", "num_completions_to_print", "log_unique_prompts", "log_completions_hub_repo", "use_transformers_continuous_batching", "transformers_continuous_batching_config", "use_transformers_paged", "vllm_importance_sampling_cap"]


def test_the_list_of_trl_fields_is_complete():
    assert len(TRL_GRPO_CONFIG_FIELDS) == len(set(TRL_GRPO_CONFIG_FIELDS)) == 79
