"""Epsilon of DP-SGD under three accountants, on Google's ``dp_accounting``.

DP-SGD takes ``T`` steps; at each step a batch is selected with sample rate ``q``, per-example gradients are
clipped to norm ``C`` and Gaussian noise ``N(0, sigma^2 C^2)`` is added to their sum. The noise multiplier
``sigma`` is the noise standard deviation in units of the clipping norm.

Accountants (``ACCOUNTANTS``):

``rdp``
    Renyi DP of the subsampled Gaussian (Mironov, Talwar, Zhang 2019), composed additively over steps and
    converted to (epsilon, delta) with the Canonne-Kamath-Steinke bound. An upper bound; what Opacus and
    private-transformers report.
``pld``
    Privacy loss distributions (Koskela et al.; Doroshenko et al. 2022): numerically composes the privacy loss
    of each step. Tight up to the discretisation, and pessimistic (an upper bound) by construction. It computes
    the same quantity as the PRV accountant of Gopi, Lee and Wutschitz (2021): the paper's "composing
    trade-off functions" column.
``gdp``
    Gaussian DP through the central limit theorem (Bu, Dong, Long, Su 2020):
    ``mu = q * sqrt(T * (exp(1 / sigma^2) - 1))``, then epsilon of mu-GDP at delta. An *approximation*
    that is known to underestimate epsilon: it is not a guarantee and is shown for comparison only.

Sampling (``SAMPLINGS``) fixes the neighbouring relation the guarantee is stated for:

``poisson``
    Every example is in the batch independently with probability ``q``. Neighbouring data sets differ by
    adding or removing one example (``add_or_remove_one``). Sensitivity of the clipped sum: ``C``.
``shuffle``
    Fixed-size batches of ``B = q N`` distinct examples (sampling without replacement). The data set size is
    public, so neighbours differ by replacing one example (``replace_one``); the clipped sum then changes by
    up to ``2 C``, so every accountant sees the noise multiplier ``sigma / 2``. RDP uses the bound for
    sampling without replacement of Wang, Balle, Kasiviswanathan (2019); PLD and GDP use the dominating pair
    of the Poisson-subsampled Gaussian at ``sigma / 2`` (Balle, Barthe, Gaboardi 2018, Thm. 10; Zhu, Dong,
    Wang 2022), which is attained by a worst-case data set and so is tight.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator
from fractions import Fraction

import dp_accounting
import numpy as np
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from scipy import optimize, special

from privtune.errors import AccountingError

ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld", "gdp")
SAMPLINGS: tuple[str, ...] = ("poisson", "shuffle")
NEIGHBOURING: dict[str, str] = {"poisson": "add_or_remove_one", "shuffle": "replace_one"}

ACCOUNTANT_LABELS: dict[str, str] = {
    "rdp": "RDP (upper bound)",
    "pld": "PLD (tight; = PRV / composed trade-off functions)",
    "gdp": "GDP-CLT (approximation, underestimates; not a guarantee)",
}

#: Default width of the privacy-loss grid of the PLD accountant (dp_accounting's own default).
DEFAULT_PLD_DISCRETIZATION = 1e-4
#: The PLD accountant answers for delta >= this only (double-precision FFTs, tails of mass 1e-15 dropped).
PLD_MIN_DELTA = 1e-12

_NEIGHBOURING_RELATION = {
    "poisson": dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
    "shuffle": dp_accounting.NeighboringRelation.REPLACE_ONE,
}

Run = tuple[float, float, int]
"""One run of identical steps: ``(sample_rate, noise_multiplier, steps)``."""


# ----------------------------------------------------------------------------------------------------------
# Validation: every public entry point checks its input here, so bad input is an AccountingError naming the
# cause and the fix, never a traceback, a NaN or a silent wrong answer.


def check_accountant(accountant: str, allowed: Iterable[str] = ACCOUNTANTS) -> str:
    allowed = tuple(allowed)
    if accountant not in allowed:
        raise AccountingError(f"unknown accountant {accountant!r}: choose one of {', '.join(allowed)}")
    return accountant


def check_sampling(sampling: str) -> str:
    if sampling not in SAMPLINGS:
        raise AccountingError(f"unknown sampling {sampling!r}: choose 'poisson' or 'shuffle'")
    return sampling


def check_sample_rate(sample_rate: float) -> float:
    q = _as_float(sample_rate, "sample rate")
    if not 0.0 < q <= 1.0:
        raise AccountingError(
            f"sample rate q={sample_rate!r} is outside (0, 1]: q is the probability that an example is in a "
            "batch (logical batch size / data set size), so pass a value such as 0.01"
        )
    return q


def check_noise_multiplier(noise_multiplier: float) -> float:
    sigma = _as_float(noise_multiplier, "noise multiplier")
    if math.isinf(sigma) or sigma <= 0.0:
        reason = (
            "0 adds no noise, so there is no privacy guarantee (epsilon is infinite)"
            if sigma == 0.0
            else "it is the noise standard deviation divided by the clipping norm"
        )
        raise AccountingError(
            f"noise multiplier sigma={noise_multiplier!r} must be a finite number > 0: {reason}"
        )
    return sigma


def check_steps(steps: int, *, allow_zero: bool = False) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        if isinstance(steps, float) and steps.is_integer():
            steps = int(steps)
        else:
            raise AccountingError(f"steps={steps!r} must be a whole number of optimizer steps")
    steps = int(steps)
    if steps < 0 or (steps == 0 and not allow_zero):
        raise AccountingError(
            f"steps={steps} must be at least 1: epsilon and noise are computed for a training run of >= 1 "
            "noisy optimizer steps"
        )
    return steps


def check_dataset_size(dataset_size: int) -> int:
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, (int, np.integer)) or dataset_size < 1:
        raise AccountingError(f"dataset size N={dataset_size!r} must be a whole number of examples >= 1")
    return int(dataset_size)


def check_delta(delta: float, dataset_size: int | None = None) -> float:
    """Check ``0 < delta < 1`` and, when the data set size ``N`` is known, ``delta < 1/N``."""
    d = _as_float(delta, "delta")
    if not 0.0 < d < 1.0:
        raise AccountingError(
            f"delta={delta!r} must be in (0, 1); a usual choice is 1/(2N) or N^-1.1 for a data set of N examples"
        )
    if dataset_size is not None and d >= 1.0 / dataset_size:
        raise AccountingError(
            f"delta={d:g} is >= 1/N = {1.0 / dataset_size:g} (N={dataset_size}): a mechanism that publishes one "
            "random example in full is (0, 1/N)-DP, so such a delta permits leaking whole examples; "
            f"use delta < 1/N, e.g. 1/(2N) = {1.0 / (2 * dataset_size):.3g} (the default)"
        )
    return d


def check_epsilon(epsilon: float, what: str = "target epsilon") -> float:
    eps = _as_float(epsilon, what)
    if math.isinf(eps) or eps <= 0.0:
        raise AccountingError(f"{what}={epsilon!r} must be a finite number > 0, e.g. 3 or 8")
    return eps


def _as_float(value: float, what: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise AccountingError(f"{what} must be a number, got {value!r}") from None
    if math.isnan(x):
        raise AccountingError(f"{what} is NaN: pass a number")
    return x


def check_runs(runs: Iterable[Run]) -> list[Run]:
    checked = []
    for q, sigma, steps in runs:
        checked.append(
            (check_sample_rate(q), check_noise_multiplier(sigma), check_steps(steps, allow_zero=True))
        )
    return [r for r in checked if r[2] > 0]


# ----------------------------------------------------------------------------------------------------------
# DpEvents: what dp_accounting is told the loop did.


def dp_event(runs: Iterable[Run], sampling: str = "poisson") -> dp_accounting.DpEvent:
    """The ``dp_accounting`` event of a sequence of runs of DP-SGD steps.

    Poisson: ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`` composed ``T`` times (add/remove-one).
    Shuffle: ``SampledWithoutReplacementDpEvent(n, m, GaussianDpEvent(sigma / 2))`` with ``m / n = q``
    (replace-one; the halved multiplier is the sensitivity ``2C`` of a replaced example).
    """
    check_sampling(sampling)
    events: list[dp_accounting.DpEvent] = []
    for q, sigma, steps in check_runs(runs):
        if sampling == "poisson":
            step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        else:
            ratio = Fraction(q).limit_denominator(10**12)
            step = dp_accounting.SampledWithoutReplacementDpEvent(
                ratio.denominator, ratio.numerator, dp_accounting.GaussianDpEvent(sigma / 2.0)
            )
        events.append(dp_accounting.SelfComposedDpEvent(step, steps))
    return dp_accounting.ComposedDpEvent(events)


# ----------------------------------------------------------------------------------------------------------
# The three accountants on a list of runs.


def rdp_epsilon(runs: Iterable[Run], delta: float, sampling: str = "poisson") -> float:
    """Epsilon from ``dp_accounting.rdp.RdpAccountant`` (default orders 1.1 ... 1024)."""
    runs = check_runs(runs)
    if not runs:
        return 0.0
    accountant = RdpAccountant(neighboring_relation=_NEIGHBOURING_RELATION[check_sampling(sampling)])
    with _quiet_order_warnings():
        accountant.compose(dp_event(runs, sampling))
    return _finite_or_inf(accountant.get_epsilon(delta))


class _DropOrderWarnings(logging.Filter):
    """dp_accounting logs a warning when the series for a fractional RDP order does not converge (small sigma
    and order near 1); it then leaves that order out, and the epsilon stays a valid bound. Not the user's
    problem, so not printed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


