"""The clipped GRPO loss: hand-derived numbers, a loop reference, gradients, micro-batch invariance."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_impl import ref_advantages, ref_grpo_loss
from torch.testing import assert_close

from grpo_lightning.algorithm.advantages import ADVANTAGE_ESTIMATORS, compute_advantages
from grpo_lightning.algorithm.aggregations import AGGREGATIONS
from grpo_lightning.algorithm.losses import (
    IMPORTANCE_SAMPLING_LEVELS,
    MAX_LOG_RATIO,
    LossConfig,
    grpo_loss,
    importance_ratio,
    k3_kl,
)

F64 = torch.float64


def t(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def test_guide_worked_example() -> None:
    logp = t([[-2.1, -1.8, -0.5, -1.2]])
    old = t([[-2.3, -1.9, -0.6, -1.4]])
    loss, metrics = grpo_loss(logp, old, None, t([0.6]), torch.ones(1, 4), LossConfig(loss_type="dapo", epsilon=0.2))
    # ratios exp(logp - old) = e^0.2, e^0.1, e^0.1, e^0.2 = 1.2214, 1.10517, 1.10517, 1.2214.
    # A = 0.6 > 0, so min(rho * A, clip(rho, 0.8, 1.2) * A) = clip(rho) * A: e^0.2 is clipped to 1.2.
    # dapo over 4 active tokens: (1.2 + 1.10517 + 1.10517 + 1.2) * 0.6 / 4 = 0.69155; the loss is its negative.
    assert_close(loss, torch.tensor(-0.69155, dtype=F64), atol=1e-4, rtol=0)
    # Two of four tokens have ratio > 1.2 with A > 0: clipped high.
    assert_close(metrics["clip_ratio/high_mean"], torch.tensor(0.5, dtype=F64))
    assert_close(metrics["clip_ratio/low_mean"], torch.tensor(0.0, dtype=F64))
    # mean ratio (1.22140 + 1.10517 + 1.10517 + 1.22140) / 4 = 1.163287
    assert_close(metrics["ratio_mean"], torch.tensor(1.163287, dtype=F64), atol=1e-6, rtol=0)


# Two sequences, on-policy (ratio 1, so each token's term is -A): sequence 0 has 2 tokens with
# A = 1, sequence 1 has 1 token with A = -0.5 and one padding position holding a junk log-prob.
# Token terms: [-1, -1] and [0.5].
AGG_LOGP = t([[-1.0, -2.0], [-0.5, 7.0]])
AGG_MASK = t([[1, 1], [1, 0]])
AGG_ADV = t([1.0, -0.5])


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [
        ("grpo", -0.25),  # mean of sequence means: (-2/2 + 0.5/1) / 2 = -0.25
        ("bnpo", -0.5),  # token sum / local tokens: (-1 - 1 + 0.5) / 3 = -0.5
        ("dr_grpo", -0.1875),  # token sum / (2 sequences * max_completion_length 4) = -1.5 / 8
        ("dapo", -0.5),  # token sum / active tokens (3 here, the whole batch) = -1.5 / 3
    ],
)
def test_each_loss_type_hand_computed(loss_type: str, expected: float) -> None:
    loss, _ = grpo_loss(AGG_LOGP, None, None, AGG_ADV, AGG_MASK, LossConfig(loss_type, max_completion_length=4))
    assert_close(loss, torch.tensor(expected, dtype=F64))


def test_normalizer_semantics() -> None:
    # dapo with a global normaliser of 6 tokens: -1.5 / 6; grpo with 4 sequences: (-1 + 0.5) / 4;
    # dr_grpo with 4 sequences: -1.5 / (4 * 4); bnpo ignores it: -1.5 / 3.
    for loss_type, expected in [("dapo", -0.25), ("grpo", -0.125), ("dr_grpo", -0.09375), ("bnpo", -0.5)]:
        normalizer = 6.0 if loss_type == "dapo" else 4.0
        loss, _ = grpo_loss(
            AGG_LOGP,
            None,
            None,
            AGG_ADV,
            AGG_MASK,
            LossConfig(loss_type, max_completion_length=4),
            normalizer=normalizer,
        )
        assert_close(loss, torch.tensor(expected, dtype=F64))
    assert AGGREGATIONS.get("dapo").count(AGG_MASK).item() == 3
    assert AGGREGATIONS.get("grpo").count(AGG_MASK).item() == 2
    assert AGGREGATIONS.get("dr_grpo").count(AGG_MASK).item() == 2


def test_clipping_low_high_and_delta_values_and_gradients() -> None:
    # Four one-token sequences, epsilon 0.2, on top of old log-prob 0:
    #   0: A=-1, rho=e^-0.5=0.60653 < 0.8 -> min(-0.60653, -0.8) = -0.8: clipped low, term 0.8, no gradient
    #   1: A=+1, rho=e^0.5=1.64872 > 1.2 -> min(1.64872, 1.2) = 1.2: clipped high, term -1.2, no gradient
    #   2: A=-1, rho=e^0.5=1.64872 -> min(-1.64872, -1.2) = -1.64872: unclipped, term 1.64872,
    #      gradient d(rho)/d(logp) * 1 / 4 tokens = 1.64872 / 4 = 0.41218
    #   3: A=+1, rho=e^0.1=1.10517 inside the range: term -1.10517, gradient -1.10517 / 4 = -0.27629
    # dapo: (0.8 - 1.2 + 1.64872 - 1.10517) / 4 = 0.14355 / 4 = 0.035888
    logp = t([[-0.5], [0.5], [0.5], [0.1]]).requires_grad_()
    old = torch.zeros(4, 1, dtype=F64)
    adv = t([-1.0, 1.0, -1.0, 1.0])
    mask = torch.ones(4, 1)
    loss, metrics = grpo_loss(logp, old, None, adv, mask, LossConfig(epsilon=0.2))
    assert_close(loss, torch.tensor(0.035888, dtype=F64), atol=1e-6, rtol=0)
    (grad,) = torch.autograd.grad(loss, logp)
    assert_close(grad[:, 0], t([0.0, 0.0, 0.41218, -0.27629]), atol=1e-5, rtol=0)
    assert_close(metrics["clip_ratio/low_mean"], torch.tensor(0.25, dtype=F64))
    assert_close(metrics["clip_ratio/high_mean"], torch.tensor(0.25, dtype=F64))
    assert_close(metrics["clip_ratio/region_mean"], torch.tensor(0.5, dtype=F64))

    # delta = 1.5 caps token 2's unclipped ratio: min(-1.5, -1.2) = -1.5 -> term 1.5, and no gradient.
    # dapo: (0.8 - 1.2 + 1.5 - 1.10517) / 4 = -0.00517 / 4 = -0.0012927
    loss, _ = grpo_loss(logp, old, None, adv, mask, LossConfig(epsilon=0.2, delta=1.5))
    assert_close(loss, torch.tensor(-0.0012927, dtype=F64), atol=1e-6, rtol=0)
    (grad,) = torch.autograd.grad(loss, logp)
    assert_close(grad[:, 0], t([0.0, 0.0, 0.0, -0.27629]), atol=1e-5, rtol=0)


def test_epsilon_high_separates_the_upper_clip() -> None:
    # A=+1, rho=e^0.25=1.28403: above 1 + 0.28, so epsilon_high=0.28 clips it to 1.28; below 1 + 0.3, so
    # epsilon_high=0.3 leaves it at 1.28403. With A > 0 the lower clip (epsilon=0.2) plays no part.
    logp, old, adv, mask = t([[0.25]]), t([[0.0]]), t([1.0]), torch.ones(1, 1)
    loss, _ = grpo_loss(logp, old, None, adv, mask, LossConfig(epsilon=0.2, epsilon_high=0.28))
    assert_close(loss, torch.tensor(-1.28, dtype=F64))
    loss, _ = grpo_loss(logp, old, None, adv, mask, LossConfig(epsilon=0.2, epsilon_high=0.3))
    assert_close(loss, torch.tensor(-math.exp(0.25), dtype=F64))


def test_sequence_level_ratio() -> None:
    # logp - old = [0.3, -0.1, junk] with mask [1, 1, 0]: mean log-ratio (0.3 - 0.1) / 2 = 0.1,
    # rho = e^0.1 = 1.10517 for both tokens (inside [0.8, 1.2]); A = 1 -> dapo loss -1.10517.
    logp = t([[0.3, -0.1, 4.0]])
    old = torch.zeros(1, 3, dtype=F64)
    mask = t([[1, 1, 0]])
    loss, metrics = grpo_loss(logp, old, None, t([1.0]), mask, LossConfig(importance_sampling_level="sequence"))
    assert_close(loss, torch.tensor(-1.10517, dtype=F64), atol=1e-5, rtol=0)
    assert_close(metrics["ratio_mean"], torch.tensor(math.exp(0.1), dtype=F64))
    # Token level instead: e^0.3 = 1.34986 clipped to 1.2, e^-0.1 = 0.90484 -> (-1.2 - 0.90484) / 2 = -1.05242.
    loss, _ = grpo_loss(logp, old, None, t([1.0]), mask, LossConfig(importance_sampling_level="token"))
    assert_close(loss, torch.tensor(-1.05242, dtype=F64), atol=1e-5, rtol=0)


def test_kl_penalty() -> None:
    logp = t([[-1.0, -2.0]])
    assert_close(k3_kl(logp, logp), torch.zeros(1, 2, dtype=F64))
    # ref - logp = -1.5 - (-1.0) = -0.5: e^-0.5 - (-0.5) - 1 = 0.60653 + 0.5 - 1 = 0.10653.
    assert_close(k3_kl(t([[-1.0]]), t([[-1.5]])), t([[0.106531]]), atol=1e-6, rtol=0)
    # With A = 0 only the penalty is left: beta * kl = 0.1 * 0.106531 = 0.0106531 (dapo over one token).
    loss, metrics = grpo_loss(t([[-1.0]]), None, t([[-1.5]]), t([0.0]), torch.ones(1, 1), LossConfig(beta=0.1))
    assert_close(loss, torch.tensor(0.0106531, dtype=F64), atol=1e-7, rtol=0)
    assert_close(metrics["kl"], torch.tensor(0.106531, dtype=F64), atol=1e-6, rtol=0)
    _, metrics = grpo_loss(logp, None, None, t([1.0]), torch.ones(1, 2))
    assert "kl" not in metrics


def test_top_entropy_quantile_keeps_the_high_entropy_tokens() -> None:
    # Entropies [0.1, 0.5, 0.9, 0.3]; the 0.5 quantile of the sorted [0.1, 0.3, 0.5, 0.9] is at position
    # 1.5 -> 0.4, so tokens 1 and 2 keep their term (-1 each, on-policy with A = 1) and the others drop.
    # dapo still divides by all 4 active tokens: -2 / 4 = -0.5.
    entropy = t([[0.1, 0.5, 0.9, 0.3]])
    loss, _ = grpo_loss(
        torch.zeros(1, 4, dtype=F64),
        None,
        None,
        t([1.0]),
        torch.ones(1, 4),
        LossConfig(top_entropy_quantile=0.5),
        entropy=entropy,
    )
    assert_close(loss, torch.tensor(-0.5, dtype=F64))


def test_empty_completions_and_junk_padding_give_finite_loss_and_gradient() -> None:
    logp = t([[-math.inf, math.nan], [-1.0, -math.inf]]).requires_grad_()
    old = t([[math.nan, 3.0], [-1.2, math.inf]])
    ref = t([[math.inf, -math.inf], [-0.9, math.nan]])
    mask = t([[0, 0], [1, 0]])  # sequence 0 is empty
    entropy = t([[math.nan, 1.0], [0.5, 2.0]])
    for loss_type in AGGREGATIONS.names:
        for level in IMPORTANCE_SAMPLING_LEVELS:
            loss, metrics = grpo_loss(
                logp,
                old,
                ref,
                t([1.0, -1.0]),
                mask,
                LossConfig(
                    loss_type,
                    importance_sampling_level=level,
                    beta=0.04,
                    max_completion_length=2,
                    top_entropy_quantile=0.5,
                ),
                entropy=entropy,
            )
            (grad,) = torch.autograd.grad(loss, logp)
            assert torch.isfinite(loss) and torch.isfinite(grad).all(), (loss_type, level)
            assert all(torch.isfinite(v) for v in metrics.values())
            assert grad[0].abs().sum() == 0 and grad[1, 1] == 0
    all_empty = torch.zeros(2, 2)
    for loss_type in AGGREGATIONS.names:
        loss, metrics = grpo_loss(
            logp, old, ref, t([1.0, -1.0]), all_empty, LossConfig(loss_type, beta=0.04, max_completion_length=2)
        )
        assert loss.item() == 0.0 and all(v.item() == 0.0 for v in metrics.values())


def test_bad_settings_fail_with_a_clear_message() -> None:
    logp, mask, adv = torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2)
    # Settings are checked once, when the config is built, not on every call.
    with pytest.raises(ValueError, match=r"loss_type='ppo'.*'grpo', 'bnpo', 'dr_grpo', 'dapo'"):
        LossConfig(loss_type="ppo")
    with pytest.raises(ValueError, match=r"importance_sampling_level='seq'.*'token', 'sequence'"):
        LossConfig(importance_sampling_level="seq")
    with pytest.raises(ValueError, match="max_completion_length"):
        LossConfig(loss_type="dr_grpo")
    with pytest.raises(ValueError, match="delta"):
        LossConfig(delta=1.1)
    with pytest.raises(ValueError, match=r"scale_rewards='global'"):
        LossConfig(scale_rewards="global")
    with pytest.raises(ValueError, match=r"epsilon=-0.1 and epsilon_high=None must be >= 0"):
        LossConfig(epsilon=-0.1)
    with pytest.raises(ValueError, match=r"beta=-1.0 must be >= 0"):
        LossConfig(beta=-1.0)
    with pytest.raises(ValueError, match=r"top_entropy_quantile=1.5 must be in \(0, 1\]"):
        LossConfig(top_entropy_quantile=1.5)
    # What a call's inputs must hold for its config.
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, None, None, adv, mask, LossConfig(beta=0.1))
    with pytest.raises(ValueError, match="entropy"):
        grpo_loss(logp, None, None, adv, mask, LossConfig(top_entropy_quantile=0.2))
    with pytest.raises(ValueError, match="advantages must be"):
        grpo_loss(logp, None, None, torch.zeros(3), mask)
    with pytest.raises(ValueError, match="mask has shape"):
        grpo_loss(logp, None, None, adv, torch.ones(2, 4))


def _random_batch(seed: int, lengths: list[int], T: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    logp = -3 * torch.rand(B, T, generator=g, dtype=F64)
    mask = (torch.arange(T).expand(B, T) < torch.tensor(lengths).unsqueeze(1)).to(F64)
    junk = 30 * (torch.rand(B, T, generator=g, dtype=F64) - 0.5)  # padding holds arbitrary values
    return {
        "logp": torch.where(mask.bool(), logp, junk),
        "old": logp + 0.3 * torch.randn(B, T, generator=g, dtype=F64),
        "ref": logp + 0.3 * torch.randn(B, T, generator=g, dtype=F64),
        "entropy": torch.rand(B, T, generator=g, dtype=F64),
        "mask": mask,
    }


@st.composite
def rollouts(draw: st.DrawFn) -> dict:
    group_size, prompts, T = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 5))
    n = group_size * prompts
    reward = st.one_of(st.just(math.nan), st.sampled_from([0.0, 1.0]), st.floats(-2, 2, allow_nan=False))
    return {
        "group_size": group_size,
        "T": T,
        "lengths": draw(st.lists(st.integers(0, T), min_size=n, max_size=n)),  # 0 = empty completion
        "rewards": draw(st.lists(reward, min_size=n, max_size=n)),
        "seed": draw(st.integers(0, 2**16)),
        "epsilon": draw(st.sampled_from([0.1, 0.2])),
        "epsilon_high": draw(st.sampled_from([None, 0.28])),
        "delta": draw(st.sampled_from([None, 1.5])),
        "beta": draw(st.sampled_from([0.0, 0.04])),
        "top_entropy_quantile": draw(st.sampled_from([1.0, 0.5])),
    }


@pytest.mark.parametrize("scale_rewards", ADVANTAGE_ESTIMATORS.names)
@pytest.mark.parametrize("level", IMPORTANCE_SAMPLING_LEVELS)
@pytest.mark.parametrize("loss_type", AGGREGATIONS.names)
@settings(max_examples=6, deadline=None, derandomize=True)
@given(case=rollouts())
def test_matches_loop_reference(loss_type: str, level: str, scale_rewards: str, case: dict) -> None:
    batch = _random_batch(case["seed"], case["lengths"], case["T"])
    adv = compute_advantages(t(case["rewards"]), case["group_size"], scale_rewards)
    adv_ref = ref_advantages(case["rewards"], case["group_size"], scale_rewards)
    options = {k: case[k] for k in ("epsilon", "delta", "beta", "top_entropy_quantile")}
    loss, metrics = grpo_loss(
        batch["logp"],
        batch["old"],
        batch["ref"],
        adv,
        batch["mask"],
        LossConfig(
            loss_type,
            importance_sampling_level=level,
            epsilon_high=case["epsilon_high"],
            max_completion_length=case["T"] + 2,
            **options,
        ),
        entropy=batch["entropy"],
    )
    eps_high = case["epsilon"] if case["epsilon_high"] is None else case["epsilon_high"]
    expected, expected_metrics = ref_grpo_loss(
        batch["logp"].tolist(),
        batch["old"].tolist(),
        batch["ref"].tolist(),
        adv_ref,
        batch["mask"].int().tolist(),
        loss_type=loss_type,
        epsilon_high=eps_high,
        level=level,
        max_completion_length=case["T"] + 2,
        entropy=batch["entropy"].tolist(),
        **options,
    )
    assert_close(loss.item(), expected, atol=1e-9, rtol=1e-7)
    assert metrics.keys() == expected_metrics.keys()
    for key, value in expected_metrics.items():
        assert_close(metrics[key].item(), value, atol=1e-9, rtol=1e-7, msg=key)


@pytest.mark.parametrize("level", IMPORTANCE_SAMPLING_LEVELS)
@pytest.mark.parametrize("loss_type", AGGREGATIONS.names)
def test_gradient_matches_finite_differences(loss_type: str, level: str) -> None:
    batch = _random_batch(seed=3, lengths=[3, 1, 0, 2], T=3)
    adv = t([0.7, -1.1, 0.4, -0.2])
    logp = batch["logp"].clone().requires_grad_()

    def loss_fn(lp: torch.Tensor) -> torch.Tensor:
        return grpo_loss(
            lp,
            batch["old"],
            batch["ref"],
            adv,
            batch["mask"],
            LossConfig(
                loss_type,
                importance_sampling_level=level,
                beta=0.04,
                delta=2.0,
                epsilon_high=0.28,
                max_completion_length=5,
            ),
        )[0]

    assert torch.autograd.gradcheck(loss_fn, (logp,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("level", IMPORTANCE_SAMPLING_LEVELS)
@pytest.mark.parametrize("loss_type", ["dapo", "dr_grpo", "grpo"])
def test_micro_batch_split_gives_the_same_gradient(loss_type: str, level: str) -> None:
    batch = _random_batch(seed=11, lengths=[5, 2, 0, 4, 1, 5, 3, 2], T=5)
    adv = torch.linspace(-1.0, 1.0, 8, dtype=F64)
    config = LossConfig(loss_type, importance_sampling_level=level, beta=0.04, max_completion_length=6)
    normalizer = AGGREGATIONS.get(loss_type).count(batch["mask"])
    grads, losses = [], []
    for n_micro in (1, 2, 4):
        logp = batch["logp"].clone().requires_grad_()
        total = torch.zeros((), dtype=F64)
        for rows in torch.arange(8).chunk(n_micro):
            # Each micro-batch divides by the count of the whole mini-batch; the losses are summed.
            loss, _ = grpo_loss(
                logp[rows],
                batch["old"][rows],
                batch["ref"][rows],
                adv[rows],
                batch["mask"][rows],
                config,
                normalizer=normalizer,
            )
            total = total + loss
        (grad,) = torch.autograd.grad(total, logp)
        grads.append(grad)
        losses.append(total.detach())
    for grad, loss in zip(grads[1:], losses[1:], strict=True):
        assert_close(grad, grads[0], atol=1e-6, rtol=0)
        assert_close(loss, losses[0], atol=1e-12, rtol=0)
    # The normaliser-free single call is the textbook value, so the split reproduces it too.
    single, _ = grpo_loss(batch["logp"], batch["old"], batch["ref"], adv, batch["mask"], config)
    assert_close(losses[0], single)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_a_drifted_policy_gives_a_large_finite_loss_and_gradient(level) -> None:
    # log pi - log pi_old = +-100: exp overflows float32 (inf loss, NaN gradients) without the clamp.
    logp = torch.tensor([[-0.1, -0.1], [-120.0, -120.0]], requires_grad=True)
    old = torch.tensor([[-100.1, -100.1], [-20.0, -20.0]])
    ref = torch.tensor([[-100.1, -100.1], [-20.0, -20.0]])
    mask = torch.ones(2, 2)
    loss, metrics = grpo_loss(
        logp, old, ref, torch.tensor([-1.0, 1.0]), mask, LossConfig(beta=0.1, importance_sampling_level=level)
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert loss.item() > 1e7  # exp(20) / 2 tokens-worth: large, as it should be
    assert torch.isfinite(metrics["kl"]) and torch.isfinite(metrics["ratio_mean"])
    assert importance_ratio(logp, old, mask, level).max().item() == pytest.approx(
        math.exp(MAX_LOG_RATIO), rel=1e-5
    )
    assert k3_kl(torch.tensor([0.0]), torch.tensor([50.0])).item() == pytest.approx(
        math.exp(MAX_LOG_RATIO) - MAX_LOG_RATIO - 1, rel=1e-5
    )
