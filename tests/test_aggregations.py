"""The registered loss aggregations (``loss_type``): each one's declared properties against what its
reduction does, each reduction against a naive loop, and the registry as the list of valid names."""

from __future__ import annotations

import typing

import pytest
import torch
from torch.testing import assert_close

from grpo_lightning.algorithm.aggregations import AGGREGATIONS, Aggregation, CountUnit, LossType, Normalizer
from grpo_lightning.algorithm.losses import LossConfig, grpo_loss
from grpo_lightning.algorithm.registry import Registry
from grpo_lightning.algorithm.update import gradient_scales, normalizer_counts
from grpo_lightning.module import GRPOModule

F64 = torch.float64
MAX_LEN = 7  # max_completion_length, for the aggregations that need it


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Six completions of up to 5 tokens (one empty); rows 1, 3 and 4 have advantage 0 but tokens."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 3, 0, 4, 2, 1])
    mask = (torch.arange(5).expand(6, 5) < lengths.unsqueeze(1)).to(F64)
    return {
        "logp": -3 * torch.rand(6, 5, generator=g, dtype=F64),
        "old": -3 * torch.rand(6, 5, generator=g, dtype=F64),
        "per_token": torch.randn(6, 5, generator=g, dtype=F64),
        "mask": mask,
        "advantages": torch.tensor([0.8, 0.0, -1.3, 0.0, 0.0, 0.4], dtype=F64),
    }


def _naive_count(unit: CountUnit, mask: torch.Tensor) -> float:
    rows = mask.tolist()
    return float(sum(sum(row) for row in rows)) if unit is CountUnit.TOKENS else float(len(rows))


def _naive(name: str, per_token: torch.Tensor, mask: torch.Tensor, normalizer: float | None) -> float:
    """Each aggregation written as loops over Python floats, straight from its definition."""
    values, keep = per_token.tolist(), mask.tolist()
    sums = [sum(v for v, k in zip(row, ks, strict=True) if k) for row, ks in zip(values, keep, strict=True)]
    tokens = [sum(ks) for ks in keep]
    sequences = normalizer if normalizer is not None else len(values)
    if name == "grpo":  # mean over sequences of each one's token mean; an empty one counts as 0
        return sum(s / n if n else 0.0 for s, n in zip(sums, tokens, strict=True)) / max(sequences, 1)
    if name == "bnpo":  # this call's token mean, whatever the normaliser
        return sum(sums) / max(sum(tokens), 1)
    if name == "dr_grpo":  # token sum / (sequences * the length limit)
        return sum(sums) / (max(sequences, 1) * MAX_LEN)
    if name == "dapo":  # token sum / the mini-batch's active tokens
        return sum(sums) / max(normalizer if normalizer is not None else sum(tokens), 1)
    raise AssertionError(f"no naive reference for {name!r}: add one with the aggregation")


def test_every_registered_aggregation_has_a_naive_reference() -> None:
    batch = _batch()
    for name in AGGREGATIONS.names:
        _naive(name, batch["per_token"], batch["mask"], None)  # raises for a name without one


def test_the_cli_choices_are_the_registered_names() -> None:
    # LightningCLI shows loss_type's choices from the Literal of GRPOModule's signature; the registry
    # decides what is valid. They must not drift apart.
    assert typing.get_args(LossType) == AGGREGATIONS.names
    assert typing.get_args(typing.get_type_hints(GRPOModule.__init__)["loss_type"]) == AGGREGATIONS.names


def test_an_unknown_name_fails_at_construction_listing_the_registered_ones() -> None:
    listed = ", ".join(repr(n) for n in AGGREGATIONS.names)
    with pytest.raises(ValueError, match=f"loss_type='ppo' is not supported. Valid values: {listed}."):
        LossConfig(loss_type="ppo")


@pytest.mark.parametrize("name", AGGREGATIONS.names)
@pytest.mark.parametrize("normalizer", [None, 9.0])
def test_aggregate_matches_the_naive_loop(name: str, normalizer: float | None) -> None:
    batch = _batch(seed=3)
    aggregation = AGGREGATIONS.get(name)
    value = aggregation.aggregate(batch["per_token"], batch["mask"], normalizer, MAX_LEN)
    assert value.shape == ()
    assert_close(
        value.item(), _naive(name, batch["per_token"], batch["mask"], normalizer), rtol=1e-12, atol=0
    )


@pytest.mark.parametrize("name", AGGREGATIONS.names)
def test_count_counts_the_declared_unit(name: str) -> None:
    aggregation, mask = AGGREGATIONS.get(name), _batch()["mask"]
    count = aggregation.count(mask)
    assert count.dtype == torch.float32 and count.item() == _naive_count(aggregation.unit, mask)


