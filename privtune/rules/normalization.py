"""Per-example gradients of normalisation layers that act on each example separately.

* ``nn.LayerNorm``: ``y = w * xhat + b`` with ``xhat = (x - mean) / sqrt(var + eps)`` over the normalised
  dims, so ``grad_w L_i = sum_t g_{i,t} * xhat_{i,t}`` and ``grad_b L_i = sum_t g_{i,t}``.
* RMSNorm of any flavour (``torch.nn.RMSNorm``, Llama/Mistral/Qwen/T5 modules): recognised by structure,
  not by class name: a leaf module whose only parameter is a 1-D ``weight`` and whose output is
  ``weight * n(x)``. ``n(x)`` is obtained from the module itself with the weight set to ones (so its own
  dtype casts and epsilon are reproduced exactly); linearity in the weight is verified with a probe weight
  on the module's first call in each dtype (the engine remembers the result for as long as it is
  attached), and a module that fails the check is handed to the generic ``torch.func`` rule instead.

BatchNorm mixes examples within a batch and is refused by the engine (see ``privtune.rules.registry``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from privtune.grads import DenseGrad, PerExampleGrad
from privtune.rules.base import ModuleCall
from privtune.rules.functional import functional_rule


def _sum_to_param(call: ModuleCall, values: Tensor, ndim: int) -> Tensor:
    """Sum ``(B, ..., *param_shape)`` over everything between the batch and the parameter dims."""
    values = call.batched(values)
    lead = tuple(range(1, values.dim() - ndim))
    return values.sum(dim=lead) if lead else values


def layer_norm_rule(call: ModuleCall) -> dict[str, PerExampleGrad]:
    module: nn.LayerNorm = call.module  # type: ignore[assignment]
    x = call.input
    dims = tuple(range(x.dim() - len(module.normalized_shape), x.dim()))
    grads = call.grad_output
    out: dict[str, PerExampleGrad] = {}
    if call.trainable("weight"):
        # The module's own kernel without its affine part: the same xhat as its forward, one fused pass.
        xhat = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
        out["weight"] = DenseGrad(_sum_to_param(call, grads * xhat, len(dims)))
    if call.trainable("bias"):
        out["bias"] = DenseGrad(_sum_to_param(call, grads, len(dims)))
    return out


def looks_like_rms_norm(module: nn.Module) -> bool:
    """Structural test: a leaf module with exactly one parameter, a 1-D ``weight``."""
    params = dict(module.named_parameters(recurse=False))
    return (
        not any(True for _ in module.children())
        and set(params) == {"weight"}
        and params["weight"].dim() == 1
    )


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-4


def rms_norm_rule(call: ModuleCall) -> dict[str, PerExampleGrad]:
    """``y = w * n(x)``: ``grad_w L_i = sum_t g_{i,t} * n(x_{i,t})`` (``w`` of any shape: ``torch.nn.RMSNorm``
    may normalise over several trailing dims); verified, else ``torch.func``."""
    module = call.module
    if not call.trainable("weight"):
        return {}
    weight = module.weight
    x = call.input
    key = ("rms_norm_is_scale", x.dtype, weight.dtype, x.device)
    with torch.no_grad():
        normalised = torch.func.functional_call(module, {"weight": torch.ones_like(weight)}, (x,))
        is_scale = call.memo.get(key)
        if is_scale is None:
            # A fixed non-constant probe (no draw from the global RNG, which would perturb training).
            probe = torch.linspace(0.5, 1.5, weight.numel(), dtype=weight.dtype, device=weight.device)
            probe = probe.reshape(weight.shape)  # torch.nn.RMSNorm may normalise over several dims
            probed = torch.func.functional_call(module, {"weight": probe}, (x,))
            tol = _tolerance(normalised.dtype)
            is_scale = isinstance(normalised, Tensor) and torch.allclose(
                probed, probe * normalised, rtol=tol, atol=tol
            ) and torch.allclose(module(x), weight.detach() * normalised, rtol=tol, atol=tol)
            call.memo[key] = is_scale
    if not is_scale:
        return functional_rule(call)
    return {"weight": DenseGrad(_sum_to_param(call, call.grad_output * normalised, weight.dim()))}
