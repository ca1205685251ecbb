"""The optimizer and LR schedule: AdamW with linear warmup unless callables are given.

``learning_rate``, ``weight_decay`` and ``warmup_steps`` configure the default AdamW and warmup only;
given together with an ``optimizer`` / ``lr_scheduler`` callable they could not take effect, so
:class:`OptimizerConfig` refuses the combination when it is built.

The default AdamW runs torch's fused kernel where torch has one for every parameter (CPU and CUDA
floating point: one pass over all tensors per step), else what torch picks itself. torch's own default
on CPU is the per-tensor loop: 3.5x slower than fused on the built-in model's parameters, 1.2x at 23M
(``benchmarks/bench_adamw.py``; the multi-tensor ``foreach`` loop is slower still on CPU). To choose
another, pass the optimizer callable (YAML: ``model.optimizer: {class_path: torch.optim.AdamW,
init_args: {lr: 1.0e-4, fused: false, foreach: true}}``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import _default_to_fused_or_foreach


@dataclass(frozen=True)
class OptimizerConfig:
    """The default optimizer (AdamW) and schedule (linear warmup), and gradient clipping. A value other
    than a field's default is one the user chose (what :func:`_refuse_ignored` looks for)."""

    learning_rate: float = 1e-6
    """AdamW learning rate (default optimizer only)."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices (default optimizer only)."""
    warmup_steps: int | float = 10
    """Linear warmup (default scheduler only): optimizer steps, or a float below 1: that fraction of the run's."""
    warmup_ratio: float | None = None
    """The warmup as a fraction of the run's optimizer steps (transformers 4's name); None = ``warmup_steps``."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm to this; None = no clipping."""
    custom_optimizer: bool = False
    """An ``optimizer`` callable builds the optimizer (with its own learning rate and weight decay)."""
    custom_lr_scheduler: bool = False
    """An ``lr_scheduler`` callable builds the schedule (with its own warmup)."""

    def __post_init__(self) -> None:
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(
                f"learning_rate={self.learning_rate} must be a finite number > 0 (1e-6 is usual)."
            )
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay={self.weight_decay} must be a finite number >= 0 (0 = no decay).")
        if not (self.warmup_steps >= 0 and math.isfinite(self.warmup_steps)):
            raise ValueError(f"warmup_steps={self.warmup_steps} must be >= 0 (0 = no warmup).")
        if isinstance(self.warmup_steps, float) and self.warmup_steps >= 1 and not self.warmup_steps.is_integer():
            raise ValueError(
                f"warmup_steps={self.warmup_steps}: a number of optimizer steps is a whole number, and a fraction "
                "of the run is below 1 (0.1 = the first tenth)."
            )
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1) (0.1 = the first tenth).")
            if self.warmup_steps != _default("warmup_steps"):
                raise ValueError(
                    f"warmup_steps={self.warmup_steps} and warmup_ratio={self.warmup_ratio} both set the warmup: "
                    "give one of them (warmup_steps below 1 is a fraction of the run too)."
                )
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={self.max_grad_norm} must be > 0, or None for no clipping.")
        if self.custom_optimizer:
            _refuse_ignored(
                {"learning_rate": self.learning_rate, "weight_decay": self.weight_decay},
                "AdamW",
                "optimizer",
                "the optimizer's own arguments (command line: --model.optimizer.lr ...; YAML: "
                "model.optimizer.init_args.lr; Python: functools.partial(torch.optim.SGD, lr=...))",
            )
        if self.custom_lr_scheduler:
            _refuse_ignored(
                {"warmup_steps": self.warmup_steps, "warmup_ratio": self.warmup_ratio},
                "linear warmup",
                "lr_scheduler",
                "the scheduler (e.g. a torch.optim.lr_scheduler.LinearLR warmup inside a SequentialLR)",
            )


    @property
    def warmup_fraction(self) -> float | None:
        """The warmup as a fraction of the run (``warmup_ratio``, or ``warmup_steps`` below 1), else None."""
        if self.warmup_ratio is not None:
            return self.warmup_ratio
        return self.warmup_steps if 0 < self.warmup_steps < 1 else None

    def warmup(self, total_steps: int | float | None) -> int:
        """Warmup length in optimizer steps; a fraction is of ``total_steps`` (the run's optimizer steps),
        rounded up as transformers does."""
        fraction = self.warmup_fraction
        if fraction is None:
            return int(self.warmup_steps)
        if total_steps is None or not math.isfinite(total_steps):
            raise ValueError(
                f"The warmup is given as a fraction of the run ({fraction}), but the run's length is unknown: "
                "set Trainer(max_steps=...), or give warmup_steps as a number of optimizer steps."
            )
        return math.ceil(fraction * total_steps)


