"""GRPO-style advantages from a batch of rewards shaped (problems P, samples per problem G).

`group` mode (the default the scripts should use) normalises each problem's G rewards on
their own: (r - mean) / (std + 1e-8), population std. A group whose rewards are all equal
carries no preference between its samples, so it gets zero advantages and `keep_P` marks it
for skipping (tinker-cookbook's rl_loop does the same).

`batch` mode is the seed's normalisation (tinkering-with-tinker, "Test 2: RLVR"): one mean
and std over the whole batch. Kept for reproducing the seed. There a group with all-equal
rewards still gets non-zero advantages (its rewards differ from the batch mean), so it is
kept unless its advantages happen to be exactly zero: `keep_P` is "any advantage non-zero"
in both modes. `frac_groups_zero_std` always counts groups whose own rewards are all equal,
whatever the mode, so the metric means the same thing across runs.
"""

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

ZERO_STD = 1e-8
"""Below this standard deviation rewards count as all equal; also the divisor's epsilon."""

AdvantageMode = Literal["group", "batch"]
ADVANTAGE_MODES: tuple[str, ...] = get_args(AdvantageMode)


@dataclass(frozen=True)
class AdvantageResult:
    advantages_P_G: np.ndarray
    """Advantage of every sample, same shape as the rewards."""
    keep_P: np.ndarray
    """Bool per problem: True where some advantage is non-zero (worth a datum)."""
    frac_groups_zero_std: float
    """Share of problems whose G rewards are all equal (no within-group signal)."""


def _check_rewards(rewards_P_G: np.ndarray) -> np.ndarray:
    rewards_P_G = np.asarray(rewards_P_G, dtype=np.float64)
    if rewards_P_G.ndim != 2:
        raise ValueError(
            f"rewards must be 2-D (problems, samples per problem), got shape {rewards_P_G.shape}"
        )
    if rewards_P_G.size == 0:
        raise ValueError(f"rewards are empty, shape {rewards_P_G.shape}")
    if not np.all(np.isfinite(rewards_P_G)):
        raise ValueError("rewards contain NaN or infinity")
    return rewards_P_G


def group_advantages(rewards_P_G: np.ndarray) -> np.ndarray:
    """Per-problem normalisation; problems whose rewards are all equal get zeros."""
    rewards_P_G = _check_rewards(rewards_P_G)
    mean_P = rewards_P_G.mean(axis=1, keepdims=True)
    std_P = rewards_P_G.std(axis=1, keepdims=True)
    advantages_P_G = (rewards_P_G - mean_P) / (std_P + ZERO_STD)
    return np.where(std_P < ZERO_STD, 0.0, advantages_P_G)


def batch_advantages(rewards_P_G: np.ndarray) -> np.ndarray:
    """The seed's normalisation over the whole batch; all zeros if the batch is constant."""
    rewards_P_G = _check_rewards(rewards_P_G)
    std = rewards_P_G.std()
    if std < ZERO_STD:
        return np.zeros_like(rewards_P_G)
    return (rewards_P_G - rewards_P_G.mean()) / (std + ZERO_STD)


def compute_advantages(rewards_P_G: np.ndarray, mode: AdvantageMode) -> AdvantageResult:
    """Advantages in `mode`, which groups to keep, and the share of constant groups."""
    rewards_P_G = _check_rewards(rewards_P_G)
    if mode == "group":
        advantages_P_G = group_advantages(rewards_P_G)
    elif mode == "batch":
        advantages_P_G = batch_advantages(rewards_P_G)
    else:
        raise ValueError(f"unknown advantage mode {mode!r}; modes: {', '.join(ADVANTAGE_MODES)}")
    zero_std_P = rewards_P_G.std(axis=1) < ZERO_STD
    return AdvantageResult(
        advantages_P_G=advantages_P_G,
        keep_P=np.any(advantages_P_G != 0.0, axis=1),
        frac_groups_zero_std=float(zero_std_P.mean()),
    )
