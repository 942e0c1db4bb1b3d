"""Per-example gradients of linear layers: ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2).

For an input ``a_i`` (T x d) and output gradient ``g_i`` (T x p) of example i:
``grad_W L_i = g_i^T a_i`` (``nn.Linear``, weight p x d) or ``a_i^T g_i`` (``Conv1D``, weight d x p),
and ``grad_b L_i = sum_t g_{i,t}``. The weight gradient is kept factored (:class:`OuterGrad`) so its norm
can be taken by the ghost identity ``<a_i a_i^T, g_i g_i^T>`` when that is cheaper.
"""

from __future__ import annotations

from torch import Tensor

from privtune.grads import DenseGrad, OuterGrad, PerExampleGrad
from privtune.rules.base import ModuleCall


def _as_sequence(call: ModuleCall, tensor: Tensor) -> Tensor:
    """(B, *, k) -> (B, T, k): 2-D inputs are one-token sequences; extra middle dims are flattened."""
    tensor = call.batched(tensor)
    return tensor.reshape(call.batch_size, -1, tensor.shape[-1])


def linear_rule(call: ModuleCall) -> dict[str, PerExampleGrad]:
    """``nn.Linear``: ``W`` is (out, in), ``grad_W = g^T a``."""
    activations = _as_sequence(call, call.input)
    grads = _as_sequence(call, call.grad_output)
    out: dict[str, PerExampleGrad] = {}
    weight = call.module.weight
    if call.trainable("weight"):
        out["weight"] = OuterGrad(grads, activations, grads.shape[-1], weight.shape)
    if call.trainable("bias"):
        out["bias"] = DenseGrad(grads.sum(1))
    return out


def conv1d_transformers_rule(call: ModuleCall) -> dict[str, PerExampleGrad]:
    """transformers ``Conv1D``: ``y = a W + b`` with ``W`` (in, out), so ``grad_W = a^T g``."""
    activations = _as_sequence(call, call.input)
    grads = _as_sequence(call, call.grad_output)
    out: dict[str, PerExampleGrad] = {}
    if call.trainable("weight"):
        out["weight"] = OuterGrad(activations, grads, activations.shape[-1], call.module.weight.shape)
    if call.trainable("bias"):
        out["bias"] = DenseGrad(grads.sum(1))
    return out
