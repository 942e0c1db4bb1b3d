"""The Gaussian mechanism's noise: ``N(0, sigma^2 C^2)`` per coordinate, drawn once per logical batch.

Drawing the noise is a real share of a private step (one Gaussian per trainable parameter: 124M for GPT-2,
about 0.4 s on one CPU core), and PyTorch's CPU sampler runs on a single thread. :class:`GaussianNoise`
therefore splits a large tensor into fixed pieces, gives each piece its own generator seeded from the
caller's generator, and draws the pieces on a small thread pool (PyTorch releases the GIL while sampling).
The pieces and their seeds do not depend on the number of threads, so a seeded run draws the same noise on
any machine, and saving the caller's generator state is enough to resume a run exactly.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

# Elements per independently seeded piece (1 MiB of float32: large enough that seeding a generator is
# negligible, small enough to stay in cache and to split even a 768 x 768 matrix between two threads).
NOISE_PIECE = 1 << 18
_SEED_BOUND = 2**62


class GaussianNoise:
    """Fills tensors with i.i.d. ``N(0, std^2)`` entries, large ones on ``threads`` threads.

    ``generator`` makes runs reproducible (tests, exact resumption); PyTorch's generator is not
    cryptographically secure, so seed it from a secret (``secrets.randbits``), never from a public
    configuration value, when the model is released. The owner calls :meth:`close` (or uses ``with``) to
    stop the worker threads.
    """

    def __init__(self, generator: torch.Generator | None = None, threads: int | None = None) -> None:
        self.generator = generator
        self.threads = max(1, threads if threads is not None else torch.get_num_threads())
        self._pool: ThreadPoolExecutor | None = None

    def fill_(self, tensor: Tensor, std: float) -> Tensor:
        """Fill ``tensor`` in place with ``N(0, std^2)`` (zeros when ``std == 0``) and return it.

        A tensor of at most :data:`NOISE_PIECE` elements is drawn from ``generator`` directly; a larger one
        in pieces of that size, piece ``j`` from a generator seeded with the ``j``-th of a row of seeds drawn
        from ``generator``. The engine draws straight into the buffer that then accumulates the clipped sums,
        so the noise costs one pass over the parameters and no extra memory.
        """
        if std == 0:
            return tensor.zero_()
        if tensor.device.type != "cpu" or not tensor.is_contiguous() or tensor.numel() <= NOISE_PIECE:
            return tensor.normal_(0.0, std, generator=self.generator)
        pieces = tensor.view(-1).split(NOISE_PIECE)
        seeds = torch.randint(_SEED_BOUND, (len(pieces),), generator=self.generator).tolist()
        if self.threads == 1:
            for piece, seed in zip(pieces, seeds):
                _draw(piece, std, seed)
            return tensor
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="privtune-noise")
        for future in [self._pool.submit(_draw, piece, std, seed) for piece, seed in zip(pieces, seeds)]:
            future.result()
        return tensor

    def close(self) -> None:
        """Stop the worker threads (a later :meth:`fill_` starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> GaussianNoise:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _draw(piece: Tensor, std: float, seed: int) -> None:
    piece.normal_(0.0, std, generator=torch.Generator(device=piece.device).manual_seed(seed))
