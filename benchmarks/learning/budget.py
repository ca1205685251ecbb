"""Training time against a budget, and copies of the policy's weights at evenly spaced marks.

Every method calls :meth:`BudgetClock.tick` at the end of each unit of work (an optimizer step, a
batch of samples); the clock takes the snapshots whose marks have passed and says when the budget is
spent. The time spent copying weights is not counted, so a method pays only for its training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

ClockName = Literal["wall", "cpu"]


@dataclass
class Snapshot:
    """The policy's weights when the training time first reached ``mark`` seconds."""

    mark: float
    """The nominal time of this snapshot (seconds of training)."""
    time: float
    """Training seconds actually elapsed when it was taken (>= mark: taken at the end of a unit)."""
    wall: float
    """Wall-clock seconds of training so far."""
    cpu: float
    """Process CPU seconds of training so far (all threads)."""
    steps: int
    """Optimizer steps so far."""
    samples: int
    """Sequences generated (sampling methods) or trained on (SFT) so far."""
    state: dict[str, torch.Tensor] = field(repr=False)
    """CPU copies of the policy's state dict."""


def marks_for(budget: float, num_marks: int) -> list[float]:
    """``num_marks + 1`` evenly spaced times from 0 to ``budget``: [0, budget/n, ..., budget]."""
    if budget <= 0:
        raise ValueError(f"budget={budget}: give the training time in seconds, > 0.")
    if num_marks < 1:
        raise ValueError(f"num_marks={num_marks}: at least 1 (the start and the end of the budget).")
    return [budget * i / num_marks for i in range(num_marks + 1)]


def weights_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of ``model``'s state dict (a later update does not change them)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class BudgetClock:
    """Counts training time (``clock``: wall-clock or process CPU seconds) and snapshots ``model``.

    Args:
        model: the policy whose weights are copied at each mark.
        budget: seconds of training.
        num_marks: snapshots at ``budget * i / num_marks`` for ``i = 0..num_marks``.
        clock: which time the budget counts; both are recorded in every snapshot.
    """

    def __init__(self, model: nn.Module, budget: float, num_marks: int, clock: ClockName = "wall") -> None:
        if clock not in ("wall", "cpu"):
            raise ValueError(f"clock={clock!r}: use 'wall' or 'cpu'.")
        self.model = model
        self.marks = marks_for(budget, num_marks)
        self.budget = budget
        self.clock = clock
        self.snapshots: list[Snapshot] = []
        self._wall0: float | None = None
        self._cpu0 = 0.0
        self._paused_wall = 0.0
        self._paused_cpu = 0.0

    def start(self) -> None:
        """Start counting and take the snapshot at time 0 (the starting weights)."""
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()
        self.tick(steps=0, samples=0)

    def elapsed(self) -> tuple[float, float]:
        """(wall, cpu) seconds of training so far, snapshot copies excluded."""
        if self._wall0 is None:
            raise RuntimeError("BudgetClock.start() was not called.")
        wall = time.perf_counter() - self._wall0 - self._paused_wall
        cpu = time.process_time() - self._cpu0 - self._paused_cpu
        return wall, cpu

    def tick(self, steps: int, samples: int) -> bool:
        """Take the snapshots whose marks have passed; True once the budget is spent (stop training).

        Several marks passed in one unit of work share one copy of the weights, each with the time
        at which it was taken.
        """
        wall, cpu = self.elapsed()
        now = wall if self.clock == "wall" else cpu
        due = [m for m in self.marks[len(self.snapshots) :] if m <= now]
        if due:
            paused_wall, paused_cpu = time.perf_counter(), time.process_time()
            state = weights_copy(self.model)
            for mark in due:
                self.snapshots.append(Snapshot(mark, now, wall, cpu, steps, samples, state))
            self._paused_wall += time.perf_counter() - paused_wall
            self._paused_cpu += time.process_time() - paused_cpu
        return self.done

    @property
    def done(self) -> bool:
        """Whether every mark, the end of the budget included, has its snapshot."""
        return len(self.snapshots) == len(self.marks)
