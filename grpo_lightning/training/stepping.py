"""How the update reaches the optimizer: backward, clipping, the optimizer and scheduler, gradient sync.

:class:`~grpo_lightning.training.step.TrainingStep` makes its optimizer steps through this narrow
interface. :class:`LightningStepping` goes through a module's Lightning API (``manual_backward``,
``optimizers``, ``clip_gradients``, the strategy's ``no_sync``), so the step works unchanged under
the precision plugins, DDP and FSDP, and ``trainer.global_step`` counts its optimizer steps.
:class:`TorchStepping` is a plain torch optimizer on one process (tests, loops without a Trainer).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from grpo_lightning.lightning_compat import count_optimizer_step, mark_optimizer_stepped


class OptimizerStepping(Protocol):
    """The optimizer side of an update."""

    def optimizer(self) -> Any:
        """The optimizer (``step``, ``zero_grad``, ``param_groups``)."""
        ...

    def scheduler(self) -> Any | None:
        """The LR scheduler stepped after each optimizer step, or None."""
        ...

    def backward(self, loss: Tensor) -> None:
        """Accumulate the gradient of the scalar ``loss``."""
        ...

    def clip_gradients(self, optimizer: Any, max_norm: float) -> None:
        """Scale the optimizer's gradients down to a total L2 norm of at most ``max_norm``."""
        ...

    def no_grad_sync(self) -> AbstractContextManager[None]:
        """A block whose backward passes accumulate locally, without the all-reduce across ranks."""
        ...

    def skip_step(self) -> None:
        """Count one optimizer step that leaves the weights and the optimizer's state alone (a step
        without learning signal), and step the LR scheduler as after any optimizer step."""
        ...


def _step_scheduler_after_skip(sched: Any | None) -> None:
    """Step ``sched`` after a skipped optimizer step, without PyTorch's "lr_scheduler.step() before
    optimizer.step()" warning.

    PyTorch's ``LRScheduler`` wraps ``optimizer.step`` to set a flag on the optimizer, and its first
    ``step()`` warns when the flag is unset. A skipped step is an optimizer step that left the weights
    alone, so it sets the flag as the wrapper would; user code that really steps the scheduler first
    still gets the warning.
    """
    if sched is None:
        return
    optimizer = getattr(sched, "optimizer", None)
    if optimizer is not None:
        mark_optimizer_stepped(optimizer)
    sched.step()


class LightningStepping:
    """:class:`OptimizerStepping` through a Lightning module (manual optimization) and its policy."""

    def __init__(self, module: LightningModule, policy: nn.Module) -> None:
        self._module = module
        self._policy = policy

    def optimizer(self) -> Any:
        return self._module.optimizers()

    def scheduler(self) -> Any | None:
        return self._module.lr_schedulers()

    def backward(self, loss: Tensor) -> None:
        self._module.manual_backward(loss)

    def clip_gradients(self, optimizer: Any, max_norm: float) -> None:
        self._module.clip_gradients(optimizer, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")

    def skip_step(self) -> None:
        # Lightning counts an optimizer step in the hooks around LightningOptimizer.step; calling them
        # alone keeps global_step right without running the optimizer (whose moments and weight decay
        # would move the weights even with zero gradients) or the precision plugin (a gradient scaler
        # refuses a step without a backward pass).
        count_optimizer_step(self._module.optimizers())
        _step_scheduler_after_skip(self._module.lr_schedulers())

    @contextmanager
    def no_grad_sync(self) -> Iterator[None]:
        if hasattr(self._policy, "set_requires_gradient_sync"):  # FSDP2 module
            self._policy.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self._policy.set_requires_gradient_sync(True)
        elif hasattr(self._module.trainer.strategy, "block_backward_sync"):  # DDP: model.no_sync()
            with self._module.trainer.strategy.block_backward_sync():
                yield
        else:
            yield


@dataclass(eq=False)
class TorchStepping:
    """:class:`OptimizerStepping` of a plain torch optimizer (and scheduler) on one process."""

    optim: torch.optim.Optimizer
    lr_scheduler: Any | None = None

    def optimizer(self) -> torch.optim.Optimizer:
        return self.optim

    def scheduler(self) -> Any | None:
        return self.lr_scheduler

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def clip_gradients(self, optimizer: Any, max_norm: float) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    def no_grad_sync(self) -> AbstractContextManager[None]:
        return nullcontext()  # one process: nothing to sync

    def skip_step(self) -> None:
        _step_scheduler_after_skip(self.lr_scheduler)  # a plain optimizer keeps no step count
