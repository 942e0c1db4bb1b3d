"""The Gaussian mechanism's noise: right distribution, reproducible, independent of the thread count."""

from __future__ import annotations

import math

import pytest
import torch

from privtune.noise import NOISE_PIECE, GaussianNoise


@pytest.mark.parametrize("numel", [1000, 3 * NOISE_PIECE + 17])
def test_noise_has_the_requested_distribution(numel):
    std = 2.5
    with GaussianNoise(torch.Generator().manual_seed(0)) as noise:
        values = noise.fill_(torch.empty(numel, dtype=torch.float64), std)
    n = values.numel()
    # Sample mean and variance within 5 standard errors; kurtosis of a Gaussian is 3.
    assert abs(float(values.mean())) < 5 * std / math.sqrt(n)
    assert abs(float(values.var()) / std**2 - 1) < 5 * math.sqrt(2 / n)
    kurtosis = float(((values / values.std()) ** 4).mean())
    assert abs(kurtosis - 3) < 5 * math.sqrt(24 / n)


def test_pieces_are_independent():
    # Each piece has its own seed: adjacent pieces must not repeat or correlate.
    with GaussianNoise(torch.Generator().manual_seed(1)) as noise:
        values = noise.fill_(torch.empty(2 * NOISE_PIECE), 1.0)
    first, second = values[:NOISE_PIECE], values[NOISE_PIECE:]
    corr = float(torch.corrcoef(torch.stack([first, second]))[0, 1])
    assert abs(corr) < 5 / math.sqrt(NOISE_PIECE)


@pytest.mark.parametrize("numel", [100, 2 * NOISE_PIECE + 5])
def test_same_seed_same_noise_whatever_the_thread_count(numel):
    draws = []
    for threads in (1, 2, 3):
        with GaussianNoise(torch.Generator().manual_seed(7), threads=threads) as noise:
            draws.append(noise.fill_(torch.empty(numel), 1.0))
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])
    with GaussianNoise(torch.Generator().manual_seed(8)) as noise:
        assert not torch.equal(draws[0], noise.fill_(torch.empty(numel), 1.0))


def test_generator_state_resumes_the_stream():
    generator = torch.Generator().manual_seed(3)
    noise = GaussianNoise(generator)
    noise.fill_(torch.empty(NOISE_PIECE + 1), 1.0)
    state = generator.get_state()
    expected = noise.fill_(torch.empty(2 * NOISE_PIECE), 1.0)
    generator.set_state(state)
    assert torch.equal(noise.fill_(torch.empty(2 * NOISE_PIECE), 1.0), expected)
    noise.close()


def test_zero_std_and_non_contiguous():
    with GaussianNoise(torch.Generator().manual_seed(0)) as noise:
        assert torch.equal(noise.fill_(torch.ones(5), 0.0), torch.zeros(5))
        matrix = torch.zeros(64, 64)
        noise.fill_(matrix.t(), 1.0)
        assert float(matrix.std()) == pytest.approx(1.0, abs=0.1)
