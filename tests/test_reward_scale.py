"""Rewards of any finite scale: exact advantages, finite metrics, and clear errors where float32 ends."""

from __future__ import annotations

import math
import re
import warnings
from types import SimpleNamespace

import pytest
import torch
from helpers import (
    PromptsDataModule,
    char_code_mean,
    make_module,
    make_trainer,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_tokenizer,
    weights,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st
from reference_impl import ref_advantages
from torch.testing import assert_close

from grpo_lightning.algorithm.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageRangeError,
    compute_advantages,
    group_stats,
    zero_spread,
)
from grpo_lightning.rewards.scorer import RewardError, RewardScorer
from grpo_lightning.training.collectives import SingleProcess
from grpo_lightning.training.rollout_stats import global_advantages, rollout_metrics

NAN = float("nan")
F32 = torch.float32
#: 3e38 as float32 (3.0000000054977558e38): its sums and squares overflow float32.
R = float(torch.tensor(3e38, dtype=F32))


def f32(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=F32)


# ---- advantages, hand-computed ------------------------------------------------------------------


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_reward_of_1e30_gives_the_advantages_of_a_reward_of_1(sign: float) -> None:
    # One group [s, 0, 0, 0] * 1e30: mean s * 2.5e29, std 0.5e30 (as for [1, 0, 0, 0]), so
    # A = +-0.75 / 0.5 = +-1.5 and -+0.25 / 0.5 = -+0.5 (eps = 1e-4 is 2e-34 of the std).
    adv = compute_advantages(f32([sign * 1e30, 0.0, 0.0, 0.0]), 4)
    assert_close(adv, sign * f32([1.5, -0.5, -0.5, -0.5]), rtol=1e-6, atol=0)


def test_float32_rewards_whose_sums_and_squares_overflow() -> None:
    # [R, -R, 0, 0]: mean 0, std sqrt(2 R^2 / 3) = R sqrt(2/3): A = +-sqrt(3/2) = +-1.2247449.
    # [R, R, 0, 0]: the float32 sum 2R overflows; mean R/2, std sqrt(4 (R/2)^2 / 3) = R/sqrt(3): A = +-0.8660254.
    adv = compute_advantages(f32([R, -R, 0.0, 0.0, R, R, 0.0, 0.0]), 4)
    a, b = math.sqrt(1.5), math.sqrt(3) / 2
    assert_close(adv, f32([a, -a, 0.0, 0.0, b, b, -b, -b]), rtol=1e-6, atol=0)


def test_huge_rewards_next_to_nan() -> None:
    # Valid [1e30, 0, 0]: mean 1e30/3, std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) 1e30 = 1e30/sqrt(3):
    # A = (2/3) sqrt(3) = 1.1547005 and -(1/3) sqrt(3) = -0.5773503; the NaN row gets 0.
    adv = compute_advantages(f32([1e30, NAN, 0.0, 0.0]), 4)
    third = 1 / math.sqrt(3)
    assert_close(adv, f32([2 * third, 0.0, -third, -third]), rtol=1e-6, atol=0)


def test_batch_scaling_of_huge_rewards() -> None:
    # [1, 0, 1, 1] * 1e30 with G = 2: batch std 0.5e30 (see test_advantages), group 0 centred +-0.5e30.
    adv = compute_advantages(f32([1e30, 0.0, 1e30, 1e30]), 2, scale_rewards="batch")
    assert_close(adv, f32([1.0, -1.0, 0.0, 0.0]), rtol=1e-6, atol=0)


def test_float64_rewards_beyond_the_square_root_of_the_float64_range() -> None:
    # 1e200 squared is beyond float64 (1.8e308): the statistics still come out as for [1, 0, 0, 0].
    adv = compute_advantages(torch.tensor([1e200, 0.0, 0.0, 0.0], dtype=torch.float64), 4)
    assert adv.dtype == torch.float64
    assert_close(adv, torch.tensor([1.5, -0.5, -0.5, -0.5], dtype=torch.float64), rtol=1e-12, atol=0)
    stats = group_stats(torch.tensor([1e200, 0.0], dtype=torch.float64), 2)
    assert_close(stats.std, torch.tensor([1e200 / math.sqrt(2)], dtype=torch.float64))


