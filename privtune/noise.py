"""The Gaussian mechanism's noise: ``N(0, sigma^2 C^2)`` per coordinate, added once per logical batch."""

from __future__ import annotations

import torch
from torch import Tensor


def gaussian_like(reference: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """A tensor shaped like ``reference`` with i.i.d. ``N(0, std^2)`` entries.

    ``generator`` makes runs reproducible (tests, resumption). PyTorch's generator is not a
    cryptographically secure RNG; for deployments where floating-point/RNG attacks matter, seed it from
    ``os.urandom`` (the default generator is seeded non-deterministically by PyTorch).
    """
    noise = torch.empty_like(reference, memory_format=torch.contiguous_format)
    if std == 0:
        return noise.zero_()
    return noise.normal_(0.0, std, generator=generator)
