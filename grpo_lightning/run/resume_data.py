"""Resuming on other data: report what changed, apply it where the saved loader position still holds,
refuse it where it does not.

A checkpoint saved part-way through an epoch records how many of that epoch's batches were trained
on, and the resumed loader skips that many. With other batches (another file, other rows, another
``batch_size``, order seed or number of processes) that skip would leave some prompts out of the
epoch and repeat others, so such a resume is refused with the two ways out. At an epoch boundary
nothing is skipped: the new data simply start the next epoch. Settings that do not change the
training batches (the prompt wording, validation, loader workers) are applied and listed.

The batches are compared by the key the data module saves (``state_dict()["train_batches"]``, see
:mod:`grpo_lightning.data.fingerprint`). A data module without one (or a checkpoint from before it
was saved) is judged by its settings: any change outside :data:`BATCH_NEUTRAL` counts as other batches.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from grpo_lightning.lightning_compat import saved_fit_progress
from grpo_lightning.run.exporting import EXPORT_COMMAND
from grpo_lightning.run.resume import changed_settings, describe_changes

#: Data-module settings that never change the training batches (judged by name when no key is saved).
BATCH_NEUTRAL = frozenset(
    {"val_batch_size", "val_config_name", "test_split", "max_test_samples", "num_workers", "long_prompts"}
)


# How the differences no setting names are listed.
ROWS = "training rows"
OTHER_COLUMNS = "training rows' other columns"
PROCESSES = "processes (devices x nodes)"
ORDER_SEED = "training order seed (the seed_everything seed, under DDP)"


@dataclass(frozen=True)
class LoaderPosition:
    """Where a checkpoint stands in the data: ``epochs_done`` whole epochs, then ``batches`` batches of
    the next one (0 at an epoch boundary)."""

    epochs_done: int
    batches: int


def loader_position(checkpoint: Mapping[str, Any]) -> LoaderPosition:
    """The position recorded in a Lightning checkpoint's fit-loop state.

    An epoch counts as done once its last batch was trained on, whether the checkpoint was written
    after that batch (the epoch's ``processed`` count is not raised yet) or at the epoch's end. The
    batches of an epoch in progress are the training loader's own count (RunGuard lowers it when the
    step in progress is dropped), else Lightning's count of processed batches (a batch counts as
    ``processed`` when its step ends, before the hooks that save checkpoints run).
    """
    saved = saved_fit_progress(checkpoint)
    done = saved.epochs_processed
    if saved.epochs_started <= done:
        return LoaderPosition(done, 0)
    if saved.is_last_batch and saved.batches_processed == saved.batches_ready:
        return LoaderPosition(done + 1, 0)
    first = saved.loader_states[0] if saved.loader_states else {}
    count = first.get("batches") if isinstance(first, Mapping) else None
    return LoaderPosition(done, int(count if isinstance(count, int) else saved.batches_processed))


def cli_value(value: Any) -> str:
    """``value`` as the command line takes it (``null``, ``true``, a quoted string, JSON)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        return shlex.quote(value)
    try:
        return shlex.quote(json.dumps(value))
    except TypeError:
        return shlex.quote(str(value))


def _batch_key_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The differences of two ``train_batches`` keys that no setting names: the rows and the processes."""
    changes: dict[str, tuple[Any, Any]] = {}
    if (saved.get("rows"), saved.get("questions")) != (current.get("rows"), current.get("questions")):
        changes[ROWS] = (
            f"{saved.get('rows')} rows (questions {saved.get('questions')})",
            f"{current.get('rows')} rows (questions {current.get('questions')})",
        )
    if saved.get("world_size") != current.get("world_size"):
        changes[PROCESSES] = (saved.get("world_size"), current.get("world_size"))
    several = max(saved.get("world_size", 1), current.get("world_size", 1)) > 1
    if several and saved.get("order_seed") != current.get("order_seed"):  # on one, data_seed says it
        changes[ORDER_SEED] = (saved.get("order_seed"), current.get("order_seed"))
    return changes


def check_data_resume(
    saved_settings: Mapping[str, Any],
    current_settings: Mapping[str, Any],
    saved_state: Mapping[str, Any],
    current_state: Mapping[str, Any],
    position: LoaderPosition,
    checkpoint: str | None = None,
) -> tuple[dict[str, tuple[Any, Any]], str | None]:
    """The data changes since a checkpoint and a line on how they apply; raises ``ValueError`` when the
    batches changed part-way through an epoch.

    Args:
        saved_settings, current_settings: the data module's hyperparameters then and now.
        saved_state, current_state: its ``state_dict()`` then and now (may be empty).
        position: the checkpoint's :func:`loader_position`.
        checkpoint: its path, for the command that exports its weights.

    Returns:
        ``({"data.<setting>" or a description: (then, now)}, note or None)``.
    """
    changes = {f"data.{k}": v for k, v in changed_settings(saved_settings, current_settings).items()}
    saved_key, current_key = saved_state.get("train_batches"), current_state.get("train_batches")
    if isinstance(saved_key, Mapping) and isinstance(current_key, Mapping):
        same_batches = dict(saved_key) == dict(current_key)
        changes.update(_batch_key_changes(saved_key, current_key))
        if same_batches and saved_state.get("train_content") != current_state.get("train_content"):
            changes[OTHER_COLUMNS] = ("as saved", "changed (same questions, same order)")
    else:
        same_batches = all(k.removeprefix("data.") in BATCH_NEUTRAL for k in changes)
    if same_batches or not changes:
        return changes, None
    if position.batches == 0:
        return changes, (
            f"The training batches changed; the checkpoint is at the start of epoch {position.epochs_done}, "
            "so that epoch runs on the new ones."
        )
    raise ValueError(_refusal(changes, saved_key, position, checkpoint or "<checkpoint>"))


def _refusal(
    changes: Mapping[str, tuple[Any, Any]], saved_key: Any, position: LoaderPosition, checkpoint: str
) -> str:
    fixes = [f"--{k} {cli_value(old)}" for k, (old, _) in changes.items() if k.startswith("data.")]
    if ROWS in changes:
        fixes.append(f"the training data as they were ({saved_key.get('rows')} rows)")
    if ORDER_SEED in changes:
        fixes.append(f"--seed_everything {changes[ORDER_SEED][0]}")
    if PROCESSES in changes:
        fixes.append(f"{changes[PROCESSES][0]} processes (devices x nodes)")
    return (
        f"This checkpoint was saved part-way through epoch {position.epochs_done} ({position.batches} of its "
        "batches trained on), and the training batches changed since:\n"
        f"{describe_changes(changes)}\n"
        f"Resuming would skip the first {position.batches} batches of the new data: some prompts would be left "
        "out of the epoch and others repeated. Resume with the checkpoint's values ("
        + "; ".join(fixes)
        + "), or start a new run without --ckpt_path from its weights: "
        f"{EXPORT_COMMAND} --ckpt_path {shlex.quote(checkpoint)} --export.dir <folder>, then --model.model <folder>."
    )
