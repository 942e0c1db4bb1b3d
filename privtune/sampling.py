"""Batch samplers whose randomness is exactly what the accountant assumes.

Both samplers yield, for each optimizer step, one *logical* batch split into *micro-batches* of at most
``micro_batch_size`` example indices: ``list[list[int]]``. Per-example gradients of all micro-batches of a step
are clipped and summed, then noised once; so memory is bounded by the micro-batch while privacy is determined by
the logical batch.

* :class:`PoissonSampler`: each example is in a step's batch independently with probability ``q``
  (accounted as the Poisson-subsampled Gaussian, add/remove-one neighbours). Batch sizes vary around
  ``q N`` (Binomial(N, q)); an empty logical batch is a valid step: it yields ``[]`` and the loop must still
  take a noise-only step and record it in the ledger.
* :class:`ShuffleSampler`: fixed-size batches of ``B`` distinct examples (accounted as sampling without
  replacement, replace-one neighbours).

Randomness is derived per step (or per epoch) from ``(seed, step)`` with numpy's ``SeedSequence``, so any step's
batch can be recomputed, and ``iterate(start_step=k)`` resumes a run exactly where it stopped. The seed must be
kept secret like the noise: whoever knows it knows which examples were in which batch. ``seed=None`` draws one
from the operating system (read it back from ``.seed`` to resume). numpy's generator is not a cryptographic one,
like those of the other DP-SGD libraries.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator
from typing import Any

import numpy as np

from privtune.accounting.accountants import check_dataset_size, check_sample_rate, check_steps
from privtune.errors import AccountingError

Batch = list[list[int]]

# Stream identifiers mixed into the seed, so the two samplers never share random numbers.
_POISSON_STREAM = 0x504F4953
_SHUFFLE_STREAM = 0x53485546


def _check_micro_batch_size(micro_batch_size: int) -> int:
    if (
        isinstance(micro_batch_size, bool)
        or not isinstance(micro_batch_size, (int, np.integer))
        or micro_batch_size < 1
    ):
        raise AccountingError(
            f"micro_batch_size={micro_batch_size!r} must be a whole number >= 1 (examples per forward/backward pass)"
        )
    return int(micro_batch_size)


def _check_seed(seed: int | None) -> int:
    if seed is None:
        return secrets.randbits(63)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise AccountingError(f"seed={seed!r} must be a whole number >= 0 (or None to draw a secret one)")
    return int(seed)


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(entropy=seed, spawn_key=(stream, index)))
    )


def split_micro_batches(indices: list[int], micro_batch_size: int) -> Batch:
    """``[indices[0:m], indices[m:2m], ...]``; ``[]`` for an empty logical batch."""
    return [indices[i : i + micro_batch_size] for i in range(0, len(indices), micro_batch_size)]


class _StepSampler:
    """Shared iteration interface: ``len()`` steps, ``iterate(start_step)``, ``batch(step)``."""

    sampling: str
    steps: int
    micro_batch_size: int

    def logical_batch(self, step: int) -> list[int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def batch(self, step: int) -> Batch:
        """The micro-batches of step ``step`` (0-based)."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step < self.steps:
            raise AccountingError(f"step={step!r} is outside 0..{self.steps - 1}")
        return split_micro_batches(self.logical_batch(int(step)), self.micro_batch_size)

    def iterate(self, start_step: int = 0) -> Iterator[Batch]:
        """Yield the batches of steps ``start_step, ..., steps - 1``: resume a run after ``start_step`` steps."""
        if (
            isinstance(start_step, bool)
            or not isinstance(start_step, (int, np.integer))
            or not (0 <= start_step <= self.steps)
        ):
            raise AccountingError(
                f"start_step={start_step!r} must be in 0..{self.steps} (steps already taken)"
            )
        for step in range(int(start_step), self.steps):
            yield self.batch(step)

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate(0)

    def __len__(self) -> int:
        return self.steps