@contextlib.contextmanager
def _quiet_order_warnings() -> Iterator[None]:
    logger = logging.getLogger("absl")
    log_filter = _DropOrderWarnings()
    logger.addFilter(log_filter)
    try:
        yield
    finally:
        logger.removeFilter(log_filter)


def pld_epsilon(
    runs: Iterable[Run],
    delta: float,
    sampling: str = "poisson",
    *,
    discretization: float = DEFAULT_PLD_DISCRETIZATION,
) -> float:
    """Epsilon from ``dp_accounting.pld.PLDAccountant`` (privacy loss distributions, pessimistic estimate).

    Shuffle sampling is given to it as the Poisson-subsampled Gaussian at ``sigma / 2`` with add/remove
    neighbours, the dominating pair of sampling without replacement under replace-one (``PLDAccountant`` has
    no event for sampling without replacement). Identical runs, in any order, are merged first: composition is
    commutative, and each distinct (q, sigma) costs one FFT composition.

    The grid is ``discretization`` wide, or ``1e-4 * epsilon_RDP`` when that is wider, which keeps very large
    epsilons (tiny sigma) from needing millions of grid points; the relative error stays ~1e-4.

    PLD works in double-precision FFTs and truncates tails of mass ~1e-15, so it cannot resolve a delta below
    ``PLD_MIN_DELTA`` (1e-12): that is an :class:`AccountingError` (use RDP there).
    """
    runs = _merge_runs(check_runs(runs))
    check_sampling(sampling)
    if delta < PLD_MIN_DELTA:
        raise AccountingError(
            f"the PLD accountant cannot resolve delta={delta:g} < {PLD_MIN_DELTA:g} (its FFTs work in double "
            "precision and drop tails of mass ~1e-15): use the rdp accountant for so small a delta"
        )
    discretization = _as_float(discretization, "PLD discretization")
    if not 0.0 < discretization <= 1.0:
        raise AccountingError(f"PLD discretization={discretization!r} must be in (0, 1], e.g. 1e-4 (default)")
    if not runs:
        return 0.0
    eps_rdp = rdp_epsilon(runs, delta, sampling)
    if math.isinf(eps_rdp):
        return math.inf
    accountant = PLDAccountant(
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
        value_discretization_interval=max(discretization, 1e-4 * eps_rdp),
    )
    for q, sigma, steps in runs:
        noise = sigma if sampling == "poisson" else sigma / 2.0
        accountant.compose(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(noise)), steps
        )
    return _finite_or_inf(accountant.get_epsilon(delta))


