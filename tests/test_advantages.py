"""Group (GRPO) and batch (the seed's) advantage normalisation."""

import numpy as np
import pytest

from common.advantages import (
    ADVANTAGE_MODES,
    batch_advantages,
    compute_advantages,
    group_advantages,
)

pytestmark = pytest.mark.unit


def test_seed_example_batch() -> None:
    advantages_P_G = batch_advantages(np.array([[0.0, 0.0, 1.1, 0.0]]))
    np.testing.assert_allclose(advantages_P_G, [[-0.57735, -0.57735, 1.73205, -0.57735]], atol=1e-4)


def test_seed_example_group_and_flat_batch_agree_for_one_problem() -> None:
    rewards_P_G = np.array([[0.0, 0.0, 1.1, 0.0]])
    np.testing.assert_allclose(group_advantages(rewards_P_G), batch_advantages(rewards_P_G))
    # The seed flattens the batch: the shape of the grid must not matter.
    np.testing.assert_allclose(
        batch_advantages(rewards_P_G.reshape(2, 2)).ravel(), batch_advantages(rewards_P_G).ravel()
    )


def test_group_rows_are_standardised() -> None:
    rng = np.random.default_rng(0)
    rewards_P_G = rng.choice([0.0, 0.1, 1.1, 1.3], size=(32, 8))
    rewards_P_G[3] = 1.1
    rewards_P_G[7] = 0.0
    advantages_P_G = group_advantages(rewards_P_G)
    assert advantages_P_G.shape == (32, 8)
    constant_P = rewards_P_G.std(axis=1) == 0
    assert constant_P[3] and constant_P[7]
    np.testing.assert_array_equal(advantages_P_G[constant_P], 0.0)
    varied = advantages_P_G[~constant_P]
    np.testing.assert_allclose(varied.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(varied.std(axis=1), 1.0, atol=1e-6)


def test_constant_rows_with_float_noise_are_zero() -> None:
    rewards_P_G = np.array([[0.1 + 0.2, 0.3, 0.3], [1.1, 1.1, 1.1]])
    np.testing.assert_array_equal(group_advantages(rewards_P_G), 0.0)
    np.testing.assert_array_equal(batch_advantages(rewards_P_G[:1]), 0.0)


def test_compute_advantages_group_mode() -> None:
    rewards_P_G = np.array(
        [[0.0, 0.0, 1.1, 0.0], [1.1, 1.1, 1.1, 1.1], [0.0, 1.0, 0.0, 1.0], [0, 0, 0, 0]]
    )
    result = compute_advantages(rewards_P_G, "group")
    assert result.advantages_P_G.shape == (4, 4)
    np.testing.assert_array_equal(result.keep_P, [True, False, True, False])
    assert result.frac_groups_zero_std == 0.5
    np.testing.assert_allclose(result.advantages_P_G[2], [-1, 1, -1, 1], atol=1e-6)


def test_compute_advantages_batch_mode_keeps_constant_groups() -> None:
    rewards_P_G = np.array([[0.0, 0.0, 1.1, 0.0], [1.1, 1.1, 1.1, 1.1]])
    result = compute_advantages(rewards_P_G, "batch")
    np.testing.assert_allclose(result.advantages_P_G, batch_advantages(rewards_P_G))
    np.testing.assert_array_equal(result.keep_P, [True, True])
    # Still measured within groups, whatever the mode.
    assert result.frac_groups_zero_std == 0.5


def test_compute_advantages_all_constant_batch() -> None:
    for mode in ADVANTAGE_MODES:
        result = compute_advantages(np.full((3, 4), 0.1), mode)  # type: ignore[arg-type]
        np.testing.assert_array_equal(result.advantages_P_G, 0.0)
        assert not result.keep_P.any()
        assert result.frac_groups_zero_std == 1.0


def test_integer_and_list_input() -> None:
    result = compute_advantages([[0, 1], [1, 1]], "group")  # type: ignore[arg-type]
    assert result.advantages_P_G.dtype == np.float64
    np.testing.assert_allclose(result.advantages_P_G, [[-1, 1], [0, 0]], atol=1e-6)


@pytest.mark.parametrize(
    ("rewards", "message"),
    [
        (np.zeros(4), "2-D"),
        (np.zeros((2, 2, 2)), "2-D"),
        (np.zeros((0, 4)), "empty"),
        (np.array([[0.0, np.nan]]), "NaN"),
        (np.array([[0.0, np.inf]]), "NaN or infinity"),
    ],
)

def test_bad_input(rewards: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_advantages(rewards, "group")
    with pytest.raises(ValueError, match=message):
        batch_advantages(rewards)


def test_unknown_mode_lists_modes() -> None:
    with pytest.raises(ValueError, match="modes: group, batch"):
        compute_advantages(np.zeros((1, 2)), "token")  # type: ignore[arg-type]
