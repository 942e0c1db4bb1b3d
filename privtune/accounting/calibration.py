"""Calibration: the smallest noise multiplier that meets a target (epsilon, delta).

Epsilon decreases as the noise multiplier sigma grows, so calibration brackets the root of
``epsilon(sigma) - target`` and solves it with Brent's method on ``log sigma``. The answer is always on the safe
side: ``epsilon(returned sigma) <= target`` is checked before returning.

Cost (measured on a shared 2-core machine; see docs/accounting.md): RDP 0.4-0.8 s of CPU time (12-13 evaluations
of ~0.06 s). PLD reuses the RDP answer as its upper bracket (PLD is tighter than RDP, so the RDP sigma always
meets the target under PLD) and then evaluates the PLD 9-10 times: 2-3 s of CPU time at the default grid of 1e-4
(each evaluation 0.2-0.3 s for hundreds to a few thousand steps), somewhat less at 1e-3.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from scipy import optimize

from privtune.accounting.accountants import (
    DEFAULT_PLD_DISCRETIZATION,
    check_accountant,
    check_delta,
    check_epsilon,
    check_sample_rate,
    check_sampling,
    check_steps,
    compute_epsilon,
)
from privtune.errors import AccountingError

#: Calibration searches noise multipliers in [MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER].
MIN_NOISE_MULTIPLIER = 0.05
MAX_NOISE_MULTIPLIER = 1000.0
#: Relative precision of a calibrated sigma.
DEFAULT_RTOL = 1e-4


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    sampling: str = "poisson",
    *,
    rtol: float = DEFAULT_RTOL,
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
) -> float:
    """The smallest noise multiplier sigma (to relative precision ``rtol``, rounded up) with
    ``epsilon(q, sigma, T, delta) <= target_epsilon`` under ``accountant`` ("rdp" or "pld").

    ``steps`` must be the number of noisy steps the loop will take (see
    :func:`privtune.plan.count_steps`). GDP-CLT is refused: it underestimates epsilon, so noise calibrated
    with it would not meet the target.

    Raises :class:`~privtune.errors.AccountingError` when no sigma in
    [``MIN_NOISE_MULTIPLIER``, ``MAX_NOISE_MULTIPLIER``] reaches the target (too small a target for the
    number of steps and sample rate) or on bad input.
    """
    target = check_epsilon(target_epsilon)
    delta = check_delta(delta)
    q = check_sample_rate(sample_rate)
    steps = check_steps(steps)
    check_sampling(sampling)
    if accountant == "gdp":
        raise AccountingError(
            "refusing to calibrate noise with the GDP-CLT accountant: it underestimates epsilon, so the noise "
            "would not meet the target; use --accountant rdp or pld (and read GDP-CLT as a comparison only)"
        )
    check_accountant(accountant, ("rdp", "pld"))
    if not 0.0 < rtol < 0.1:
        raise AccountingError(f"rtol={rtol!r} must be in (0, 0.1), e.g. 1e-4")

    def epsilon(sigma: float, name: str = accountant) -> float:
        return compute_epsilon(q, sigma, steps, delta, name, sampling, pld_discretization=pld_discretization)

    setting = f"{steps} steps at sample rate {q:g} and delta {delta:g}"
    if sampling == "poisson":
        sigma_rdp = _solve(lambda s: epsilon(s, "rdp"), target, rtol, guess=1.0, factor=4.0, setting=setting)
        if accountant == "rdp":
            return sigma_rdp
        # PLD is tighter than RDP: the RDP answer is a close upper bracket (typically 5-15% above the PLD one).
        return _solve(epsilon, target, rtol, guess=sigma_rdp, factor=1.25, setting=setting)
    # Shuffle: PLD is exactly the Poisson PLD at sigma / 2, and the (slow, ~0.1 s per evaluation) RDP bound for
    # sampling without replacement needs a little more noise than that; twice the Poisson RDP answer is a
    # close guess for both.
    guess = 2.0 * calibrate_noise(target, delta, q, steps, "rdp", "poisson", rtol=rtol)
    return _solve(epsilon, target, rtol, guess=guess, factor=1.25, setting=setting)


def _solve(
    epsilon: Callable[[float], float],
    target: float,
    rtol: float,
    *,
    guess: float,
    factor: float,
    setting: str,
) -> float:
    """Smallest sigma with epsilon(sigma) <= target, to relative precision rtol, rounded up."""
    hi = min(max(guess, MIN_NOISE_MULTIPLIER), MAX_NOISE_MULTIPLIER)
    eps_hi = epsilon(hi)
    while eps_hi > target:  # grow hi until it meets the target
        if hi >= MAX_NOISE_MULTIPLIER:
            raise AccountingError(
                f"no noise multiplier up to {MAX_NOISE_MULTIPLIER:g} reaches epsilon={target:g} in {setting} "
                f"(epsilon is still {eps_hi:.4g} there): take fewer steps (fewer epochs), a smaller sample rate "
                "(smaller batch or more data), a larger delta (below 1/N), or a larger target epsilon"
            )
        hi = min(hi * factor, MAX_NOISE_MULTIPLIER)
        eps_hi = epsilon(hi)
    lo = max(hi / factor, MIN_NOISE_MULTIPLIER)
    while epsilon(lo) <= target:  # shrink lo until it misses the target
        if lo <= MIN_NOISE_MULTIPLIER:
            return MIN_NOISE_MULTIPLIER  # every sigma >= this meets the target; smaller ones are of no use
        hi, lo = lo, max(lo / factor, MIN_NOISE_MULTIPLIER)

    def gap(log_sigma: float) -> float:
        return (min(epsilon(math.exp(log_sigma)), 1e300) - target) / target

    log_root = optimize.brentq(gap, math.log(lo), math.log(hi), xtol=rtol / 4.0, rtol=1e-12)
    # Round up onto the safe side and verify (epsilon is monotone, so a few nudges suffice).
    sigma = math.exp(log_root)
    for _ in range(4):
        sigma *= 1.0 + rtol / 2.0
        if sigma >= hi:
            break
        if epsilon(sigma) <= target:
            return sigma
    return hi
