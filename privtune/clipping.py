"""Clipping rules: from per-example squared norms to per-example scaling factors ``c_i``.

The engine forms ``sum_i c_i g_i`` (per parameter group, the factor of that group). Every rule bounds the
L2 sensitivity of that sum to ``max_grad_norm`` (C), so the Gaussian noise is always ``N(0, sigma^2 C^2)``:

* ``"flat"`` (Abadi et al. 2016): ``c_i = min(1, C / ||g_i||)`` with ``||g_i||`` over all trainable
  parameters together.
* ``"per_layer"``: each trainable parameter tensor k (K in all) is clipped on its own to
  ``C_k = C / sqrt(K)``: ``c_{i,k} = min(1, C_k / ||g_{i,k}||)``. The clipped example gradient has norm at
  most ``sqrt(sum_k C_k^2) = C``: the same sensitivity as flat clipping.
* ``"automatic"`` (Bu et al. 2023, normalisation with stability constant gamma):
  ``c_i = C / (||g_i|| + gamma)``, so ``||c_i g_i|| < C``. ``gamma = 0.01`` by default, as in the paper.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from privtune.errors import PrivtuneError

ClippingRule = Literal["flat", "per_layer", "automatic"]
CLIPPING_RULES: tuple[str, ...] = ("flat", "per_layer", "automatic")


def validate(rule: str, max_grad_norm: float, gamma: float) -> None:
    if rule not in CLIPPING_RULES:
        raise PrivtuneError(f"unknown clipping rule {rule!r}; choose one of {', '.join(CLIPPING_RULES)}")
    if not (max_grad_norm > 0 and math.isfinite(max_grad_norm)):
        raise PrivtuneError(f"max_grad_norm must be a positive finite number, got {max_grad_norm}")
    if rule == "automatic" and not gamma > 0:
        raise PrivtuneError(f"automatic clipping needs gamma > 0, got {gamma}")


def clip_factors(
    rule: ClippingRule, max_grad_norm: float, sq_norms: list[Tensor], num_groups: int, gamma: float = 0.01
) -> list[Tensor]:
    """One ``(B,)`` factor per parameter group, in the order of ``sq_norms``.

    ``num_groups`` is K for ``"per_layer"``: the number of trainable parameter tensors of the model (fixed
    when the engine is built), not only those that received a gradient in this micro-batch.
    """
    if rule == "per_layer":
        threshold = max_grad_norm / math.sqrt(num_groups)
        return [(threshold / sq.sqrt()).clamp(max=1.0) for sq in sq_norms]
    norms = torch.stack(sq_norms).sum(0).sqrt()
    if rule == "flat":
        factor = (max_grad_norm / norms).clamp(max=1.0)  # a zero gradient gives inf -> 1
    else:
        factor = max_grad_norm / (norms + gamma)
    return [factor] * len(sq_norms)
