"""The collectives a training or evaluation step makes across ranks, behind one small interface.

The step, the advantages and the evaluator only ever need the rank, the number of ranks, a sum over
ranks, a gather of tensors and a gather of small Python objects. :class:`LightningCollectives` makes
them through a Lightning module's strategy (DDP, FSDP, one device); :class:`SingleProcess` is the
one-rank case, for use without a Trainer (``evaluate_model``, tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from torch import Tensor


class Collectives(Protocol):
    """What a step needs of the other ranks. Every rank must make the same calls in the same order."""

    @property
    def world_size(self) -> int:
        """W, the number of ranks."""
        ...

    @property
    def rank(self) -> int:
        """This process's rank, in ``[0, W)``."""
        ...

    @property
    def device(self) -> torch.device:
        """Where tensors handed to the collectives must be (the policy's device)."""
        ...

    def reduce_sum(self, tensor: Tensor) -> Tensor:
        """The element-wise sum of ``tensor`` (same shape on every rank) over all ranks."""
        ...

    def all_gather(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each ``[N, ...]`` tensor of every rank, concatenated: ``[W * N, ...]``, rank 0's rows first."""
        ...

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``obj`` (picklable) of every rank, in rank order."""
        ...


@dataclass(frozen=True)
class SingleProcess:
    """The collectives of one process: a sum or gather over one rank returns its input."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    world_size: int = 1
    rank: int = 0

    def reduce_sum(self, tensor: Tensor) -> Tensor:
        return tensor

    def all_gather(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.device) for k, v in tensors.items()}

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]


class LightningCollectives:
    """The collectives of a Lightning module's strategy, looked up at each call: the module is
    built (and this object with it) before a Trainer is attached."""

    def __init__(self, module: LightningModule) -> None:
        self._module = module

    @property
    def world_size(self) -> int:
        return self._module.trainer.world_size

    @property
    def rank(self) -> int:
        return self._module.global_rank

    @property
    def device(self) -> torch.device:
        return self._module.device

    def reduce_sum(self, tensor: Tensor) -> Tensor:
        return self._module.trainer.strategy.reduce(tensor, reduce_op="sum")

    def all_gather(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        # Lightning gathers to [W, N, ...] on several ranks and returns the tensor itself on one.
        gathered = self._module.all_gather(dict(tensors))
        if self.world_size == 1:
            return gathered
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in gathered.items()}

    def all_gather_object(self, obj: Any) -> list[Any]:
        # Lightning's strategies gather tensors only; the process group is torch.distributed's.
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return [obj]
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
