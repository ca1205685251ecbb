"""Group-relative advantages: hand-derived numbers, NaN handling, and a loop reference."""

from __future__ import annotations

import math
import typing

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_impl import ref_advantages
from torch.testing import assert_close

from grpo_lightning.algorithm.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageRangeError,
    ScaleRewards,
    compute_advantages,
    group_stats,
    zero_spread,
)
from grpo_lightning.algorithm.losses import LossConfig
from grpo_lightning.module import GRPOModule

NAN = float("nan")


def t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_group_scaling_hand_computed() -> None:
    # One group of 4: mean 0.25; sample std sqrt((0.75^2 + 3 * 0.25^2) / 3) = sqrt(0.75 / 3) = 0.5.
    # A = (r - 0.25) / (0.5 + 1e-4): 0.75 / 0.5001 = 1.4997001, -0.25 / 0.5001 = -0.4999000.
    adv = compute_advantages(t([1.0, 0.0, 0.0, 0.0]), group_size=4, scale_rewards="group")
    assert_close(adv, t([1.4997001, -0.4999000, -0.4999000, -0.4999000]), atol=1e-6, rtol=0)


def test_batch_scaling_uses_the_std_of_the_whole_batch() -> None:
    # Groups [1, 0] and [1, 1]: group means 0.5 and 1. Whole batch [1, 0, 1, 1]: mean 0.75,
    # sample std sqrt((3 * 0.25^2 + 0.75^2) / 3) = sqrt(0.25) = 0.5.
    # A = (r - mean_g) / (0.5 + 1e-4): +-0.5 / 0.5001 = +-0.9998000 for group 0; 0 for group 1.
    adv = compute_advantages(t([1.0, 0.0, 1.0, 1.0]), group_size=2, scale_rewards="batch")
    assert_close(adv, t([0.9998000, -0.9998000, 0.0, 0.0]), atol=1e-6, rtol=0)


def test_no_scaling_is_centred_reward() -> None:
    # Dr. GRPO: A = r - mean_g. Group means 2 and 0.5.
    adv = compute_advantages(t([3.0, 1.0, 0.0, 1.0]), group_size=2, scale_rewards="none")
    assert_close(adv, t([1.0, -1.0, -0.5, 0.5]))


def test_nan_rewards_are_ignored_and_get_zero_advantage() -> None:
    # Valid rewards [1, 0, 1]: mean 2/3; sample std sqrt(((1/3)^2 * 2 + (2/3)^2) / 2) = sqrt(1/3) = 0.5773503.
    # A(1) = (1/3) / 0.5774503 = 0.5772502; A(0) = (-2/3) / 0.5774503 = -1.1545004; the NaN row gets 0.
    adv = compute_advantages(t([1.0, NAN, 0.0, 1.0]), group_size=4, scale_rewards="group")
    assert_close(adv, t([0.5772502, 0.0, -1.1545004, 0.5772502]), atol=1e-6, rtol=0)