def test_tiny_rewards_follow_the_formula() -> None:
    # [1e-30, 0, 0, 0]: std 0.5e-30, so eps dominates: A = 0.75e-30 / (0.5e-30 + 1e-4) = 7.5e-27.
    adv = compute_advantages(f32([1e-30, 0.0, 0.0, 0.0]), 4)
    assert_close(adv, f32([7.5e-27, -2.5e-27, -2.5e-27, -2.5e-27]), rtol=1e-6, atol=0)
    # Dr. GRPO ("none"): the centred rewards themselves, 0.75e-30 and -0.25e-30.
    adv = compute_advantages(f32([1e-30, 0.0, 0.0, 0.0]), 4, scale_rewards="none")
    assert_close(adv, f32([7.5e-31, -2.5e-31, -2.5e-31, -2.5e-31]), rtol=1e-6, atol=0)


def test_no_scaling_refuses_advantages_beyond_the_dtype() -> None:
    # [R, -R, -R, -R]: mean -R/2, so the first advantage is 1.5 R = 4.5e38 > float32's 3.4e38.
    with pytest.raises(AdvantageRangeError, match=r"scale_rewards='none'.*reaches 4.5e\+38.*torch.float32"):
        compute_advantages(f32([R, -R, -R, -R]), 4, scale_rewards="none")
    # In float64 the same rewards are fine; group scaling is fine in float32 too.
    adv = compute_advantages(f32([R, -R, -R, -R]).double(), 4, scale_rewards="none")
    assert_close(adv, torch.tensor([1.5 * R, -0.5 * R, -0.5 * R, -0.5 * R], dtype=torch.float64))
    assert torch.isfinite(compute_advantages(f32([R, -R, -R, -R]), 4)).all()


# ---- advantages against a naive float64 reference, at every scale ---------------------------------

