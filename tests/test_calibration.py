"""Calibration of the noise multiplier, and counting steps exactly as the loop runs them."""

from __future__ import annotations

import time

import pytest

from privtune.accounting import MAX_NOISE_MULTIPLIER, MIN_NOISE_MULTIPLIER, calibrate_noise, compute_epsilon
from privtune.errors import AccountingError
from privtune.plan import count_steps

SST2 = {"dataset_size": 67349, "batch_size": 1000, "epochs": 3}
Q = 1000 / 67349
DELTA = 1 / (2 * 67349)


@pytest.mark.parametrize("target", [0.5, 3.0, 8.0])
def test_rdp_calibration_is_tight_and_on_the_safe_side(target):
    sigma = calibrate_noise(target, DELTA, Q, 203)
    assert compute_epsilon(Q, sigma, 203, DELTA) <= target
    assert compute_epsilon(Q, sigma * (1 - 1e-3), 203, DELTA) > target  # not much more noise than needed


def test_rdp_calibration_takes_under_a_second():
    start = time.process_time()  # CPU time of this process: robust to other load on a shared machine
    calibrate_noise(8.0, 1 / (2 * 392702), 6000 / 392702, 1179)
    assert time.process_time() - start < 1.0


def test_pld_calibration_needs_less_noise_than_rdp():
    sigma_rdp = calibrate_noise(3.0, DELTA, Q, 203, "rdp")
    sigma_pld = calibrate_noise(3.0, DELTA, Q, 203, "pld", pld_discretization=1e-2)
    assert sigma_pld < sigma_rdp
    assert compute_epsilon(Q, sigma_pld, 203, DELTA, "pld", pld_discretization=1e-2) <= 3.0
    assert compute_epsilon(Q, sigma_pld * 0.995, 203, DELTA, "pld", pld_discretization=1e-2) > 3.0


def test_shuffle_calibration_meets_target_under_replace_one():
    sigma = calibrate_noise(8.0, DELTA, Q, 201, sampling="shuffle")
    assert compute_epsilon(Q, sigma, 201, DELTA, "rdp", "shuffle") <= 8.0
    assert sigma > calibrate_noise(8.0, DELTA, Q, 201)  # a replaced example costs more than an added one


def test_gdp_calibration_is_refused():
    with pytest.raises(AccountingError, match="underestimates"):
        calibrate_noise(3.0, DELTA, Q, 203, "gdp")


def test_unreachable_target_is_a_clear_error():
    # Full batch for a million steps: epsilon 0.001 needs sigma ~ 4.5e5, far above the search range.
    with pytest.raises(AccountingError, match=f"no noise multiplier up to {MAX_NOISE_MULTIPLIER:g}"):
        calibrate_noise(0.001, 1e-5, 1.0, 1_000_000)


def test_very_large_target_returns_the_smallest_useful_sigma():
    sigma = calibrate_noise(1e4, 1e-5, 0.01, 100)
    assert sigma >= MIN_NOISE_MULTIPLIER
    assert compute_epsilon(0.01, sigma, 100, 1e-5) <= 1e4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_epsilon": 0.0}, "must be a finite number > 0"),
        ({"target_epsilon": -1.0}, "must be a finite number > 0"),
        ({"target_epsilon": float("nan")}, "NaN"),
        ({"target_epsilon": float("inf")}, "finite"),
        ({"steps": 0}, "at least 1"),
        ({"sample_rate": 0.0}, r"outside \(0, 1\]"),
        ({"delta": 2.0}, r"\(0, 1\)"),
        ({"accountant": "moments"}, "unknown accountant"),
    ],
)
def test_bad_calibration_input(kwargs, message):
    args = {"target_epsilon": 3.0, "delta": 1e-5, "sample_rate": 0.01, "steps": 100}
    args.update(kwargs)
    with pytest.raises(AccountingError, match=message):
        calibrate_noise(**args)


# -- steps are counted exactly as the loop runs them --------------------------------------------------------


def test_poisson_steps_match_private_transformers_ceil_epochs_over_q():
    assert count_steps(67349, 1000, epochs=3) == 203  # ceil(3 * 67349 / 1000) = ceil(202.047)
    assert count_steps(392702, 6000, epochs=18) == 1179
    assert count_steps(1000, 100, epochs=3) == 30  # exact: no 30.000000000000004 -> 31


def test_fractional_epochs_are_decimal_exact():
    assert count_steps(1000, 100, epochs=0.3) == 3  # 0.3 * 10 = 3 exactly, not ceil(3.0000000000000004) = 4
    assert count_steps(1000, 100, epochs=2.5) == 25


def test_shuffle_per_epoch_drops_the_partial_batch():
    assert count_steps(67349, 1000, epochs=3, sampling="shuffle", per_epoch=True) == 3 * 67
    assert count_steps(67349, 1000, epochs=3, sampling="shuffle") == 203


def test_steps_given_directly_and_bad_combinations():
    assert count_steps(100, 10, steps=7) == 7
    with pytest.raises(AccountingError, match="exactly one of epochs or steps"):
        count_steps(100, 10, epochs=1, steps=7)
    with pytest.raises(AccountingError, match="exactly one of epochs or steps"):
        count_steps(100, 10)
    with pytest.raises(AccountingError, match="must be > 0"):
        count_steps(100, 10, epochs=0)
    with pytest.raises(AccountingError, match="1..N=100"):
        count_steps(100, 101, epochs=1)