@pytest.mark.parametrize("name", AGGREGATIONS.names)
def test_local_means_the_normaliser_is_the_calls_own(name: str) -> None:
    # A local aggregation ignores the mini-batch's count; any other one divides by it, so that
    # micro-batch losses with the mini-batch's normaliser add up to the loss of one call over all rows.
    aggregation, batch = AGGREGATIONS.get(name), _batch(seed=5)
    per_token, mask = batch["per_token"], batch["mask"]
    whole = aggregation.aggregate(per_token, mask, None, MAX_LEN)
    ignores = aggregation.aggregate(per_token, mask, 1000.0, MAX_LEN) == whole
    assert bool(ignores) == aggregation.local
    normalizer = aggregation.count(mask)
    parts = [
        aggregation.aggregate(per_token[r], mask[r], normalizer, MAX_LEN) for r in torch.arange(6).split(2)
    ]
    assert torch.allclose(sum(parts), whole, rtol=1e-12, atol=0) == (not aggregation.local)
    # gradient_scales follows the declaration: a mean over micro-batches for a local one, a sum otherwise.
    scales = gradient_scales(name, micro_batches_per_step=3, world_size=2)
    assert (scales.backward, scales.logged) == ((1 / 3, 1 / 6) if aggregation.local else (2.0, 1.0))


@pytest.mark.parametrize("name", AGGREGATIONS.names)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_skipping_idle_rows_is_exact_when_declared(name: str, level: str) -> None:
    # The update's two ways for rows of advantage 0 (beta 0, every token kept): in the backward pass
    # with the other rows, or left out of it. The other rows' gradient is bit-identical exactly
    # when the aggregation says so; the normaliser is the mini-batch's count either way.
    aggregation, batch = AGGREGATIONS.get(name), _batch(seed=7)
    config = LossConfig(name, importance_sampling_level=level, max_completion_length=MAX_LEN)
    normalizer = aggregation.count(batch["mask"])
    learn = batch["advantages"].ne(0).nonzero().squeeze(1)

    def learning_rows_grad(rows: torch.Tensor) -> torch.Tensor:
        logp = batch["logp"].clone().requires_grad_()
        loss, _ = grpo_loss(
            logp[rows], batch["old"][rows], None, batch["advantages"][rows], batch["mask"][rows], config,
            normalizer=normalizer,
        )  # fmt: skip
        (grad,) = torch.autograd.grad(loss, logp)
        return grad[learn]

    with_idle, without_idle = learning_rows_grad(torch.arange(6)), learning_rows_grad(learn)
    assert with_idle.abs().sum() > 0
    assert torch.equal(with_idle, without_idle) == aggregation.skips_idle_rows_exactly


@pytest.mark.parametrize("name", AGGREGATIONS.names)
def test_needs_max_completion_length_when_declared(name: str) -> None:
    aggregation, batch = AGGREGATIONS.get(name), _batch()
    if aggregation.needs_max_completion_length:
        with pytest.raises(ValueError, match=f"loss_type='{name}' divides by max_completion_length"):
            LossConfig(name)
        return
    LossConfig(name)  # no length limit needed, and none used:
    values = [aggregation.aggregate(batch["per_token"], batch["mask"], None, n) for n in (None, 3, 50)]
    assert values[0] == values[1] == values[2]


def test_adding_an_aggregation_is_one_registered_class(monkeypatch: pytest.MonkeyPatch) -> None:
    # A copy of the registry's entries, so the new name does not outlive this test.
    monkeypatch.setattr(AGGREGATIONS, "_entries", dict(AGGREGATIONS._entries))

    @AGGREGATIONS.register
    class SequenceSum(Aggregation):
        """``seq_sum``: the token sum / the mini-batch's sequences."""

        name = "seq_sum"
        unit = CountUnit.SEQUENCES
        local = False
        skips_idle_rows_exactly = True

        def aggregate(
            self,
            per_token: torch.Tensor,
            mask: torch.Tensor,
            normalizer: Normalizer,
            max_completion_length: int | None,
        ) -> torch.Tensor:
            return (per_token * mask).sum() / self._normalizer(per_token, mask, normalizer)

    assert AGGREGATIONS.names[-1] == "seq_sum"
    # Every consumer picks it up: the config, the loss, the normaliser counts and the gradient scales.
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=F64)
    loss, _ = grpo_loss(torch.zeros(2, 3, dtype=F64), None, None, torch.tensor([1.0, -0.5], dtype=F64), mask,
                        LossConfig("seq_sum"))  # fmt: skip
    assert loss.item() == (-1 - 1 + 0.5) / 2  # on-policy: each token's term is -A
    assert normalizer_counts(mask, [[torch.tensor([0, 1])]], "seq_sum").tolist() == [2.0]
    assert gradient_scales("seq_sum", 2, 4).backward == 4.0
    with pytest.raises(ValueError, match="registered twice"):
        AGGREGATIONS.register(SequenceSum)


def test_a_registry_lists_its_names_in_registration_order() -> None:
    registry: Registry[Aggregation] = Registry("colour")
    with pytest.raises(ValueError, match=r"colour='red' is not supported. Valid values: \."):
        registry.get("red")
    dapo, grpo = type(AGGREGATIONS.get("dapo")), type(AGGREGATIONS.get("grpo"))
    registry.register(dapo)
    registry.register(grpo)
    assert registry.names == ("dapo", "grpo") and isinstance(registry.get("grpo"), grpo)
