"""Per-example gradients in the form each layer family produces them, and the three things the engine
asks of them: per-example squared norms, inner products between two contributions to the same
parameter (tied weights), and the clipped sum ``sum_i c_i G_i``.

Two representations cover every built-in rule:

* :class:`DenseGrad` holds ``G_i`` itself, shape ``(B, *param_shape)``: cheap parameters
  (biases, normalisation scales) and the ``torch.func`` fallback.
* :class:`OuterGrad` holds ``G_i = sum_t u_{i,t} (x) v_{i,t}`` as the two factors ``U_i`` (T x p) and
  ``V_i`` (T x d) without forming the p x d product. Linear layers (``U = g``, the output gradient;
  ``V = a``, the input), convolutions (unfolded patches) and embeddings (``U`` one-hot, kept as token
  indices) all have this form. Its squared norm is either the ghost norm
  ``||G_i||^2 = <U_i U_i^T, V_i V_i^T>`` (cost ~ T^2 (p + d)) or the norm of the materialised
  ``U_i^T V_i`` (cost ~ T p d and B p d memory); :func:`choose_method` picks per layer and per call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

NormMethod = Literal["auto", "ghost", "per_example"]
NORM_METHODS: tuple[str, ...] = ("auto", "ghost", "per_example")


# Columns per chunk of a row-wise dot product: bounds the temporary that ``vecdot`` creates to B x 64K elements.
_DOT_CHUNK = 1 << 16


def rowwise_dot(a: Tensor, b: Tensor) -> Tensor:
    """``sum_k a[i, ...] b[i, ...]`` for every leading index i: shape ``(B,)``.

    Not ``einsum("bk,bk->b")``: PyTorch maps that onto a batched matrix product of 1 x k by k x 1 blocks,
    which is 10-20x slower on CPU than a fused multiply-and-sum (``vecdot``). Long rows are taken in chunks so
    the temporary stays small.
    """
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    width = a.shape[1]
    if width <= _DOT_CHUNK:
        return torch.linalg.vecdot(a, b)
    total = torch.linalg.vecdot(a[:, :_DOT_CHUNK], b[:, :_DOT_CHUNK])
    for start in range(_DOT_CHUNK, width, _DOT_CHUNK):
        total += torch.linalg.vecdot(a[:, start : start + _DOT_CHUNK], b[:, start : start + _DOT_CHUNK])
    return total


def choose_method(method: NormMethod, steps: int, left_size: int, right_size: int) -> str:
    """Resolve ``"auto"``: ghost when ``2 T^2 < p d`` (the Gram matrices are smaller than G_i), else
    materialise. Explicit choices pass through."""
    if method != "auto":
        return method
    return "ghost" if 2 * steps * steps < left_size * right_size else "per_example"


class GramCache:
    """Per-example Gram matrices ``X_i X_i^T`` of factors, computed once per backward and shared by every layer
    that reads the same tensor (Llama's q/k/v projections read one normalised hidden state; gate/up another).
    Keys are the tensor's memory and layout; the factors stay alive for the whole backward, so no key is
    reused by another tensor while the cache lives."""

    def __init__(self) -> None:
        self._grams: dict[tuple[object, ...], Tensor] = {}

    def self_gram(self, factor: Tensor) -> Tensor:
        key = (factor.data_ptr(), factor.storage_offset(), tuple(factor.shape), factor.stride(), factor.dtype)
        gram = self._grams.get(key)
        if gram is None:
            if factor.is_floating_point():
                gram = torch.bmm(factor, factor.transpose(1, 2))
            else:  # token indices: one-hot rows meet where the tokens are equal
                gram = factor.unsqueeze(2) == factor.unsqueeze(1)
            self._grams[key] = gram
        return gram


class PerExampleGrad(ABC):
    """One module call's contribution to one parameter's per-example gradients ``G_1..G_B``."""

    param_shape: torch.Size

    @property
    @abstractmethod
    def batch_size(self) -> int: ...

    @abstractmethod
    def sq_norms(self, method: NormMethod = "auto", cache: GramCache | None = None) -> Tensor:
        """``||G_i||_F^2`` for every example: shape ``(B,)``."""

    @abstractmethod
    def add_clipped_sum_(self, out: Tensor, coef: Tensor) -> Tensor:
        """``out += sum_i coef_i G_i`` in place (book-keeping: no second backward, no temporary of the
        parameter's size); ``out`` has the parameter's shape and is contiguous."""

    def clipped_sum(self, coef: Tensor) -> Tensor:
        """``sum_i coef_i G_i`` with the parameter's shape."""
        return self.add_clipped_sum_(torch.zeros(self.param_shape, dtype=coef.dtype, device=coef.device), coef)

    @abstractmethod
    def materialize(self) -> Tensor:
        """``G`` as a dense ``(B, *param_shape)`` tensor (used only where no factored formula applies)."""


@dataclass
class DenseGrad(PerExampleGrad):
    """Per-example gradients stored as they are: ``values[i] = G_i``."""

    values: Tensor

    def __post_init__(self) -> None:
        self.param_shape = self.values.shape[1:]

    @property
    def batch_size(self) -> int:
        return self.values.shape[0]

    def sq_norms(self, method: NormMethod = "auto", cache: GramCache | None = None) -> Tensor:
        return rowwise_dot(self.values, self.values)

    def add_clipped_sum_(self, out: Tensor, coef: Tensor) -> Tensor:
        flat = self.values.reshape(self.batch_size, -1)
        out.view(-1).addmv_(flat.t(), coef.to(self.values.dtype))
        return out

    def materialize(self) -> Tensor:
        return self.values


@dataclass
class OuterGrad(PerExampleGrad):
    """``G_i = sum_t left[i, t] (x) right[i, t]`` reshaped to ``param_shape``.

    ``left`` is ``(B, T, p)`` dense, or ``(B, T)`` integer indices of one-hot rows of width
    ``left_size`` (embeddings: never build the dense ``(B, V, d)`` tensor). ``right`` is ``(B, T, d)``.
    """

    left: Tensor
    right: Tensor
    left_size: int
    param_shape: torch.Size

    @property
    def left_is_index(self) -> bool:
        return not self.left.is_floating_point()

    @property
    def batch_size(self) -> int:
        return self.right.shape[0]

    @property
    def steps(self) -> int:
        return self.right.shape[1]

    @property
    def right_size(self) -> int:
        return self.right.shape[2]

    def _left_gram(self, other: OuterGrad) -> Tensor:
        """``(U_self U_other^T)[i, t, s]`` for every example: ``(B, T_self, T_other)``."""
        if self.left_is_index and other.left_is_index:
            return (self.left.unsqueeze(2) == other.left.unsqueeze(1)).to(self.right.dtype)
        if self.left_is_index:  # one-hot row x_t against dense u_s: u_s[x_t]
            return other._left_gram(self).transpose(1, 2)
        if other.left_is_index:
            idx = other.left.unsqueeze(1).expand(-1, self.steps, -1)
            return torch.gather(self.left, 2, idx)
        return torch.bmm(self.left, other.left.transpose(1, 2))

    def ghost_inner(self, other: OuterGrad) -> Tensor:
        """``<G_i, G'_i> = <U U'^T, V V'^T>`` per example, never forming G."""
        right_gram = torch.bmm(self.right, other.right.transpose(1, 2))
        return rowwise_dot(self._left_gram(other), right_gram)

    def ghost_sq_norms(self, cache: GramCache) -> Tensor:
        """``<U U^T, V V^T>`` with both Gram matrices from ``cache`` (shared across layers)."""
        left = cache.self_gram(self.left).to(self.right.dtype)
        return rowwise_dot(left, cache.self_gram(self.right))

    def sq_norms(self, method: NormMethod = "auto", cache: GramCache | None = None) -> Tensor:
        cache = GramCache() if cache is None else cache
        if self.left_is_index:
            # Ghost with an equality mask costs T^2 d; summing rows that share a token costs T d.
            return self.ghost_sq_norms(cache) if method == "ghost" else self._index_sq_norms()
        if choose_method(method, self.steps, self.left_size, self.right_size) == "ghost":
            return self.ghost_sq_norms(cache)
        per_example = torch.bmm(self.left.transpose(1, 2), self.right)
        return rowwise_dot(per_example, per_example)

    def _index_sq_norms(self) -> Tensor:
        """Embedding norms by sparse materialisation: sum the rows of ``right`` that hit the same token
        within an example, then sum the squares. Touches only the rows that occur."""
        batch, steps = self.left.shape
        example = torch.arange(batch, device=self.left.device).unsqueeze(1).expand(batch, steps)
        keys = (example * self.left_size + self.left).reshape(-1)
        unique_keys, inverse = torch.unique(keys, return_inverse=True)
        rows = self.right.new_zeros(unique_keys.numel(), self.right_size)
        rows.index_add_(0, inverse, self.right.reshape(-1, self.right_size))
        out = self.right.new_zeros(batch)
        out.index_add_(0, torch.div(unique_keys, self.left_size, rounding_mode="floor"), rows.pow(2).sum(1))
        return out

    def add_clipped_sum_(self, out: Tensor, coef: Tensor) -> Tensor:
        """Index factor: rows ``x_{i,t}`` of ``out`` += ``c_i g_{i,t}``. Dense: ``out += (c U)^T V``, one
        matrix product (the scale goes on the narrower factor)."""
        coef = coef.to(self.right.dtype)
        matrix = out.view(self.left_size, self.right_size)
        if self.left_is_index:
            weighted = (self.right * coef.view(-1, 1, 1)).reshape(-1, self.right_size)
            matrix.index_add_(0, self.left.reshape(-1), weighted)
            return out
        left = self.left.reshape(-1, self.left_size)
        right = self.right.reshape(-1, self.right_size)
        scale = coef.repeat_interleave(self.steps).unsqueeze(1)
        if self.left_size <= self.right_size:
            left = left * scale
        else:
            right = right * scale
        matrix.addmm_(left.t(), right)
        return out

    def materialize(self) -> Tensor:
        if self.left_is_index:
            out = self.right.new_zeros(self.batch_size, self.left_size, self.right_size)
            idx = self.left.unsqueeze(2).expand(-1, -1, self.right_size)
            out.scatter_add_(1, idx, self.right)
        else:
            out = torch.bmm(self.left.transpose(1, 2), self.right)
        return out.reshape(self.batch_size, *self.param_shape)


def inner(a: PerExampleGrad, b: PerExampleGrad) -> Tensor:
    """``<G_i^a, G_i^b>`` per example, for two contributions to the same (tied) parameter."""
    if (
        isinstance(a, OuterGrad)
        and isinstance(b, OuterGrad)
        and a.left_size == b.left_size
        and a.right_size == b.right_size
    ):
        return a.ghost_inner(b)
    return rowwise_dot(a.materialize(), b.materialize())


def total_sq_norms(
    contributions: list[PerExampleGrad], method: NormMethod = "auto", cache: GramCache | None = None
) -> Tensor:
    """``||sum_m G_i^m||^2 = sum_m ||G_i^m||^2 + 2 sum_{m<n} <G_i^m, G_i^n>``: the exact norm of a
    parameter's per-example gradient when several module calls use it (tied weights, shared layers)."""
    total = contributions[0].sq_norms(method, cache)
    for m, first in enumerate(contributions):
        if m:
            total = total + first.sq_norms(method, cache)
        for second in contributions[m + 1 :]:
            total = total + 2 * inner(first, second)
    return total
