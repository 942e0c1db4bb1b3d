"""The privacy ledger: the steps training actually took, each with its (q, sigma).

Epsilon is computed from the ledger, never from the plan, so a sigma or q changed mid-training, early stopping
and resuming from a checkpoint are all accounted for exactly. Consecutive steps with the same (q, sigma) are
stored as one run ``[q, sigma, steps]``, so a ledger of a million identical steps is one line of JSON.

Save it in every checkpoint (``to_json`` / ``save``) and load it when resuming (``from_json`` / ``load``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from privtune.accounting.accountants import (
    ACCOUNTANT_LABELS,
    DEFAULT_PLD_DISCRETIZATION,
    NEIGHBOURING,
    check_dataset_size,
    check_delta,
    check_noise_multiplier,
    check_sample_rate,
    check_sampling,
    check_steps,
    epsilon_for_runs,
    epsilon_notes,
    epsilons_for_runs,
    json_epsilons,
)
from privtune.errors import AccountingError

LEDGER_FORMAT = "privtune.ledger/1"


@dataclass(frozen=True)
class LedgerRun:
    """``steps`` consecutive steps, each with sample rate ``sample_rate`` and noise ``noise_multiplier``."""

    sample_rate: float
    noise_multiplier: float
    steps: int


class Ledger:
    """Record of the noisy steps taken; epsilon under any accountant is computed from it.

    >>> ledger = Ledger(sampling="poisson")
    >>> for _ in range(100):
    ...     ledger.record(sample_rate=0.01, noise_multiplier=1.0)
    >>> ledger.steps, len(ledger.runs)
    (100, 1)
    """

    def __init__(self, sampling: str = "poisson", dataset_size: int | None = None) -> None:
        self._sampling = check_sampling(sampling)
        self._dataset_size = None if dataset_size is None else check_dataset_size(dataset_size)
        self._runs: list[list[Any]] = []  # [q, sigma, steps]

    # -- recording ---------------------------------------------------------------------------------------

    def record(self, *, sample_rate: float, noise_multiplier: float, steps: int = 1) -> None:
        """Record ``steps`` noisy steps taken with sample rate q and noise multiplier sigma.

        Call it once per optimizer step that released a noisy gradient (an empty Poisson batch included).
        """
        q = check_sample_rate(sample_rate)
        sigma = check_noise_multiplier(noise_multiplier)
        steps = check_steps(steps, allow_zero=True)
        if steps == 0:
            return
        if self._runs and self._runs[-1][0] == q and self._runs[-1][1] == sigma:
            self._runs[-1][2] += steps
        else:
            self._runs.append([q, sigma, steps])

    # -- reading -----------------------------------------------------------------------------------------

    @property
    def sampling(self) -> str:
        """How batches were drawn: "poisson" or "shuffle"."""
        return self._sampling

    @property
    def neighbouring(self) -> str:
        """The neighbouring relation the epsilons are stated for ("add_or_remove_one" or "replace_one")."""
        return NEIGHBOURING[self._sampling]

    @property
    def dataset_size(self) -> int | None:
        return self._dataset_size

    @property
    def runs(self) -> tuple[LedgerRun, ...]:
        return tuple(LedgerRun(q, sigma, steps) for q, sigma, steps in self._runs)

    @property
    def steps(self) -> int:
        """Number of noisy steps recorded."""
        return sum(run[2] for run in self._runs)

    def __len__(self) -> int:
        return self.steps

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ledger):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Ledger(sampling={self._sampling!r}, steps={self.steps}, runs={len(self._runs)})"

    def epsilon(
        self,
        delta: float,
        accountant: str = "rdp",
        *,
        pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
    ) -> float:
        """Epsilon at ``delta`` spent by the recorded steps (0.0 for an empty ledger; may be ``math.inf``)."""
        delta = check_delta(delta, self._dataset_size)
        return epsilon_for_runs(
            [tuple(run) for run in self._runs],
            delta,
            accountant=accountant,
            sampling=self._sampling,
            pld_discretization=pld_discretization,
        )

    def epsilons(
        self, delta: float, *, pld_discretization: float = DEFAULT_PLD_DISCRETIZATION
    ) -> dict[str, float | None]:
        """Epsilon under every accountant: ``{"rdp": ..., "pld": ..., "gdp": ...}`` (gdp is an approximation;
        pld is None for delta < 1e-12)."""
        delta = check_delta(delta, self._dataset_size)
        return epsilons_for_runs(
            [tuple(run) for run in self._runs], delta, self._sampling, pld_discretization=pld_discretization
        )

    def report(
        self, delta: float, *, pld_discretization: float = DEFAULT_PLD_DISCRETIZATION
    ) -> dict[str, Any]:
        """What was spent: steps, sampling, neighbouring relation and epsilon under every accountant (JSON-ready:
        an infinite or uncomputable epsilon is null, explained in ``notes``)."""
        epsilons = self.epsilons(delta, pld_discretization=pld_discretization)
        return {
            "steps": self.steps,
            "delta": delta,
            "sampling": self._sampling,
            "neighbouring": self.neighbouring,
            "epsilon": json_epsilons(epsilons),
            "accountants": dict(ACCOUNTANT_LABELS),
            "notes": epsilon_notes(epsilons, delta),
            "runs": [list(run) for run in self._runs],
        }

    # -- serialisation -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LEDGER_FORMAT,
            "sampling": self._sampling,
            "neighbouring": self.neighbouring,
            "dataset_size": self._dataset_size,
            "steps": self.steps,
            "runs": [list(run) for run in self._runs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ledger:
        if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
            raise AccountingError(
                f"not a privtune ledger (expected format {LEDGER_FORMAT!r}); pass what Ledger.to_dict() wrote"
            )
        ledger = cls(sampling=data.get("sampling", "poisson"), dataset_size=data.get("dataset_size"))
        if data.get("neighbouring", ledger.neighbouring) != ledger.neighbouring:
            raise AccountingError("corrupt ledger: its neighbouring relation does not match its sampling")
        try:
            for q, sigma, steps in data.get("runs", []):
                ledger.record(sample_rate=q, noise_multiplier=sigma, steps=steps)
        except (TypeError, ValueError):
            raise AccountingError(
                "corrupt ledger: each run must be [sample_rate, noise_multiplier, steps]"
            ) from None
        if "steps" in data and data["steps"] != ledger.steps:
            raise AccountingError(
                f"corrupt ledger: runs add up to {ledger.steps} steps, header says {data['steps']}"
            )
        return ledger

    def to_json(self) -> str:
        """JSON text; floats are written exactly (``repr``), so a round trip gives identical epsilons."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Ledger:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AccountingError(
                f"ledger is not valid JSON ({exc}); pass what Ledger.to_json() wrote"
            ) from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the ledger as JSON, atomically (write a temporary file, then rename)."""
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.to_json())
            f.write("\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Ledger:
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())

    def copy(self) -> Ledger:
        return Ledger.from_dict(self.to_dict())