def test_batch_std_ignores_nan() -> None:
    # Batch std over the valid [1, 0, 1] only: sqrt(1/3) = 0.5773503 (not NaN). Group 0 = [1, 0]: mean 0.5.
    # A = +-0.5 / 0.5774503 = +-0.8658758; group 1 has one valid reward -> 0.
    adv = compute_advantages(t([1.0, 0.0, NAN, 1.0]), group_size=2, scale_rewards="batch")
    assert_close(adv, t([0.8658758, -0.8658758, 0.0, 0.0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("scale_rewards", ADVANTAGE_ESTIMATORS.names)
def test_groups_with_fewer_than_two_valid_rewards_get_zero(scale_rewards: str) -> None:
    rewards = t([NAN, 2.0, NAN, NAN, 1.0, 3.0])  # group 0: one valid; group 1: none; group 2: two valid
    adv = compute_advantages(rewards, group_size=2, scale_rewards=scale_rewards)
    assert not torch.isnan(adv).any()
    assert_close(adv[:4], torch.zeros(4, dtype=torch.float64))
    assert adv[4] < 0 < adv[5]
    stats = group_stats(rewards, group_size=2)
    assert_close(stats.std, t([0.0, 0.0, math.sqrt(2.0)]))  # sample std of [1, 3] = sqrt(2)
    assert_close(stats.mean, t([2.0, 0.0, 2.0]))
    assert stats.count.tolist() == [1, 0, 2]
    assert stats.zero_std.tolist() == [True, True, False]


def test_group_size_one_gives_zero_advantages() -> None:
    adv = compute_advantages(t([0.3, 0.9]), group_size=1)
    assert_close(adv, torch.zeros(2, dtype=torch.float64))


def test_group_stats_match_torch_std_and_flag_equal_rewards() -> None:
    rewards = torch.tensor([0.1 + 0.2, 0.3, 0.3, 1.0, 0.0, 0.5])  # group 0 equal up to rounding
    stats = group_stats(rewards, group_size=3)
    assert_close(stats.std[1], rewards[3:].double().std())  # the statistics are float64
    assert_close(stats.mean, rewards.view(2, 3).double().mean(1))
    assert stats.zero_std.tolist() == [True, False]


def test_integer_rewards_are_accepted() -> None:
    adv = compute_advantages(torch.tensor([1, 0]), group_size=2, scale_rewards="none")
    assert_close(adv, torch.tensor([0.5, -0.5]))


def test_bad_input_fails_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match=r"scale_rewards='mean'.*'group', 'batch', 'none'"):
        compute_advantages(t([1.0, 0.0]), 2, scale_rewards="mean")
    with pytest.raises(ValueError, match="multiple of num_generations"):
        compute_advantages(t([1.0, 0.0, 1.0]), 2)
    with pytest.raises(ValueError, match=r"1-D \[N\]"):
        compute_advantages(torch.zeros(2, 2), 2)
    with pytest.raises(ValueError, match="finite"):
        compute_advantages(t([1.0, math.inf]), 2)


rewards_strategy = st.lists(
    st.one_of(st.just(NAN), st.sampled_from([0.0, 0.5, 1.0]), st.floats(-5, 5, allow_nan=False)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    rewards=rewards_strategy,
    group_size=st.integers(1, 4),
    scale_rewards=st.sampled_from(ADVANTAGE_ESTIMATORS.names),
)
def test_matches_loop_reference_and_never_nan(
    rewards: list[float], group_size: int, scale_rewards: str
) -> None:
    rewards = rewards[: len(rewards) // group_size * group_size] or [NAN] * group_size
    adv = compute_advantages(t(rewards), group_size, scale_rewards=scale_rewards)
    assert not torch.isnan(adv).any()
    expected = ref_advantages(rewards, group_size, scale_rewards)
    assert_close(adv, t(expected), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("value", [1.2, 0.1, 1 / 3, 0.7, 123.456])
@pytest.mark.parametrize("scale_rewards", ADVANTAGE_ESTIMATORS.names)
def test_all_equal_float32_rewards_give_exactly_zero_and_count_as_zero_spread(value, scale_rewards) -> None:
    # Eight float32 copies of 1.2: their float32 mean is not exactly 1.2, so r - mean was ~1e-8 and the
    # std a leftover of ~5e-8 (advantages of +1.2e-3 after dividing by std + eps).
    rewards = torch.full((8,), value, dtype=torch.float32)
    mixed = torch.cat([rewards, torch.tensor([0.0, 1.0] * 4)])
    adv = compute_advantages(mixed, group_size=8, scale_rewards=scale_rewards)
    assert torch.equal(adv[:8], torch.zeros(8))
    assert (adv[8:] != 0).all()
    stats = group_stats(mixed, group_size=8)
    assert stats.zero_std.tolist() == [True, False]
    assert stats.std[0].item() == 0.0 and stats.mean[0].item() == rewards[0].item()


def test_zero_spread_ignores_nan_and_needs_two_valid_rewards() -> None:
    groups = [[0.3, NAN, 0.3], [NAN, NAN, 2.0], [NAN, 0.3, 0.3001], [NAN, NAN, NAN]]
    rewards = torch.tensor(groups).flatten()
    assert zero_spread(rewards, 3).tolist() == [True, True, False, True]
    adv = compute_advantages(rewards, 3)
    assert torch.equal(adv[:6], torch.zeros(6)) and torch.equal(adv[9:], torch.zeros(3))
    assert adv[7] < 0 < adv[8]


# ---- the registered estimators (scale_rewards) -----------------------------------------------------


def test_the_cli_choices_are_the_registered_estimators() -> None:
    # LightningCLI shows scale_rewards' choices from the Literal of GRPOModule's signature; the
    # registry decides what is valid. They must not drift apart.
    assert typing.get_args(ScaleRewards) == ADVANTAGE_ESTIMATORS.names
    hints = typing.get_type_hints(GRPOModule.__init__)
    # ScaleRewards | bool: TRL's booleans are accepted beside the names.
    assert typing.get_args(hints["scale_rewards"]) == (ScaleRewards, bool)


@pytest.mark.parametrize("name", ADVANTAGE_ESTIMATORS.names)
def test_each_estimator_matches_the_loop_reference(name: str) -> None:
    rewards = [1.0, 0.0, 0.5, NAN, 2.0, -1.0, 0.25, 3.0, 1.0, 1.0, 1.0, 1.0]
    adv = ADVANTAGE_ESTIMATORS.get(name)(t(rewards), 4)
    assert_close(adv, t(ref_advantages(rewards, 4, name)), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", ADVANTAGE_ESTIMATORS.names)
def test_scale_free_is_what_the_estimator_declares(name: str) -> None:
    # Every group has a spread; eps = 0 so that scaling the rewards by a power of two changes no bit
    # of a scale-free estimator's advantages, and doubles each of another's.
    estimator = ADVANTAGE_ESTIMATORS.get(name)
    rewards = t([1.0, 0.0, 0.5, 2.0, -1.0, 0.25, 3.0, 1.5])
    base, scaled = estimator(rewards, 4, eps=0.0), estimator(rewards * 1024, 4, eps=0.0)
    assert torch.equal(scaled, base) == estimator.scale_free
    # Float32 rewards near its limit: a scale-free estimator's advantages stay small; another's
    # reward differences overflow float32 and are refused (global_advantages also checks their
    # squares, which the gradients need to fit).
    huge = torch.tensor([3e38, -3e38, -3e38, -3e38])
    if estimator.scale_free:
        assert float(estimator(huge, 4).abs().max()) < 4
    else:
        with pytest.raises(
            AdvantageRangeError, match=f"scale_rewards='{name}'.*scale_rewards='group' or 'batch'"
        ):
            estimator(huge, 4)


def test_an_unknown_estimator_fails_at_construction_listing_the_registered_ones() -> None:
    listed = ", ".join(repr(n) for n in ADVANTAGE_ESTIMATORS.names)
    with pytest.raises(ValueError, match=f"scale_rewards='global' is not supported. Valid values: {listed}."):
        LossConfig(scale_rewards="global")
