"""The Gaussian mechanism's noise: ``N(0, sigma^2 C^2)`` per coordinate, drawn once per logical batch."""

from __future__ import annotations

import torch
from torch import Tensor


def gaussian_(tensor: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` in place with i.i.d. ``N(0, std^2)`` entries (zeros when ``std == 0``).

    The engine draws the noise straight into the buffer that then accumulates the clipped sums, so the
    noise costs one pass over the parameters and no extra memory. ``generator`` makes runs reproducible
    (tests, exact resumption); PyTorch's generator is not cryptographically secure, so seed it from a
    secret (``secrets.randbits``), never from a public configuration value, when the model is released.
    """
    if std == 0:
        return tensor.zero_()
    return tensor.normal_(0.0, std, generator=generator)
