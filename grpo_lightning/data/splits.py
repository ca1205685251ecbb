"""Which rows make the training, validation and test splits of a loaded source.

A source's own splits are used by name (``train_split``, ``val_split``, ``test_split``, or the usual
``"validation"``/``"test"``); without a validation split a seeded share of the training split is held
out. Caps on a split's size take a seeded random subset. The functions only read the ``DatasetDict``
they are given, so the ``datasets`` library is already loaded when they run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from grpo_lightning.data.sources import DataSourceError

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

# The data module's split keys and the split names used in messages.
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test", "predict": "predict"}


def cap_rows(data: Dataset, cap: int | None, seed: int) -> Dataset:
    """At most ``cap`` rows: a seeded random subset when there are more (None: all rows)."""
    if cap is None or len(data) <= cap:
        return data
    return data.shuffle(seed=seed).select(range(cap))


def select_val_source_split(
    raw: DatasetDict, name: str | None, where: str, cap: int | None, seed: int
) -> Dataset:
    """The validation rows of a separate validation source: split ``name``, else its only split, else
    ``"validation"``, else ``"test"``; capped at ``cap`` rows."""
    if name is None:
        name = (
            next((n for n in ("validation", "test") if n in raw), None) if len(raw) > 1 else next(iter(raw))
        )
    if name is None or name not in raw:
        raise DataSourceError(
            f"val_dataset {where} has no split {name or 'validation/test'!r} (splits: {list(raw)}); set val_split."
        )
    return cap_rows(raw[name], cap, seed)


def select_split(
    raw: DatasetDict,
    split: str,
    settings: Mapping[str, Any],
    where: str,
    *,
    separate_val_source: bool,
    synthetic: bool,
) -> Dataset | None:
    """The raw rows of ``split`` (``"train"``, ``"val"`` or ``"test"``) of the source's splits ``raw``.

    ``settings`` holds the data module's ``train_split``, ``val_split``, ``test_split``, ``val_fraction``,
    ``max_val_samples``, ``max_test_samples`` and ``data_seed``. With ``separate_val_source`` validation
    comes from another source (``val_split`` names its split, and ``split`` is not ``"val"``); the
    synthetic source has its own validation split, so neither holds rows out of training. None when
    the source has no such split.
    """
    checked = (
        ("train_split", "test_split") if separate_val_source else ("train_split", "val_split", "test_split")
    )
    for setting in checked:
        name = settings[setting]
        if name is not None and name not in raw:
            raise DataSourceError(f"{where} has no split {name!r} (splits: {list(raw)}); set {setting}.")
    seed = settings["data_seed"]
    train_name = settings["train_split"]
    if split == "test":
        name = settings["test_split"] or ("test" if "test" in raw and train_name != "test" else None)
        return None if name is None else cap_rows(raw[name], settings["max_test_samples"], seed)
    val_name = (
        None
        if separate_val_source
        else settings["val_split"] or ("validation" if "validation" in raw else None)
    )
    if val_name is not None and val_name != train_name:
        return (
            raw[train_name]
            if split == "train"
            else cap_rows(raw[val_name], settings["max_val_samples"], seed)
        )
    # Nothing is held out of the training split when the synthetic source's own val_size (0: no
    # validation) or a val_dataset decides what validation is.
    if synthetic or separate_val_source:
        return raw[train_name] if split == "train" else None
    return hold_out(
        raw[train_name], split, settings["val_fraction"], settings["max_val_samples"], seed, where
    )


def hold_out(
    train: Dataset, split: str, val_fraction: float, max_val_samples: int | None, seed: int, where: str
) -> Dataset | None:
    """No separate validation split: the training or validation part of a seeded hold-out of ``train``
    (``val_fraction`` of its rows, at most ``max_val_samples``; none held out: None for validation)."""
    n_val = min(round(val_fraction * len(train)), max_val_samples or len(train))
    if n_val == 0:
        return train if split == "train" else None
    if n_val >= len(train):
        raise DataSourceError(
            f"Holding out {n_val} of the {len(train)} rows of {where} for validation leaves none to "
            "train on: lower val_fraction, or name a validation split with val_split."
        )
    parts = train.train_test_split(test_size=n_val, seed=seed, shuffle=True)
    return parts["train"] if split == "train" else parts["test"]
