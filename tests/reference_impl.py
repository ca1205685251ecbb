"""A deliberately naive GRPO reference: plain Python loops over groups, sequences and tokens.

Written straight from the formulas, with ``math`` on Python floats (float64), so the vectorised
functions in ``grpo_lightning`` can be checked against something with no tensor tricks in it.
"""

from __future__ import annotations

import math


def ref_advantages(
    rewards: list[float], group_size: int, scale_rewards: str, eps: float = 1e-4
) -> list[float]:
    """A[i] from rewards (NaN = not applicable), G consecutive rows per prompt."""

    def mean_std(values: list[float]) -> tuple[float, float]:
        valid = [v for v in values if not math.isnan(v)]
        if not valid:
            return 0.0, 0.0
        mean = sum(valid) / len(valid)
        if len(valid) < 2:
            return mean, 0.0
        return mean, math.sqrt(sum((v - mean) ** 2 for v in valid) / (len(valid) - 1))

    _, batch_std = mean_std(rewards)
    out: list[float] = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        mean, std = mean_std(group)
        n_valid = sum(not math.isnan(v) for v in group)
        for r in group:
            if math.isnan(r) or n_valid < 2:
                out.append(0.0)
            elif scale_rewards == "group":
                out.append((r - mean) / (std + eps))
            elif scale_rewards == "batch":
                out.append((r - mean) / (batch_std + eps))
            else:
                out.append(r - mean)
    return out


def ref_quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's and torch's default)."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def ref_grpo_loss(
    logp: list[list[float]],
    old: list[list[float]],
    ref: list[list[float]],
    adv: list[float],
    mask: list[list[int]],
    *,
    loss_type: str,
    epsilon: float,
    epsilon_high: float,
    delta: float | None,
    beta: float,
    level: str,
    max_completion_length: int | None,
    top_entropy_quantile: float = 1.0,
    entropy: list[list[float]] | None = None,
) -> tuple[float, dict[str, float]]:
    """The loss of one batch (normaliser = this batch's own count) and its metrics."""
    n_seq = len(logp)
    keep = [[True] * len(row) for row in mask]
    if top_entropy_quantile < 1.0:
        assert entropy is not None
        active_h = [entropy[i][t] for i in range(n_seq) for t in range(len(mask[i])) if mask[i][t]]
        if active_h:
            threshold = ref_quantile(active_h, 1.0 - top_entropy_quantile)
            keep = [[entropy[i][t] >= threshold for t in range(len(mask[i]))] for i in range(n_seq)]

    token_loss: list[list[float]] = []
    ratios: list[list[float]] = []
    kls: list[list[float]] = []
    for i in range(n_seq):
        active = [t for t in range(len(mask[i])) if mask[i][t]]
        seq_log_ratio = sum(logp[i][t] - old[i][t] for t in active) / max(len(active), 1)
        row_loss, row_ratio, row_kl = [], [], []
        for t in range(len(mask[i])):
            rho = math.exp(logp[i][t] - old[i][t] if level == "token" else seq_log_ratio)
            clipped = min(max(rho, 1.0 - epsilon), 1.0 + epsilon_high)
            unclipped = rho if delta is None else min(rho, delta)
            loss = -min(unclipped * adv[i], clipped * adv[i])
            if not keep[i][t]:
                loss = 0.0
            kl = math.exp(ref[i][t] - logp[i][t]) - (ref[i][t] - logp[i][t]) - 1.0
            if beta > 0:
                loss += beta * kl
            row_loss.append(loss)
            row_ratio.append(rho)
            row_kl.append(kl)
        token_loss.append(row_loss)
        ratios.append(row_ratio)
        kls.append(row_kl)

    total = 0.0
    n_tokens = 0
    per_seq_means = []
    for i in range(n_seq):
        seq_sum = sum(token_loss[i][t] for t in range(len(mask[i])) if mask[i][t])
        seq_len = sum(mask[i])
        total += seq_sum
        n_tokens += seq_len
        per_seq_means.append(seq_sum / seq_len if seq_len else 0.0)
    if loss_type == "grpo":
        value = sum(per_seq_means) / n_seq
    elif loss_type in ("bnpo", "dapo"):
        value = total / max(n_tokens, 1)
    elif loss_type == "dr_grpo":
        assert max_completion_length is not None
        value = total / (n_seq * max_completion_length)
    else:
        raise ValueError(loss_type)

    def token_mean(fn) -> float:
        vals = [fn(i, t) for i in range(n_seq) for t in range(len(mask[i])) if mask[i][t]]
        return sum(vals) / len(vals) if vals else 0.0

    def low(i: int, t: int) -> bool:
        return ratios[i][t] < 1.0 - epsilon and adv[i] < 0

    def high(i: int, t: int) -> bool:
        return ratios[i][t] > 1.0 + epsilon_high and adv[i] > 0

    metrics = {
        "ratio_mean": token_mean(lambda i, t: ratios[i][t]),
        "clip_ratio/low_mean": token_mean(lambda i, t: float(low(i, t))),
        "clip_ratio/high_mean": token_mean(lambda i, t: float(high(i, t))),
        "clip_ratio/region_mean": token_mean(lambda i, t: float(low(i, t) or high(i, t))),
    }
    if beta > 0:
        metrics["kl"] = token_mean(lambda i, t: kls[i][t])
    return value, metrics