def gdp_mu(runs: Iterable[Run], sampling: str = "poisson") -> float:
    """The mu of mu-GDP by the central limit theorem: ``mu^2 = sum_t q_t^2 (exp(1/sigma_t^2) - 1)``.

    Steps with ``q = 1`` are exactly ``1/sigma``-GDP and compose exactly (``mu^2`` adds ``T / sigma^2``), so
    full-batch training is computed exactly rather than by the CLT. Shuffle sampling uses ``sigma / 2``.
    """
    check_sampling(sampling)
    mu_squared = 0.0
    for q, sigma, steps in check_runs(runs):
        s = sigma if sampling == "poisson" else sigma / 2.0
        if q == 1.0:
            mu_squared += steps / s**2
            continue
        x = 1.0 / s**2
        if x > 700.0:  # exp overflows: mu is astronomically large
            return math.inf
        mu_squared += steps * q * q * math.expm1(x)
    return math.sqrt(mu_squared)


def gdp_delta(epsilon: float, mu: float) -> float:
    """``delta(eps) = Phi(-eps/mu + mu/2) - exp(eps) Phi(-eps/mu - mu/2)`` for mu-GDP (Dong, Roth, Su 2019)."""
    log_delta = _gdp_log_delta(epsilon, mu)
    return math.exp(log_delta) if log_delta > -math.inf else 0.0


def _gdp_log_delta(epsilon: float, mu: float) -> float:
    log_a = special.log_ndtr(-epsilon / mu + mu / 2.0)
    log_b = epsilon + special.log_ndtr(-epsilon / mu - mu / 2.0)
    if log_b >= log_a:
        return -math.inf
    return float(log_a + math.log1p(-math.exp(log_b - log_a)))


def gdp_epsilon_from_mu(mu: float, delta: float) -> float:
    """The smallest epsilon with ``delta(eps; mu) <= delta`` (a root of the mu-GDP duality, by Brent's method)."""
    if mu == 0.0:
        return 0.0
    if math.isinf(mu):
        return math.inf
    target = math.log(delta)

    def gap(eps: float) -> float:
        return _gdp_log_delta(eps, mu) - target

    if gap(0.0) <= 0.0:
        return 0.0
    hi = mu * mu / 2.0 + mu * math.sqrt(2.0 * -target) + 1.0
    while gap(hi) > 0.0:
        hi *= 2.0
    return float(optimize.brentq(gap, 0.0, hi, xtol=1e-12, rtol=1e-12))


