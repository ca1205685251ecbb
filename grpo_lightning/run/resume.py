"""Resuming with settings that differ from the checkpoint's: apply them where sound, refuse the rest.

The run's own settings (config files and command line) are what a resumed run uses. Each one that
differs from the checkpoint is listed when the run starts; those that would make the checkpoint
meaningless are refused with a message naming them. The optimizer's learning rate and weight decay
live in the checkpoint's optimizer state too, so a changed value is written there before Lightning
restores it (otherwise the old value would silently win).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

#: Settings a checkpoint cannot continue under, with the reason.
REFUSED: dict[str, str] = {
    "num_generations": "the group size defines the advantages and the per-step batch layout the optimizer "
    "state was built with",
    "lora": "the checkpoint holds the weights of another set of trainable parameters",
    "sync_ref_model": "it decides whether the reference model is part of the checkpoint",
}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def changed_settings(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{name: (checkpoint value, current value)}`` for every setting both record and that differ."""
    return {
        k: (saved[k], current[k])
        for k in sorted(set(saved) & set(current))
        if not _same(saved[k], current[k])
    }


def check_resume_settings(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The changed settings (see :func:`changed_settings`); raises ``ValueError`` for a refused one."""
    changes = changed_settings(saved, current)
    refused = [k for k in changes if k in REFUSED]
    if refused:
        lines = [
            f"  {k}: checkpoint {changes[k][0]!r}, now {changes[k][1]!r} ({REFUSED[k]})" for k in refused
        ]
        fix = " ".join(f"--model.{k} {changes[k][0]!r}" for k in refused)
        raise ValueError(
            "This checkpoint cannot be resumed with these settings changed:\n" + "\n".join(lines) + "\n"
            f"Resume with the checkpoint's values ({fix}), or start a new run (no --ckpt_path) that loads its "
            "weights."
        )
    return changes


def describe_changes(changes: Mapping[str, tuple[Any, Any]]) -> str:
    """One line per setting: ``name: old -> new``."""
    return "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())


def apply_optimizer_settings(
    checkpoint: dict[str, Any],
    *,
    old_lr: float,
    new_lr: float,
    old_weight_decay: float | None = None,
    new_weight_decay: float | None = None,
) -> None:
    """Rewrite a Lightning checkpoint's optimizer and scheduler state for a new learning rate / weight decay.

    Every learning rate stored (``lr``, ``initial_lr`` of each parameter group, the scheduler's
    ``base_lrs`` and ``_last_lr``) is scaled by ``new_lr / old_lr``, so a schedule part-way through
    (warmup, decay) continues at the same point of its shape. A weight decay equal to the old one is
    replaced in the decayed group only: the default optimizer names its groups ``decay`` and
    ``no_decay`` (biases and norms keep 0); unnamed groups follow its layout, decay first.
    """
    scale = new_lr / old_lr if old_lr else None
    for state in checkpoint.get("optimizer_states", []):
        for index, group in enumerate(state.get("param_groups", [])):
            for key in ("lr", "initial_lr"):
                if key in group:
                    group[key] = group[key] * scale if scale is not None else new_lr
            decayed = group.get("name", "decay" if index == 0 else "no_decay") == "decay"
            if (
                new_weight_decay is not None
                and decayed
                and "weight_decay" in group
                and _same(group["weight_decay"], old_weight_decay)
            ):
                group["weight_decay"] = new_weight_decay
    for sched in checkpoint.get("lr_schedulers", []):
        for key in ("base_lrs", "_last_lr"):
            if isinstance(sched.get(key), list):
                sched[key] = [v * scale if scale is not None else new_lr for v in sched[key]]


def custom_optimizer_lr_change(
    factory: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer], checkpoint: Mapping[str, Any]
) -> tuple[float, float] | None:
    """``(old, new)`` base learning rate when an optimizer callable now builds its optimizer with
    another learning rate than the checkpoint's optimizer had, else None.

    Lightning restores the optimizer's state, learning rate included, over the one the callable
    builds, so a new rate given with ``--ckpt_path`` would otherwise be dropped without a word. The
    callable is probed on one throw-away parameter (building an optimizer has no side effects).
    """
    groups = [g for state in checkpoint.get("optimizer_states", []) for g in state.get("param_groups", [])]
    if not groups:
        return None
    old = groups[0].get("initial_lr", groups[0].get("lr"))
    new = factory([torch.nn.Parameter(torch.zeros(1))]).param_groups[0]["lr"]
    if old is None or _same(float(old), float(new)):
        return None
    return float(old), float(new)
