"""The generic rule: per-example gradients of any module's own parameters through ``torch.func``.

For example i, ``grad_theta L_i`` is the vector-Jacobian product of the module's forward at that example's
inputs with the recorded output gradient ``g_i``: ``vjp(theta -> module(x_i; theta), g_i)``, vectorised
over the batch with ``vmap``. Only the module's direct parameters are differentiated; its children have
their own rules. A module whose forward cannot be replayed one example at a time (random ops such as
dropout inside it, data-dependent control flow, in-place updates of buffers) is refused with a clear error.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from privtune.errors import UnsupportedModuleError
from privtune.grads import DenseGrad, PerExampleGrad
from privtune.rules.base import ModuleCall


def functional_rule(call: ModuleCall) -> dict[str, PerExampleGrad]:
    module = call.module
    names = [name for name in module._parameters if call.trainable(name)]
    if not names:
        return {}
    params = {name: module._parameters[name].detach() for name in names}
    batch = call.batch_size
    flat_inputs, spec = tree_flatten((call.args, call.kwargs))
    batched_positions = [
        pos
        for pos, value in enumerate(flat_inputs)
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch
    ]
    grad_outputs = call.grad_outputs

    def per_example(batched_values: list[Tensor], cotangents: list[Tensor]) -> dict[str, Tensor]:
        values = list(flat_inputs)
        for pos, value in zip(batched_positions, batched_values):
            values[pos] = value.unsqueeze(0)
        args, kwargs = tree_unflatten(values, spec)

        def forward(theta: dict[str, Tensor]) -> list[Tensor]:
            result = torch.func.functional_call(module, theta, tuple(args), kwargs, strict=False)
            return [t for t in tree_flatten(result)[0] if isinstance(t, Tensor) and t.is_floating_point()]

        _, vjp = torch.func.vjp(forward, params)
        return vjp([c.unsqueeze(0) for c in cotangents])[0]

    try:
        grads = torch.func.vmap(per_example, randomness="error")(
            [flat_inputs[pos] for pos in batched_positions], grad_outputs
        )
    except Exception as exc:  # vmap/functional_call errors come in many types; all mean the same to the user
        raise UnsupportedModuleError(
            f"cannot compute per-example gradients of {call.name!r} ({type(module).__name__}) with "
            f"torch.func: {type(exc).__name__}: {exc}. Freeze its parameters (requires_grad_(False)) or "
            "register a rule for its type (RuleRegistry.register)."
        ) from exc
    return {name: DenseGrad(grads[name]) for name in names}
