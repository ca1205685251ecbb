"""The synthetic source: seeded train, validation and test splits of generated arithmetic problems.

The splits never share a problem: a problem whose worked chain already appears in an earlier split is
replaced by a new draw. The ``datasets`` library loads when the splits are built, not with this module.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from grpo_lightning.data.sources import DataSourceError

if TYPE_CHECKING:
    from datasets import DatasetDict

SYNTHETIC_SIZES = {"train_size": 2000, "val_size": 200, "test_size": 200}
_MAX_SYNTHETIC_ROUNDS = 20


def _derived_seed(seed: int, *parts: object) -> int:
    """A seed for one split and round, independent of Python's hash randomisation."""
    digest = hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def synthetic_splits(settings: Mapping[str, Any] | None, seed: int) -> DatasetDict:
    """Train, validation and test splits from :func:`grpo_lightning.data.synthetic.generate_problems`.

    ``settings`` holds ``train_size``/``val_size``/``test_size`` and the generator's knobs (``max_steps``,
    ``max_operand``, ``operations``, ``style``, ...). Each split has its own seed, and a problem whose
    worked chain already appears in an earlier split (train, then validation, then test) is replaced,
    so held-out problems are never seen in training, whatever the wording. A size of 0 leaves the
    split out.
    """
    from datasets import Dataset, DatasetDict

    from grpo_lightning.data.synthetic import generate_problems

    settings = dict(settings or {})
    knobs = [p for p in inspect.signature(generate_problems).parameters if p != "n"]
    unknown = sorted(set(settings) - set(SYNTHETIC_SIZES) - set(knobs))
    if unknown:
        raise DataSourceError(
            f"Unknown synthetic setting(s) {unknown}. Valid: {sorted(SYNTHETIC_SIZES)} and the generator's "
            f"{[k for k in knobs if k != 'seed']}."
        )
    if "seed" in settings:
        raise DataSourceError(
            "Set the synthetic data's seed with the data module's `data_seed`, not synthetic['seed']."
        )
    sizes = {name: int(settings.pop(name, default)) for name, default in SYNTHETIC_SIZES.items()}
    seen: set[str] = set()
    splits = {}
    for split, size in zip(("train", "validation", "test"), sizes.values(), strict=True):
        if size < 0:
            raise DataSourceError(f"synthetic size for {split} must be >= 0, got {size}.")
        rows: list[dict[str, str]] = []
        for round_ in range(_MAX_SYNTHETIC_ROUNDS):
            if len(rows) == size:
                break
            # Draw generously: near the end of a small problem space most draws are repeats.
            draws = max(2 * (size - len(rows)), 1000)
            for row in generate_problems(draws, seed=_derived_seed(seed, split, round_), **settings):
                key = row["solution"]
                if key not in seen and len(rows) < size:
                    seen.add(key)
                    rows.append(row)
        if len(rows) < size:
            raise DataSourceError(
                f"The synthetic settings {settings} allow too few distinct problems: only {len(rows)} of the "
                f"{size} {split} problems are new. Raise max_operand or max_steps, or ask for fewer problems."
            )
        if rows:  # a size of 0 means no such split
            splits[split] = Dataset.from_list(rows)
    return DatasetDict(splits)
