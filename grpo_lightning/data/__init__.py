"""Prompt data for GRPO: the PromptDataModule, its sources and its batch format."""

from grpo_lightning.data.datamodule import PromptDataModule
from grpo_lightning.data.prompts import (
    DEFAULT_PROMPT_TEMPLATE,
    EpochRandomSampler,
    PromptCollator,
    PromptFormatter,
    ResumableDataLoader,
)
from grpo_lightning.data.sources import DataSourceError, load_source, normalize_columns, synthetic_splits

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "DataSourceError",
    "EpochRandomSampler",
    "PromptCollator",
    "PromptDataModule",
    "PromptFormatter",
    "ResumableDataLoader",
    "load_source",
    "normalize_columns",
    "synthetic_splits",
]