rewards_strategy = st.lists(
    st.one_of(st.just(NAN), st.sampled_from([0.0, 0.5, 1.0]), st.floats(-5, 5, allow_nan=False)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=120, deadline=None, derandomize=True)
@given(
    rewards=rewards_strategy,
    exponent=st.integers(-30, 30),
    group_size=st.integers(1, 4),
    scale_rewards=st.sampled_from(ADVANTAGE_ESTIMATORS.names),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
@example(rewards=[1.0, 0.0, 0.0, 0.0], exponent=30, group_size=4, scale_rewards="group", dtype=torch.float32)
@example(rewards=[0.5, NAN, 1.0, 5.0], exponent=25, group_size=2, scale_rewards="batch", dtype=torch.float32)
@example(rewards=[-3.0, 1.0, 2.0, 2.0], exponent=-30, group_size=2, scale_rewards="none", dtype=torch.float32)
def test_matches_a_naive_float64_reference_from_1e_minus_30_to_1e30(
    rewards: list[float], exponent: int, group_size: int, scale_rewards: str, dtype: torch.dtype
) -> None:
    rewards = rewards[: len(rewards) // group_size * group_size] or [NAN] * group_size
    scaled = torch.tensor([r * 10.0**exponent for r in rewards], dtype=dtype)
    adv = compute_advantages(scaled, group_size, scale_rewards=scale_rewards)
    assert adv.dtype == dtype and torch.isfinite(adv).all()
    # The reference sees the very rewards the function got (rounded to dtype), as Python floats.
    expected = torch.tensor(ref_advantages(scaled.tolist(), group_size, scale_rewards), dtype=torch.float64)
    # Equal rewards give exactly 0 (the reference may keep a rounding leftover of their mean there).
    flat = zero_spread(scaled, group_size).repeat_interleave(group_size)
    assert torch.equal(adv[flat], torch.zeros_like(adv[flat]))
    rtol = 1e-6 if dtype == torch.float32 else 1e-10
    atol = rtol * float(expected[~flat].abs().max()) if bool((~flat).any()) else 0.0
    assert_close(adv[~flat].double(), expected[~flat], rtol=rtol, atol=atol)


# ---- metrics ----------------------------------------------------------------------------------------


def test_metrics_of_rewards_near_the_float32_limit_are_finite() -> None:
    total = f32([R, -R, R, R])  # G = 2: one group with a spread, one flat
    gathered = {
        "total": total,
        "per_func": total.unsqueeze(1),
        "lengths": f32([1.0, 1.0, 1.0, 1.0]),
        "truncated": f32([0.0, 0.0, 0.0, 0.0]),
        "advantages": compute_advantages(total, 2),
    }
    values = rollout_metrics(gathered, ["big"], 2, {}, rollout_s=1.0, update_s=1.0)
    # Mean (R - R + R + R) / 4 = R/2. Group stds: |R - (-R)| / sqrt(2) = sqrt(2) R and 0; their mean R/sqrt(2).
    # The per-reward sample std: mean R/2, squared deviations (1/4 + 9/4 + 1/4 + 1/4) R^2 = 3 R^2, / 3: R.
    assert float(values["train/reward"]) == pytest.approx(R / 2, rel=1e-12)
    assert float(values["train/reward_std"]) == pytest.approx(R / math.sqrt(2), rel=1e-12)
    assert float(values["train/rewards/big/mean"]) == pytest.approx(R / 2, rel=1e-12)
    assert float(values["train/rewards/big/std"]) == pytest.approx(R, rel=1e-12)
    # Advantages: group 0 is [R, -R], A = +-R / (sqrt(2) R) = +-0.7071068; group 1 flat: 0.
    assert float(values["train/advantage_abs_mean"]) == pytest.approx(math.sqrt(0.5) / 2, rel=1e-6)


# ---- the scorer: float32 range of single rewards and of the weighted total ------------------------

PROMPTS = ["p", "p"]
COMPLETIONS = ["a", "bb"]


#: The float64 right above float32's largest: it would round down to it, but is beyond the range.
JUST_BEYOND = math.nextafter(float(torch.finfo(F32).max), math.inf)


@pytest.mark.parametrize("value", [1e39, -1e300, JUST_BEYOND])
@pytest.mark.parametrize("as_array", [False, True])
def test_a_reward_beyond_float32_is_an_error_naming_it(value: float, as_array: bool) -> None:
    def enormous(prompts, completions, **columns):
        values = [1.0, value]
        return torch.tensor(values, dtype=torch.float64) if as_array else values

    expected = f"'enormous' returned {value!r} for completion 1, beyond the float32"
    with pytest.raises(RewardError, match=re.escape(expected)):
        RewardScorer([enormous]).score(PROMPTS, COMPLETIONS)


def test_a_weighted_total_beyond_float32_is_an_error_naming_rewards_and_weights() -> None:
    def big(prompts, completions, **columns):
        return [3e38, 1.0]

    def one(prompts, completions, **columns):
        return [1.0, None]

    scorer = RewardScorer([big, one], reward_weights=[2.0, 1.0])
    per_func = scorer.score(PROMPTS, COMPLETIONS)
    with pytest.raises(RewardError, match=r"completion 0 is 6e\+38, beyond the float32") as info:
        scorer.combine(per_func)
    assert "reward 'big' (weight 2): [1, 3e+38]" in str(info.value)
    assert "reward 'one' (weight 1): [1, 1]" in str(info.value)
    # A weight beyond float32 with a reward of 0 is 0 (not 0 * inf = NaN); with a reward of 1, an error.
    zero_or_one = RewardScorer([one], reward_weights=[1e39])
    assert zero_or_one.combine(f32([[0.0], [NAN]])).tolist()[0] == 0.0
    with pytest.raises(RewardError, match=r"'one' \(weight 1e\+39\)"):
        zero_or_one.combine(f32([[1.0], [NAN]]))


def test_the_weighted_total_is_summed_in_float64() -> None:
    # R + R - R: float32 overflows at R + R (inf - R = inf); in float64 the total is R.
    scorer = RewardScorer([char_code_mean, char_code_mean, char_code_mean], reward_weights=[1.0, 1.0, -1.0])
    assert scorer.combine(f32([[R, R, R]])).tolist() == [R]


# ---- scale_rewards="none" names the reward; the step with huge rewards learns -----------------------


ONE = SingleProcess()  # global_advantages on one process


def _scored(scale: float, other_weight: float = 0.5):
    """The scorer and a scored rollout of global_advantages: rewards [1, -1, -1, -1] * scale from
    'big', plus ``other_weight`` times a reward of about 0.4 that varies a little."""

    def big(prompts, completions, **columns):
        return [scale, -scale, -scale, -scale]

    scorer = RewardScorer([big, char_code_mean], reward_weights=[1.0, other_weight])
    per_func = scorer.score(["p"] * 4, ["a", "bb", "ccc", "dddd"])
    rollout = SimpleNamespace(lengths=torch.tensor([1, 2, 3, 4]), truncated=torch.zeros(4, dtype=torch.bool))
    scored = SimpleNamespace(rollout=rollout, per_func=per_func, total=scorer.combine(per_func))
    return scorer, scored


@pytest.mark.parametrize(("scale", "limit"), [(1e20, "their squares overflow float32"), (R, "float32 range")])
def test_no_scaling_with_huge_rewards_is_an_error_naming_the_reward(scale: float, limit: str) -> None:
    # Rewards [1, -1, -1, -1] * scale: mean -scale/2, advantages up to 1.5 * scale: 1.5e20 is beyond
    # 1.8e19, where the squares of gradients that size overflow float32; 4.5e38 is beyond float32 itself.
    scorer, scored = _scored(scale)
    with pytest.raises(AdvantageRangeError, match="scale_rewards='none'") as info:
        global_advantages(scored, 4, "none", ONE, scorer)
    assert limit in str(info.value)
    assert f"reward 'big' (weight 1): [{-scale:.3g}, {scale:.3g}]" in str(info.value)
    assert "reward 'char_code_mean' (weight 0.5)" in str(info.value)
    advantages, _ = global_advantages(scored, 4, "group", ONE, scorer)  # the same rewards, scaled: fine
    assert torch.isfinite(advantages).all() and float(advantages.abs().max()) < 2


@pytest.mark.parametrize("scale_rewards", ADVANTAGE_ESTIMATORS.names)
def test_rewards_too_close_for_their_scale_say_the_step_learns_close_to_nothing(scale_rewards: str) -> None:
    # [1, -1, -1, -1] * 1e-30: mean -0.5e-30, squared deviations (2.25 + 3 * 0.25) 1e-60 = 3e-60, / 3:
    # std 1e-30. "group": A = 1.5e-30 / (1e-30 + 1e-4) = 1.5e-26; "none": A = 1.5e-30. The batch is the group.
    scorer, scored = _scored(1e-30, other_weight=0.0)
    peak = "1.5e-30" if scale_rewards == "none" else "1.5e-26"
    with pytest.warns(
        UserWarning, match=rf"largest advantage of a training step is {peak}: .* at most 1e-30"
    ) as rec:
        global_advantages(scored, 4, scale_rewards, ONE, scorer)
    assert ("eps=0.0001" in str(rec[0].message)) == (scale_rewards != "none")
    scorer, scored = _scored(1e-3, other_weight=0.0)  # 1.5e-3 / (1e-3 + 1e-4) = 1.36: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        global_advantages(scored, 4, scale_rewards, ONE, scorer)


def huge_char_code_mean(prompts, completions, **columns):
    return [1e30 * r for r in char_code_mean(prompts, completions)]


def test_a_reward_of_1e30_trains_like_any_other() -> None:
    tok = tiny_tokenizer()
    module = make_module(tok, reward_funcs=[huge_char_code_mean])
    start = weights(module)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no learning signal")
        make_trainer(max_steps=1).fit(module, datamodule=PromptsDataModule(tok))
    assert any(not torch.equal(v, start[k]) for k, v in weights(module).items())
