"""How the data module's splits are chosen from a loaded source: held-out share, caps, named splits."""

from __future__ import annotations

import pytest
from datasets import Dataset, DatasetDict

from grpo_lightning.data.sources import DataSourceError
from grpo_lightning.data.splits import cap_rows, hold_out, select_split

ROWS = Dataset.from_list([{"question": f"q{i}", "answer": str(i)} for i in range(8)])
SETTINGS = {
    "train_split": "train",
    "val_split": None,
    "test_split": None,
    "val_fraction": 0.25,
    "max_val_samples": None,
    "max_test_samples": None,
    "data_seed": 0,
}


def test_hold_out_takes_a_seeded_share_of_training_and_caps_it():
    train = hold_out(ROWS, "train", 0.25, None, seed=0, where="rows")
    val = hold_out(ROWS, "val", 0.25, None, seed=0, where="rows")
    assert (len(train), len(val)) == (6, 2)  # round(0.25 * 8) = 2 held out
    assert set(train["question"]).isdisjoint(val["question"])
    assert val["question"] == hold_out(ROWS, "val", 0.25, None, seed=0, where="rows")["question"]
    assert len(hold_out(ROWS, "val", 0.5, 3, seed=0, where="rows")) == 3  # min(4, max_val_samples=3)
    assert hold_out(ROWS, "val", 0.0, None, seed=0, where="rows") is None
    assert hold_out(ROWS, "train", 0.0, None, seed=0, where="rows") is ROWS


def test_holding_out_every_row_is_refused():
    with pytest.raises(DataSourceError, match=r"Holding out 8 of the 8 rows of rows for validation leaves none to train on: lower val_fraction"):
        hold_out(ROWS, "train", 0.95, None, seed=0, where="rows")


def test_cap_rows_is_a_seeded_subset():
    assert cap_rows(ROWS, None, seed=0) is ROWS and cap_rows(ROWS, 8, seed=0) is ROWS
    capped = cap_rows(ROWS, 3, seed=1)
    assert len(capped) == 3 and set(capped["question"]) <= set(ROWS["question"])
    assert capped["question"] == cap_rows(ROWS, 3, seed=1)["question"]


def test_select_split_uses_named_splits_and_refuses_a_missing_one():
    raw = DatasetDict({"train": ROWS, "validation": ROWS.select(range(2)), "test": ROWS.select(range(3))})
    pick = {"separate_val_source": False, "synthetic": False}
    assert select_split(raw, "train", SETTINGS, "src", **pick) is raw["train"]  # nothing held out
    assert len(select_split(raw, "val", SETTINGS, "src", **pick)) == 2
    assert len(select_split(raw, "test", {**SETTINGS, "max_test_samples": 1}, "src", **pick)) == 1
    with pytest.raises(DataSourceError, match=r"src has no split 'dev' \(splits: \['train', 'validation', 'test'\]\); set val_split"):
        select_split(raw, "val", {**SETTINGS, "val_split": "dev"}, "src", **pick)
    only_train = DatasetDict({"train": ROWS})
    assert select_split(only_train, "val", SETTINGS, "src", synthetic=True, separate_val_source=False) is None
    assert len(select_split(only_train, "val", SETTINGS, "src", **pick)) == 2  # held out
