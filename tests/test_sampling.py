"""Poisson and shuffle samplers: distribution, micro-batching, reproducibility and resuming."""

from __future__ import annotations

import numpy as np
import pytest

from privtune.errors import AccountingError
from privtune.sampling import PoissonSampler, ShuffleSampler, sampler_from_dict, split_micro_batches


def _flat(batch):
    return [i for micro in batch for i in micro]


def test_poisson_batch_size_mean_and_variance():
    n, q, steps = 2000, 0.05, 2000
    sampler = PoissonSampler(n, q, steps, micro_batch_size=16, seed=1)
    sizes = np.array([len(_flat(batch)) for batch in sampler])
    mean, var = n * q, n * q * (1 - q)  # Binomial(N, q): 100, 95
    # 5-sigma bands for the sample mean and the sample variance of 2000 draws (deterministic seed).
    assert abs(sizes.mean() - mean) < 5 * np.sqrt(var / steps)
    assert abs(sizes.var(ddof=1) - var) < 5 * var * np.sqrt(2 / (steps - 1))
    assert sampler.expected_batch_size == pytest.approx(mean)
    assert sampler.batch_size_std == pytest.approx(np.sqrt(var))
    assert sizes.min() < mean < sizes.max()  # batch sizes really vary


def test_poisson_includes_every_example_with_probability_q():
    n, q, steps = 200, 0.1, 1000
    counts = np.zeros(n)
    for batch in PoissonSampler(n, q, steps, micro_batch_size=8, seed=2):
        counts[_flat(batch)] += 1
    # Each count is Binomial(1000, 0.1): mean 100, sd 9.5; and the counts are independent across examples.
    assert abs(counts.mean() - steps * q) < 5 * np.sqrt(steps * q * (1 - q) / n)
    assert counts.min() > 100 - 6 * 9.5 and counts.max() < 100 + 6 * 9.5


def test_micro_batches_partition_the_logical_batch():
    sampler = PoissonSampler(500, 0.2, 20, micro_batch_size=7, seed=3)
    for step, batch in enumerate(sampler):
        flat = _flat(batch)
        assert flat == sampler.logical_batch(step)
        assert flat == sorted(set(flat)) and all(0 <= i < 500 for i in flat)
        assert all(1 <= len(micro) <= 7 for micro in batch)
        assert all(len(micro) == 7 for micro in batch[:-1])
        assert all(isinstance(i, int) for i in flat)


def test_empty_logical_batch_is_a_step():
    sampler = PoissonSampler(10, 0.01, 200, micro_batch_size=4, seed=4)  # P(empty) = 0.99^10 = 0.90
    batches = list(sampler)
    assert len(batches) == 200
    assert sum(batch == [] for batch in batches) > 150
    assert split_micro_batches([], 4) == []


def test_same_seed_same_batches_other_seed_other_batches():
    a = list(PoissonSampler(1000, 0.03, 30, 16, seed=7))
    b = list(PoissonSampler(1000, 0.03, 30, 16, seed=7))
    c = list(PoissonSampler(1000, 0.03, 30, 16, seed=8))
    assert a == b
    assert a != c


def test_resume_from_a_step_reproduces_the_rest():
    sampler = PoissonSampler(1000, 0.03, 50, 16, seed=9)
    full = list(sampler)
    assert len(sampler) == 50
    assert list(sampler.iterate(start_step=20)) == full[20:]
    assert list(sampler.iterate(start_step=50)) == []
    assert sampler.batch(33) == full[33]
    # A fresh sampler built from the saved description resumes identically.
    assert list(sampler_from_dict(sampler.to_dict()).iterate(start_step=45)) == full[45:]


def test_secret_seed_is_drawn_and_kept():
    sampler = PoissonSampler(100, 0.1, 5, 4, seed=None)
    assert isinstance(sampler.seed, int)
    assert list(PoissonSampler(100, 0.1, 5, 4, seed=sampler.seed)) == list(sampler)


def test_shuffle_fixed_size_fresh_subsets():
    sampler = ShuffleSampler(103, 10, 40, micro_batch_size=4, seed=5)
    assert sampler.sample_rate == pytest.approx(10 / 103)
    assert sampler.expected_batch_size == 10
    batches = [_flat(b) for b in sampler]
    assert all(len(b) == 10 and len(set(b)) == 10 for b in batches)
    assert len({tuple(b) for b in batches}) > 35  # independent subsets, not a repeating cycle


def test_shuffle_per_epoch_visits_every_example_once_per_epoch():
    sampler = ShuffleSampler(103, 10, 30, micro_batch_size=4, seed=6, per_epoch=True)
    assert sampler.steps_per_epoch == 10
    batches = [_flat(b) for b in sampler]
    for epoch in range(3):
        seen = [i for b in batches[epoch * 10 : (epoch + 1) * 10] for i in b]
        assert len(seen) == len(set(seen)) == 100  # 3 examples dropped per epoch
    assert batches[:10] != batches[10:20]
    assert list(sampler.iterate(start_step=15)) == list(
        ShuffleSampler(103, 10, 30, 4, seed=6, per_epoch=True).iterate(start_step=15)
    )


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: PoissonSampler(0, 0.1, 10, 4), "N=0"),
        (lambda: PoissonSampler(100, 0.0, 10, 4), "outside"),
        (lambda: PoissonSampler(100, 1.5, 10, 4), "outside"),
        (lambda: PoissonSampler(100, 0.1, -1, 4), "at least 1"),
        (lambda: PoissonSampler(100, 0.1, 10, 0), "micro_batch_size"),
        (lambda: PoissonSampler(100, 0.1, 10, 4, seed=-3), "seed"),
        (lambda: ShuffleSampler(100, 101, 10, 4), "batch_size"),
        (lambda: ShuffleSampler(100, 0, 10, 4), "batch_size"),
        (lambda: list(PoissonSampler(100, 0.1, 10, 4).iterate(start_step=11)), "start_step"),
        (lambda: PoissonSampler(100, 0.1, 10, 4).batch(10), "outside"),
        (lambda: sampler_from_dict({"sampler": "bootstrap"}), "unknown sampler"),
    ],
)
def test_bad_sampler_input(factory, message):
    with pytest.raises(AccountingError, match=message):
        factory()