def gdp_epsilon(runs: Iterable[Run], delta: float, sampling: str = "poisson") -> float:
    """Epsilon of the CLT's mu-GDP at delta. An approximation known to underestimate (not a guarantee)."""
    return gdp_epsilon_from_mu(gdp_mu(runs, sampling), delta)


def epsilon_for_runs(
    runs: Iterable[Run],
    delta: float,
    accountant: str = "rdp",
    sampling: str = "poisson",
    *,
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
) -> float:
    """Epsilon at ``delta`` of the composition of ``runs`` under one accountant."""
    check_accountant(accountant)
    check_sampling(sampling)
    delta = check_delta(delta)
    runs = _merge_runs(check_runs(runs))  # composition is commutative: one term per distinct (q, sigma)
    if accountant == "rdp":
        return rdp_epsilon(runs, delta, sampling)
    if accountant == "pld":
        return pld_epsilon(runs, delta, sampling, discretization=pld_discretization)
    return gdp_epsilon(runs, delta, sampling)


def compute_epsilon(
    sample_rate: float,
    noise_multiplier: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
    sampling: str = "poisson",
    *,
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
) -> float:
    """Epsilon at ``delta`` after ``steps`` DP-SGD steps with sample rate ``q`` and noise multiplier ``sigma``.

    May be ``math.inf`` (no finite guarantee, e.g. for a tiny sigma); never NaN. Raises
    :class:`~privtune.errors.AccountingError` for bad input (q outside (0, 1], sigma <= 0, steps < 1, ...).
    """
    run = (check_sample_rate(sample_rate), check_noise_multiplier(noise_multiplier), check_steps(steps))
    return epsilon_for_runs(
        [run], delta, accountant=accountant, sampling=sampling, pld_discretization=pld_discretization
    )


def epsilons_for_runs(
    runs: Iterable[Run],
    delta: float,
    sampling: str = "poisson",
    *,
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
) -> dict[str, float | None]:
    """Epsilon under every accountant, ``{"rdp": ..., "pld": ..., "gdp": ...}``.

    ``"pld"`` is ``None`` when delta is below ``PLD_MIN_DELTA`` (the PLD cannot resolve it); values may be
    ``math.inf``, never NaN.
    """
    runs = check_runs(runs)
    delta = check_delta(delta)
    result: dict[str, float | None] = {}
    for name in ACCOUNTANTS:
        if name == "pld" and delta < PLD_MIN_DELTA:
            result[name] = None
        else:
            result[name] = epsilon_for_runs(
                runs, delta, name, sampling, pld_discretization=pld_discretization
            )
    return result


def compute_epsilons(
    sample_rate: float,
    noise_multiplier: float,
    steps: int,
    delta: float,
    sampling: str = "poisson",
    *,
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
) -> dict[str, float | None]:
    """Epsilon under every accountant, ``{"rdp": ..., "pld": ..., "gdp": ...}`` (see :func:`epsilons_for_runs`)."""
    run = (check_sample_rate(sample_rate), check_noise_multiplier(noise_multiplier), check_steps(steps))
    return epsilons_for_runs([run], delta, sampling, pld_discretization=pld_discretization)


def epsilon_notes(epsilons: dict[str, float | None], delta: float) -> list[str]:
    """Sentences explaining the ``null`` entries of a JSON report."""
    notes = []
    for name, value in epsilons.items():
        if value is None:
            notes.append(
                f"{name}: not computed, delta={delta:g} is below what PLD resolves ({PLD_MIN_DELTA:g})"
            )
        elif math.isinf(value):
            notes.append(f"{name}: infinite epsilon (written as null): no finite guarantee at this noise")
    return notes


def json_epsilons(epsilons: dict[str, float | None]) -> dict[str, float | None]:
    """JSON has no infinity: infinite (and not computed) epsilons are written as null."""
    return {k: (None if v is None or math.isinf(v) else v) for k, v in epsilons.items()}


def _merge_runs(runs: list[Run]) -> list[Run]:
    merged: dict[tuple[float, float], int] = {}
    for q, sigma, steps in runs:
        merged[(q, sigma)] = merged.get((q, sigma), 0) + steps
    return [(q, sigma, steps) for (q, sigma), steps in merged.items()]


def _finite_or_inf(value: float) -> float:
    value = float(value)
    if math.isnan(value):  # never hand a NaN to a caller; NaN only arises from overflowing inputs
        return math.inf
    return value
