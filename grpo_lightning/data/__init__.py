"""Prompt data for GRPO: the PromptDataModule, its sources and its batch format.

The names below load on first access. The ``datasets`` library loads only when data is first loaded
(so neither a run that brings its own DataModule nor ``grpo-lightning --help`` imports it).
"""

from typing import TYPE_CHECKING

from grpo_lightning._lazy import lazy_exports

_PROMPTS = "grpo_lightning.data.prompts"
_SOURCES = "grpo_lightning.data.sources"
_EXPORTS = {
    "DEFAULT_PROMPT_TEMPLATE": _PROMPTS,
    "DataSourceError": _SOURCES,
    "EpochRandomSampler": _PROMPTS,
    "PromptCollator": _PROMPTS,
    "PromptDataModule": "grpo_lightning.data.datamodule",
    "PromptFormatter": _PROMPTS,
    "ResumableDataLoader": _PROMPTS,
    "load_source": _SOURCES,
    "normalize_columns": _SOURCES,
    "synthetic_splits": "grpo_lightning.data.synthetic_source",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

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
