"""The Gaussian mechanism's noise: ``N(0, sigma^2 C^2)`` per coordinate, drawn once per logical batch."""

from __future__ import annotations

import torch
from torch import Tensor

# Drawing a large tensor in cache-sized chunks is ~2-3x faster on CPU than one ``normal_`` over it (one pass
# instead of a write pass then a transform pass over memory). A multiple of 16 keeps PyTorch's vectorised
# sampler on every chunk, so the values equal those of a single ``normal_`` call except for a tail < 16.
_NOISE_CHUNK = 1 << 16


def gaussian_(tensor: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` in place with i.i.d. ``N(0, std^2)`` entries (zeros when ``std == 0``).

    The engine draws the noise straight into the buffer that then accumulates the clipped sums, so the
    noise costs one pass over the parameters and no extra memory. ``generator`` makes runs reproducible
    (tests, exact resumption); PyTorch's generator is not cryptographically secure, so seed it from a
    secret (``secrets.randbits``), never from a public configuration value, when the model is released.
    """
    if std == 0:
        return tensor.zero_()
    if not tensor.is_contiguous() or tensor.numel() <= _NOISE_CHUNK:
        return tensor.normal_(0.0, std, generator=generator)
    for chunk in tensor.view(-1).split(_NOISE_CHUNK):
        chunk.normal_(0.0, std, generator=generator)
    return tensor
