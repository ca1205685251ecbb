"""The ``loss_type`` setting: how one call's per-token loss ``[N, T]`` becomes a scalar.

Each aggregation is one registered class that declares the properties the update relies on, so no
caller tests the loss type by name:

- ``unit``: what the normaliser counts (:class:`CountUnit`); the update sums :meth:`Aggregation.count`
  over every micro-batch of an optimizer step and every rank and passes it as ``normalizer``.
- ``local``: the normaliser is the call's own count whatever ``normalizer`` says (``bnpo``), so the
  mini-batch loss is the *mean* of its micro-batches' losses, not their sum
  (:func:`~grpo_lightning.algorithm.update.gradient_scales`).
- ``skips_idle_rows_exactly``: with no KL term, dropping rows of advantage 0 from a call leaves the
  gradient of every other row unchanged, bit for bit, so they may skip the backward pass.
- ``needs_max_completion_length``: the normaliser includes the generation length limit (a constant).

Add one: a subclass of :class:`Aggregation` here decorated with ``@AGGREGATIONS.register``, its
name added to :data:`LossType`, and a test of its declared properties (``tests/test_aggregations.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from typing import ClassVar, Literal

import torch
from torch import Tensor

from grpo_lightning.algorithm.registry import Registry

#: The valid ``loss_type`` values, spelled out for type checkers and LightningCLI (which shows them
#: as the setting's choices). It must list :data:`AGGREGATIONS`' names in the same order; a test
#: fails when the two differ.
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]

#: A mini-batch's total count of an aggregation's unit (a scalar), or None for the call's own count.
Normalizer = Tensor | float | None


class CountUnit(Enum):
    """What a loss normaliser counts in a mask ``[N, T]``."""

    TOKENS = "active tokens"
    SEQUENCES = "sequences, empty ones included"

    def count(self, mask: Tensor) -> Tensor:
        """The number of units in ``mask: [N, T]``: a float32 scalar tensor on ``mask``'s device."""
        if self is CountUnit.TOKENS:
            return mask.sum().to(torch.float32)
        return torch.tensor(float(mask.shape[0]), device=mask.device)


class Aggregation(ABC):
    """One ``loss_type``: its declared properties (see the module docstring) and its reduction."""

    name: ClassVar[str]
    unit: ClassVar[CountUnit]
    local: ClassVar[bool]
    skips_idle_rows_exactly: ClassVar[bool]
    needs_max_completion_length: ClassVar[bool] = False

    def count(self, mask: Tensor) -> Tensor:
        """This call's count of :attr:`unit` in ``mask: [N, T]`` (sum it over micro-batches and ranks)."""
        return self.unit.count(mask)

    @abstractmethod
    def aggregate(
        self, per_token: Tensor, mask: Tensor, normalizer: Normalizer, max_completion_length: int | None
    ) -> Tensor:
        """The scalar loss of ``per_token: [N, T]`` over the positions where ``mask: [N, T]`` is 1.

        ``normalizer``: the mini-batch's total :meth:`count`; None = this call's own count, so one
        call over the whole mini-batch gives the textbook value. Pure: no state, no side effect.
        """

    def _normalizer(self, per_token: Tensor, mask: Tensor, normalizer: Normalizer) -> Tensor:
        """``normalizer`` (or this call's count) as a scalar of ``per_token``'s dtype, at least 1."""
        count = self.count(mask) if normalizer is None else normalizer
        return torch.as_tensor(count, dtype=per_token.dtype, device=per_token.device).clamp(min=1.0)


AGGREGATIONS: Registry[Aggregation] = Registry("loss_type")


@AGGREGATIONS.register
class SequenceMean(Aggregation):
    """``grpo``: the mean over sequences of each sequence's token mean (long completions weigh less per token)."""

    name = "grpo"
    unit = CountUnit.SEQUENCES
    local = False
    skips_idle_rows_exactly = True

    def aggregate(
        self, per_token: Tensor, mask: Tensor, normalizer: Normalizer, max_completion_length: int | None
    ) -> Tensor:
        # Empty completions contribute 0 (their token sum is 0; the clamp avoids 0/0).
        per_sequence = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_sequence.sum() / self._normalizer(per_token, mask, normalizer)


@AGGREGATIONS.register
class LocalTokenMean(Aggregation):
    """``bnpo``: the token mean over this call, local by definition (``normalizer`` is ignored)."""

    name = "bnpo"
    unit = CountUnit.TOKENS
    local = True
    # Rows of advantage 0 add 0 to the token sum but their tokens to the call's divisor.
    skips_idle_rows_exactly = False

    def aggregate(
        self, per_token: Tensor, mask: Tensor, normalizer: Normalizer, max_completion_length: int | None
    ) -> Tensor:
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


@AGGREGATIONS.register
class ConstantLengthSum(Aggregation):
    """``dr_grpo`` (Dr. GRPO): the token sum / (sequences * ``max_completion_length``): no length bias."""

    name = "dr_grpo"
    unit = CountUnit.SEQUENCES
    local = False
    skips_idle_rows_exactly = True
    needs_max_completion_length = True

    def aggregate(
        self, per_token: Tensor, mask: Tensor, normalizer: Normalizer, max_completion_length: int | None
    ) -> Tensor:
        assert max_completion_length is not None  # LossConfig refuses dr_grpo without it
        return (per_token * mask).sum() / (
            self._normalizer(per_token, mask, normalizer) * max_completion_length
        )


@AGGREGATIONS.register
class TokenMean(Aggregation):
    """``dapo`` (the default): the token sum / the active tokens of the whole mini-batch."""

    name = "dapo"
    unit = CountUnit.TOKENS
    local = False
    skips_idle_rows_exactly = True

    def aggregate(
        self, per_token: Tensor, mask: Tensor, normalizer: Normalizer, max_completion_length: int | None
    ) -> Tensor:
        return (per_token * mask).sum() / self._normalizer(per_token, mask, normalizer)