def _default(name: str) -> Any:
    return {f.name: f.default for f in fields(OptimizerConfig)}[name]


def _refuse_ignored(values: dict[str, Any], default: str, callable_name: str, where: str) -> None:
    """Raise when a setting of the built-in ``default`` differs from its default although a callable
    replaces that default: the value could not take effect."""
    defaults_of = {f.name: f.default for f in fields(OptimizerConfig)}
    changed = [name for name, value in values.items() if value != defaults_of[name]]
    if not changed:
        return
    given = " and ".join(f"{name}={values[name]!r}" for name in changed)
    names = " and ".join(changed)
    defaults = ", ".join(f"{name}={defaults_of[name]!r}" for name in changed)
    one = len(changed) == 1
    raise ValueError(
        f"{given} would be ignored: {names} only {'configures' if one else 'configure'} the built-in {default}, "
        f"and an {callable_name} callable was given. Set {'it' if one else 'them'} in {where}, and drop {names} "
        f"from the module's settings (config file and command line), or set {'it' if one else 'them'} back to "
        f"the default ({defaults})."
    )


def configure_optimizers(
    policy: nn.Module,
    config: OptimizerConfig,
    optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
    lr_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    total_steps: int | float | None = None,
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer for the trainable parameters of ``policy``: the
    ``optimizer`` / ``lr_scheduler`` callables when given, else AdamW (weight decay on matrices
    only) with linear warmup; the scheduler steps once per optimizer step. ``total_steps``: the run's
    optimizer steps, for a warmup given as a fraction of them."""
    trainable = [p for p in policy.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("The policy has no trainable parameter (all frozen?): nothing to optimize.")
    if optimizer is not None:
        opt = optimizer(trainable)
    else:
        decay = config.weight_decay
        groups = [
            # Named, so a weight decay changed on resume reaches the decayed group only.
            {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": decay, "name": "decay"},
            {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0, "name": "no_decay"},
        ]
        opt = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=config.learning_rate, **adamw_implementation(trainable)
        )
    if lr_scheduler is not None:
        scheduler = lr_scheduler(opt)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise ValueError(
                "lr_scheduler: ReduceLROnPlateau is not supported, the scheduler is stepped once per "
                "optimizer step. Choose a step-based scheduler."
            )
    else:
        warmup = config.warmup(total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_factor(step, warmup))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def adamw_implementation(params: list[Tensor]) -> dict[str, bool]:
    """AdamW's fastest implementation for ``params``, as its keyword argument: ``{"fused": True}`` where
    torch has a fused kernel for every parameter (floating point on CPU, CUDA, MPS, XPU; sharded DTensors
    too), else ``{"foreach": True}`` where torch itself would pick its multi-tensor loop (CUDA), else
    ``{}`` (the per-tensor loop; on CPU it beats ``foreach``).

    torch's own rule (the one its optimizers apply when asked for neither), asked to consider fused.
    All three compute the same update up to float rounding, and the choice is saved with the
    optimizer's state, so a resumed run keeps the kernel it started with.
    """
    fused, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=True)
    return {"fused": True} if fused else {"foreach": True} if foreach else {}


def warmup_factor(step: int, warmup: int) -> float:
    """Linear warmup factor: (step + 1) / warmup for the first ``warmup`` optimizer steps, then 1."""
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