class PoissonSampler(_StepSampler):
    """Poisson sampling: every example joins a step's batch independently with probability ``sample_rate``.

    The batch size is Binomial(N, q): mean ``q N``, variance ``q (1 - q) N``. Drawn as a Binomial size and then
    a uniformly random subset of that size, which is the same distribution.
    """

    sampling = "poisson"

    def __init__(
        self,
        dataset_size: int,
        sample_rate: float,
        steps: int,
        micro_batch_size: int,
        seed: int | None = 0,
    ) -> None:
        self.dataset_size = check_dataset_size(dataset_size)
        self.sample_rate = check_sample_rate(sample_rate)
        self.steps = check_steps(steps, allow_zero=True)
        self.micro_batch_size = _check_micro_batch_size(micro_batch_size)
        self.seed = _check_seed(seed)

    @property
    def expected_batch_size(self) -> float:
        """``q N``: normalise the noisy gradient sum by this, never by the realised batch size."""
        return self.sample_rate * self.dataset_size

    @property
    def batch_size_std(self) -> float:
        """``sqrt(q (1 - q) N)``."""
        return math.sqrt(self.sample_rate * (1.0 - self.sample_rate) * self.dataset_size)

    def logical_batch(self, step: int) -> list[int]:
        rng = _rng(self.seed, _POISSON_STREAM, step)
        size = int(rng.binomial(self.dataset_size, self.sample_rate))
        chosen = rng.choice(self.dataset_size, size=size, replace=False)
        return np.sort(chosen).tolist()

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampler": "poisson",
            "dataset_size": self.dataset_size,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "micro_batch_size": self.micro_batch_size,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        return (
            f"PoissonSampler(dataset_size={self.dataset_size}, sample_rate={self.sample_rate!r}, "
            f"steps={self.steps}, micro_batch_size={self.micro_batch_size})"
        )


class ShuffleSampler(_StepSampler):
    """Fixed-size batches of ``batch_size`` distinct examples (sampling without replacement).

    By default every step draws a fresh uniformly random subset of size B: exactly what the accountant's
    ``SampledWithoutReplacementDpEvent`` composed over steps assumes. With ``per_epoch=True`` it instead shuffles
    once per epoch and walks through the permutation (every example once per epoch, the last ``N mod B``
    dropped): the usual non-private data loader. That scheme is *not* what the accountant analyses; accounting it
    as independent sampling without replacement is a common heuristic, and shuffling is known to be able to leak
    more (Chua et al., "How Private are DP-SGD Implementations?", ICML 2024). Reports flag it.
    """

    sampling = "shuffle"

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        steps: int,
        micro_batch_size: int,
        seed: int | None = 0,
        *,
        per_epoch: bool = False,
    ) -> None:
        self.dataset_size = check_dataset_size(dataset_size)
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, (int, np.integer))
            or not (1 <= batch_size <= self.dataset_size)
        ):
            raise AccountingError(
                f"batch_size={batch_size!r} must be a whole number in 1..N={self.dataset_size} for fixed-size batches"
            )
        self.batch_size = int(batch_size)
        self.steps = check_steps(steps, allow_zero=True)
        self.micro_batch_size = _check_micro_batch_size(micro_batch_size)
        self.seed = _check_seed(seed)
        self.per_epoch = bool(per_epoch)
        self._permutation: tuple[int, np.ndarray] | None = None  # (epoch, permutation): one draw per epoch

    @property
    def sample_rate(self) -> float:
        return self.batch_size / self.dataset_size

    @property
    def expected_batch_size(self) -> float:
        return float(self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        """``N // B`` (per-epoch mode drops the last partial batch so that every batch has size B)."""
        return self.dataset_size // self.batch_size

    def logical_batch(self, step: int) -> list[int]:
        if not self.per_epoch:
            rng = _rng(self.seed, _SHUFFLE_STREAM, step)
            return np.sort(rng.choice(self.dataset_size, size=self.batch_size, replace=False)).tolist()
        epoch, position = divmod(step, self.steps_per_epoch)
        if self._permutation is None or self._permutation[0] != epoch:
            self._permutation = (
                epoch,
                _rng(self.seed, _SHUFFLE_STREAM, epoch).permutation(self.dataset_size),
            )
        permutation = self._permutation[1]
        start = position * self.batch_size
        return np.sort(permutation[start : start + self.batch_size]).tolist()

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampler": "shuffle",
            "dataset_size": self.dataset_size,
            "batch_size": self.batch_size,
            "steps": self.steps,
            "micro_batch_size": self.micro_batch_size,
            "seed": self.seed,
            "per_epoch": self.per_epoch,
        }

    def __repr__(self) -> str:
        return (
            f"ShuffleSampler(dataset_size={self.dataset_size}, batch_size={self.batch_size}, steps={self.steps}, "
            f"micro_batch_size={self.micro_batch_size}, per_epoch={self.per_epoch})"
        )


def sampler_from_dict(data: dict[str, Any]) -> PoissonSampler | ShuffleSampler:
    """Rebuild a sampler from its ``to_dict()``."""
    kind = data.get("sampler")
    if kind == "poisson":
        return PoissonSampler(
            data["dataset_size"], data["sample_rate"], data["steps"], data["micro_batch_size"], data["seed"]
        )
    if kind == "shuffle":
        return ShuffleSampler(
            data["dataset_size"],
            data["batch_size"],
            data["steps"],
            data["micro_batch_size"],
            data["seed"],
            per_epoch=data.get("per_epoch", False),
        )
    raise AccountingError(f"unknown sampler {kind!r} (expected 'poisson' or 'shuffle')")
