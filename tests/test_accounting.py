"""Accountants (RDP, PLD, GDP-CLT) against independent references, exact cases and edge cases."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from privtune.accounting import (
    ACCOUNTANTS,
    compute_epsilon,
    compute_epsilons,
    dp_event,
    epsilon_for_runs,
    gdp_epsilon_from_mu,
    gdp_mu,
)
from privtune.accounting.accountants import gdp_delta
from privtune.errors import AccountingError

COARSE = 1e-3  # PLD grid for tests: fast, and within ~1e-3 of the default grid


# -- independent references ------------------------------------------------------------------------------


def test_rdp_curve_matches_published_tf_privacy_value():
    # TF Privacy's compute_dp_sgd_privacy (tensorflow/privacy issue #97): N=15000, batch 250 (q = 1.67%),
    # sigma = 1.3, 15 epochs = 900 steps, delta = 1e-5 -> eps = 2.4614490035755816 at the optimal order 10,
    # with that version's conversion eps = rdp(alpha) - log(delta) / (alpha - 1).
    accountant = RdpAccountant(orders=[10.0])
    accountant.compose(dp_event([(250 / 15000, 1.3, 900)]))
    eps = accountant.rdp[0] - math.log(1e-5) / 9.0
    assert eps == pytest.approx(2.4614490035755816, abs=1e-9)
    # Our RDP epsilon uses the newer (Canonne-Kamath-Steinke) conversion over more orders: smaller, close.
    ours = compute_epsilon(250 / 15000, 1.3, 900, 1e-5, "rdp")
    assert 2.0 < ours < 2.4614490035755816


@pytest.mark.parametrize(
    ("mu", "expected", "tol"),
    # Dong, Roth, Su, "Gaussian differential privacy" (JRSS-B 2022), Fig. 4: mu_CLT = 0.35 gives (1.34, 1e-5)-DP,
    # mu_CLT = 1.78 gives (8.68, 1e-5)-DP (mu printed to 2 decimals, hence the wider tolerance there).
    [(0.35, 1.34, 0.005), (1.78, 8.68, 0.03)],
)
def test_gdp_conversion_matches_published_values(mu, expected, tol):
    assert gdp_epsilon_from_mu(mu, 1e-5) == pytest.approx(expected, abs=tol)


def test_gdp_duality_round_trip():
    for mu in (0.1, 0.5, 1.0, 3.0):
        eps = gdp_epsilon_from_mu(mu, 1e-6)
        assert gdp_delta(eps, mu) == pytest.approx(1e-6, rel=1e-6)


@pytest.mark.parametrize(("q", "sigma", "steps"), [(0.01, 1.0, 500), (0.05, 0.8, 200)])
def test_pld_agrees_with_microsoft_prv_accountant(q, sigma, steps):
    prv = pytest.importorskip("prv_accountant")  # test-only dependency (dev extra)
    delta = 1e-5
    accountant = prv.PRVAccountant(
        prvs=[prv.PoissonSubsampledGaussianMechanism(noise_multiplier=sigma, sampling_probability=q)],
        max_self_compositions=[steps],
        eps_error=0.02,
        delta_error=1e-9,
    )
    low, _, high = accountant.compute_epsilon(delta=delta, num_self_compositions=[steps])
    ours = compute_epsilon(q, sigma, steps, delta, "pld", pld_discretization=COARSE)
    assert low - 0.01 <= ours <= high + 0.01


def test_pld_matches_dp_accounting_pld_accountant():
    # Our PLD merges runs, widens the grid for large epsilons and composes the Poisson events itself; it must agree
    # with dp_accounting's PLDAccountant composing the plain DpEvent.
    q, sigma, steps, delta = 0.02, 0.9, 300, 1e-5
    accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=COARSE)
    accountant.compose(dp_event([(q, sigma, steps)]))
    assert compute_epsilon(q, sigma, steps, delta, "pld", pld_discretization=COARSE) == pytest.approx(
        accountant.get_epsilon(delta), rel=2e-3
    )


# -- exact cases -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sigma", "steps"), [(2.0, 1), (5.0, 16), (20.0, 400)])
def test_full_batch_equals_exact_gaussian_composition(sigma, steps):
    # q = 1: T Gaussian mechanisms with multiplier sigma compose to one with sigma / sqrt(T).
    delta = 1e-5
    exact = dp_accounting.get_epsilon_gaussian(sigma / math.sqrt(steps), delta)
    assert compute_epsilon(1.0, sigma, steps, delta, "pld", pld_discretization=1e-4) == pytest.approx(exact, rel=2e-3)
    assert compute_epsilon(1.0, sigma, steps, delta, "gdp") == pytest.approx(exact, rel=1e-6)
    rdp = compute_epsilon(1.0, sigma, steps, delta, "rdp")
    assert rdp == pytest.approx(compute_epsilon(1.0, sigma / math.sqrt(steps), 1, delta, "rdp"), rel=1e-9)
    assert rdp >= exact  # RDP is an upper bound


def test_full_batch_shuffle_is_gaussian_with_sensitivity_two():
    # Replace-one neighbours move the clipped sum by up to 2C: T steps compose to sigma / (2 sqrt(T)).
    sigma, steps, delta = 8.0, 16, 1e-5
    exact = dp_accounting.get_epsilon_gaussian(sigma / (2 * math.sqrt(steps)), delta)
    assert compute_epsilon(1.0, sigma, steps, delta, "gdp", "shuffle") == pytest.approx(exact, rel=1e-6)
    assert compute_epsilon(1.0, sigma, steps, delta, "pld", "shuffle", pld_discretization=1e-4) == pytest.approx(
        exact, rel=2e-3
    )


def test_gdp_mu_formula():
    q, sigma, steps = 0.01, 0.9, 1000
    assert gdp_mu([(q, sigma, steps)]) == pytest.approx(q * math.sqrt(steps * (math.exp(1 / sigma**2) - 1)))


def test_accountants_are_ordered_as_documented():
    # GDP-CLT underestimates, PLD is tight, RDP is an upper bound (SST-2 setting of the paper).
    eps = compute_epsilons(1000 / 67349, 0.8, 203, 1 / (2 * 67349), pld_discretization=COARSE)
    assert set(eps) == set(ACCOUNTANTS)
    assert eps["gdp"] < eps["pld"] < eps["rdp"]


# -- composition of runs -----------------------------------------------------------------------------------


def test_split_runs_equal_one_run_and_order_does_not_matter():
    delta = 1e-5
    one = epsilon_for_runs([(0.02, 1.0, 300)], delta, "rdp")
    assert epsilon_for_runs([(0.02, 1.0, 100), (0.02, 1.0, 200)], delta, "rdp") == pytest.approx(one, rel=1e-12)
    runs = [(0.02, 1.0, 100), (0.05, 1.5, 50)]
    for accountant in ACCOUNTANTS:
        forward = epsilon_for_runs(runs, delta, accountant, pld_discretization=COARSE)
        backward = epsilon_for_runs(runs[::-1], delta, accountant, pld_discretization=COARSE)
        assert forward == pytest.approx(backward, rel=1e-9)


def test_more_steps_or_less_noise_cost_more():
    base = compute_epsilon(0.01, 1.0, 100, 1e-5)
    assert compute_epsilon(0.01, 1.0, 200, 1e-5) > base
    assert compute_epsilon(0.01, 0.8, 100, 1e-5) > base
    assert compute_epsilon(0.02, 1.0, 100, 1e-5) > base


# -- shuffle (sampling without replacement, replace-one) ---------------------------------------------------


def test_shuffle_uses_replace_one_with_halved_sigma():
    q, sigma, steps, delta = 0.01, 1.0, 200, 1e-5
    # PLD of sampling without replacement under replace-one = Poisson add/remove PLD at sigma / 2 (up to the
    # grid, which is relative to the RDP epsilon for large epsilons and so differs slightly between the two).
    assert compute_epsilon(q, sigma, steps, delta, "pld", "shuffle", pld_discretization=COARSE) == pytest.approx(
        compute_epsilon(q, sigma / 2, steps, delta, "pld", "poisson", pld_discretization=COARSE), rel=1e-4
    )
    rdp_shuffle = compute_epsilon(q, sigma, steps, delta, "rdp", "shuffle")
    # The WOR RDP bound (Wang, Balle, Kasiviswanathan) is looser than the tight PLD, and a replaced example
    # costs more than an added one.
    assert rdp_shuffle > compute_epsilon(q, sigma, steps, delta, "pld", "shuffle", pld_discretization=COARSE)
    assert rdp_shuffle > compute_epsilon(q, sigma, steps, delta, "rdp", "poisson")


def test_shuffle_event_is_sampling_without_replacement():
    event = dp_event([(1000 / 67349, 0.8, 3)], "shuffle")
    inner = event.events[0].event
    assert isinstance(inner, dp_accounting.SampledWithoutReplacementDpEvent)
    assert inner.sample_size / inner.source_dataset_size == pytest.approx(1000 / 67349, rel=1e-15)
    assert inner.event.noise_multiplier == pytest.approx(0.4)


# -- edge cases ----------------------------------------------------------------------------------------------


def test_large_epsilon_is_finite_or_inf_never_nan():
    for accountant in ACCOUNTANTS:
        eps = compute_epsilon(0.5, 0.2, 100, 1e-5, accountant, pld_discretization=COARSE)
        assert not math.isnan(eps)
        assert eps > 100
    assert compute_epsilon(0.5, 0.01, 100, 1e-5, "gdp") == math.inf


def test_tiny_delta():
    q, sigma, steps = 0.01, 1.0, 1000
    # Down to 1e-12 all three answer, in the documented order.
    eps = compute_epsilons(q, sigma, steps, 1e-12, pld_discretization=COARSE)
    assert eps["gdp"] < eps["pld"] < eps["rdp"] < math.inf
    assert eps["pld"] > compute_epsilon(q, sigma, steps, 1e-6, "pld", pld_discretization=COARSE)
    # Below, RDP and GDP still answer; PLD (double-precision FFTs) cannot and says so instead of a wrong number.
    tiny = compute_epsilons(q, sigma, steps, 1e-30, pld_discretization=COARSE)
    assert tiny["pld"] is None
    assert eps["rdp"] < tiny["rdp"] < math.inf
    assert eps["gdp"] < tiny["gdp"] < tiny["rdp"]
    with pytest.raises(AccountingError, match="use the rdp accountant"):
        compute_epsilon(q, sigma, steps, 1e-30, "pld")


def test_huge_noise_gives_tiny_epsilon():
    for accountant in ACCOUNTANTS:
        eps = compute_epsilon(0.01, 50.0, 100, 1e-5, accountant, pld_discretization=COARSE)
        assert 0.0 <= eps < 0.05


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample_rate": 0.0}, "outside (0, 1]"),
        ({"sample_rate": 1.5}, "outside (0, 1]"),
        ({"sample_rate": float("nan")}, "NaN"),
        ({"noise_multiplier": -1.0}, "must be a finite number > 0"),
        ({"noise_multiplier": 0.0}, "no privacy guarantee"),
        ({"noise_multiplier": float("inf")}, "finite"),
        ({"steps": 0}, "at least 1"),
        ({"steps": -5}, "at least 1"),
        ({"steps": 2.5}, "whole number"),
        ({"delta": 0.0}, "(0, 1)"),
        ({"delta": 1.0}, "(0, 1)"),
        ({"delta": "x"}, "must be a number"),
        ({"accountant": "moments"}, "unknown accountant"),
        ({"sampling": "uniform"}, "unknown sampling"),
    ],
)
def test_bad_input_is_an_accounting_error(kwargs, message):
    args = {"sample_rate": 0.01, "noise_multiplier": 1.0, "steps": 100, "delta": 1e-5}
    args.update(kwargs)
    with pytest.raises(AccountingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compute_epsilon(**args)


def test_delta_at_least_one_over_n_is_refused_with_reason():
    from privtune.accounting.accountants import check_delta

    with pytest.raises(AccountingError, match=r"1/N"):
        check_delta(1e-3, dataset_size=1000)
    assert check_delta(4.9e-4, dataset_size=1000) == 4.9e-4


def test_rdp_orders_cover_the_optimum():
    # The optimal order should be strictly inside the default order range for realistic settings.
    accountant = RdpAccountant()
    accountant.compose(dp_event([(1000 / 67349, 0.8, 203)]))
    _, order = accountant.get_epsilon_and_optimal_order(1e-5)
    orders = np.asarray(accountant.orders)
    assert orders.min() < order < orders.max()


# -- the paper's GLUE settings (Li, Tramer, Liang, Hashimoto, ICLR 2022; docs/accounting.md) -------------------

# (task, N, logical batch B, epochs) as in private-transformers' examples/classification/run_wrapper.py; delta =
# 1/(2N) and T = ceil(epochs N / B) as in its PrivacyEngine. sigma is calibrated with RDP to epsilon 3 and 8, and
# the other columns are what privtune reports for that sigma (full 1e-4 PLD grid; documented to 2 decimals).
PAPER_GLUE = [
    # task, N, B, epochs, T, {target: (sigma, pld, gdp)}
    ("SST-2", 67349, 1000, 3, 203, {3: (0.8221, 2.407, 1.538), 8: (0.5788, 6.676, 4.025)}),
    ("QNLI", 104743, 2000, 6, 315, {3: (0.9464, 2.567, 2.014), 8: (0.6522, 6.862, 4.779)}),
    ("QQP", 363846, 6000, 18, 1092, {3: (1.1733, 2.751, 2.531), 8: (0.7553, 7.153, 5.886)}),
    ("MNLI", 392702, 6000, 18, 1179, {3: (1.1466, 2.749, 2.525), 8: (0.7449, 7.146, 5.848)}),
]


@pytest.mark.parametrize(("task", "n", "batch", "epochs", "steps", "columns"), PAPER_GLUE)
def test_paper_glue_epsilon_columns(task, n, batch, epochs, steps, columns):
    from privtune.plan import PrivacyPlan

    for target, (sigma, pld, gdp) in columns.items():
        plan = PrivacyPlan.create(
            dataset_size=n, target_epsilon=target, batch_size=batch, epochs=epochs, seed=0, pld_discretization=COARSE
        )
        assert plan.steps == steps and plan.delta == 1 / (2 * n)
        assert plan.noise_multiplier == pytest.approx(sigma, abs=1e-4)
        eps = plan.epsilons()
        assert target * (1 - 3e-4) < eps["rdp"] <= target  # sigma is calibrated to relative precision 1e-4
        assert eps["pld"] == pytest.approx(pld, abs=5e-3)  # COARSE grid here; 1e-4 grid gives the table values
        assert eps["gdp"] == pytest.approx(gdp, abs=1e-3)


@pytest.mark.parametrize(("task", "n", "batch", "epochs", "steps", "columns"), PAPER_GLUE)
def test_paper_glue_pld_column_matches_prv_accountant(task, n, batch, epochs, steps, columns):
    # The paper's "composing trade-off functions" column comes from Microsoft's prv-accountant (its code calls it
    # with eps_error = 0.05), an independent implementation: privtune's PLD (default grid) must match its estimate,
    # and so must the pinned PLD column of docs/accounting.md.
    prv = pytest.importorskip("prv_accountant")  # test-only dependency (dev extra)
    q, delta = batch / n, 1 / (2 * n)
    for sigma, pld, _ in columns.values():
        accountant = prv.PRVAccountant(
            prvs=[prv.PoissonSubsampledGaussianMechanism(noise_multiplier=sigma, sampling_probability=q)],
            max_self_compositions=[steps],
            eps_error=0.05,
            delta_error=delta / 1000,
        )
        low, estimate, high = accountant.compute_epsilon(delta=delta, num_self_compositions=[steps])
        ours = compute_epsilon(q, sigma, steps, delta, "pld")
        assert low <= ours <= high
        assert ours == pytest.approx(estimate, abs=1e-3)  # docs/accounting.md: "to within 0.001 in every row"
        assert estimate == pytest.approx(pld, abs=5e-3)  # the pinned column (computed at the unrounded sigma)
