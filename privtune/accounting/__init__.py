"""Privacy accounting for DP-SGD: RDP, PLD and GDP-CLT side by side, calibration, and the step ledger.

Public API::

    compute_epsilon(q, sigma, steps, delta, accountant="rdp", sampling="poisson") -> float
    compute_epsilons(q, sigma, steps, delta, sampling="poisson") -> {"rdp": .., "pld": .., "gdp": ..}
    epsilon_for_runs([(q, sigma, steps), ...], delta, accountant="rdp", sampling="poisson") -> float
    calibrate_noise(target_epsilon, delta, q, steps, accountant="rdp", sampling="poisson") -> sigma
    Ledger(sampling="poisson").record(sample_rate=q, noise_multiplier=sigma); ledger.epsilon(delta)

See docs/accounting.md.
"""

from privtune.accounting.accountants import (
    ACCOUNTANT_LABELS,
    ACCOUNTANTS,
    DEFAULT_PLD_DISCRETIZATION,
    NEIGHBOURING,
    PLD_MIN_DELTA,
    SAMPLINGS,
    compute_epsilon,
    compute_epsilons,
    dp_event,
    epsilon_for_runs,
    epsilons_for_runs,
    gdp_epsilon_from_mu,
    gdp_mu,
)
from privtune.accounting.calibration import MAX_NOISE_MULTIPLIER, MIN_NOISE_MULTIPLIER, calibrate_noise
from privtune.accounting.ledger import Ledger, LedgerRun

__all__ = [
    "ACCOUNTANTS",
    "ACCOUNTANT_LABELS",
    "DEFAULT_PLD_DISCRETIZATION",
    "MAX_NOISE_MULTIPLIER",
    "MIN_NOISE_MULTIPLIER",
    "NEIGHBOURING",
    "PLD_MIN_DELTA",
    "SAMPLINGS",
    "Ledger",
    "LedgerRun",
    "calibrate_noise",
    "compute_epsilon",
    "compute_epsilons",
    "dp_event",
    "epsilon_for_runs",
    "epsilons_for_runs",
    "gdp_epsilon_from_mu",
    "gdp_mu",
]
