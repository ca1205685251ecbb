"""Prompt data for GRPO: the PromptDataModule, its sources and its batch format.

The names below load on first access. The ``datasets`` library loads only when data is first loaded
(so neither a run that brings its own DataModule nor ``grpo-lightning --help`` imports it).
"""

from typing import TYPE_CHECKING

from grpo_lightning._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "grpo_lightning.data.datamodule": ("PromptDataModule",),
        "grpo_lightning.data.prompts": (
            "DEFAULT_PROMPT_TEMPLATE",
            "EpochRandomSampler",
            "PromptCollator",
            "PromptFormatter",
            "ResumableDataLoader",
        ),
        "grpo_lightning.data.sources": ("DataSourceError", "load_source", "normalize_columns"),
        "grpo_lightning.data.synthetic_source": ("synthetic_splits",),
    },
    globals(),
)

if TYPE_CHECKING:
    from grpo_lightning.data.datamodule import PromptDataModule
    from grpo_lightning.data.prompts import (
        DEFAULT_PROMPT_TEMPLATE,
        EpochRandomSampler,
        PromptCollator,
        PromptFormatter,
        ResumableDataLoader,
    )
    from grpo_lightning.data.sources import DataSourceError, load_source, normalize_columns
    from grpo_lightning.data.synthetic_source import synthetic_splits

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
