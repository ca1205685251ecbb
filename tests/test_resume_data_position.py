"""Where a checkpoint stands in its data, and which data changes a resume can take."""

from __future__ import annotations

import pytest

from grpo_lightning.run.resume_data import LoaderPosition, check_data_resume, cli_value, loader_position


def _loop(processed, started, batches_processed, ready, last, loader_batches=None):
    state = (
        {"combined_loader": [{"epoch": 0, "batches": loader_batches}]} if loader_batches is not None else {}
    )
    return {
        "loops": {
            "fit_loop": {
                "epoch_progress": {"current": {"processed": processed, "started": started}},
                "epoch_loop.batch_progress": {
                    "current": {"processed": batches_processed, "ready": ready},
                    "is_last_batch": last,
                },
                "state_dict": state,
            }
        }
    }


def test_loader_position_from_lightning_progress():
    # After batch 1 of epoch 0; after its last batch (saved before or at the epoch's end); epoch 1 under way.
    assert loader_position(_loop(0, 1, 1, 1, False, 1)) == LoaderPosition(0, 1)
    assert loader_position(_loop(0, 1, 2, 2, True, 2)) == LoaderPosition(1, 0)
    assert loader_position(_loop(1, 1, 2, 2, True, 2)) == LoaderPosition(1, 0)
    assert loader_position(_loop(1, 2, 1, 1, False)) == LoaderPosition(1, 1)
    # A failing last batch saved as not taken (RunGuard lowers the loader's count): the epoch is not done.
    assert loader_position(_loop(0, 1, 1, 2, True, 1)) == LoaderPosition(0, 1)
    assert loader_position({}) == LoaderPosition(0, 0)


def test_without_a_saved_key_settings_are_judged_by_name():
    mid = LoaderPosition(0, 3)
    changes, note = check_data_resume({"num_workers": 0}, {"num_workers": 2}, {}, {}, mid)
    assert changes == {"data.num_workers": (0, 2)} and note is None
    with pytest.raises(ValueError, match=r"--data\.dataset a\.csv"):
        check_data_resume({"dataset": "a.csv"}, {"dataset": "b.csv"}, {}, {}, mid)
    _, note = check_data_resume({"dataset": "a.csv"}, {"dataset": "b.csv"}, {}, {}, LoaderPosition(2, 0))
    assert note is not None and "start of epoch 2" in note


def test_cli_values():
    assert [cli_value(v) for v in (None, True, 2, "a b", {"train_size": 4})] == [
        "null", "true", "2", "'a b'", "'{\"train_size\": 4}'",
    ]  # fmt: skip
