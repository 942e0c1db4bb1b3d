"""What a clipping rule receives and returns.

A rule is a function ``rule(call: ModuleCall) -> dict[str, PerExampleGrad]``: given one call of a module
(its inputs, its outputs and the gradients of the summed loss with respect to those outputs), it returns
the per-example gradient of each of the module's own trainable parameters, keyed by the parameter's name
in ``module._parameters``. Parameters with ``requires_grad=False`` are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from privtune.errors import PrivacyError
from privtune.grads import PerExampleGrad


@dataclass
class ModuleCall:
    """One recorded call ``outputs = module(*args, **kwargs)`` and the gradients of the loss sum."""

    module: nn.Module
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    # The outputs' values where the tensor still exists, else None: the engine keeps no output alive (autograd
    # frees those it does not need, e.g. logits once the loss has copied them). Rules should not need them.
    outputs: list[Tensor | None]
    # Gradient of the summed loss with respect to each output (zeros for an output the loss does not use).
    grad_outputs: list[Tensor]
    batch_size: int
    extra: dict[str, Any] = field(default_factory=dict)
    # Facts a rule established about this module on an earlier call (e.g. "this RMSNorm is linear in its
    # weight"), kept by the engine that owns the hooks for as long as it is attached; never global.
    memo: dict[Any, Any] = field(default_factory=dict)

    @property
    def input(self) -> Tensor:
        """The first tensor argument (the layer input ``a``)."""
        for value in (*self.args, *self.kwargs.values()):
            if isinstance(value, Tensor):
                return value
        raise PrivacyError(f"module {self.name!r} was called without a tensor input")

    @property
    def grad_output(self) -> Tensor:
        """Gradient of the summed loss with respect to the first output (the layer's ``g``)."""
        return self.grad_outputs[0]

    def batched(self, tensor: Tensor) -> Tensor:
        """``tensor`` with a leading batch dimension of B: a leading 1 (an input shared by the whole batch,
        e.g. position ids computed once as ``(1, T)``) is broadcast; anything else is refused because the
        per-example split would be unknown."""
        if tensor.dim() > 0 and tensor.shape[0] == self.batch_size:
            return tensor
        if tensor.dim() > 0 and tensor.shape[0] == 1:
            return tensor.expand(self.batch_size, *tensor.shape[1:])
        raise PrivacyError(
            f"module {self.name!r} ({type(self.module).__name__}) saw a tensor of shape {tuple(tensor.shape)} "
            f"in a batch of {self.batch_size} examples: privtune needs the batch dimension first to split "
            "gradients per example. Call the model with batch-first inputs (one row per example), or freeze "
            "this module's parameters."
        )

    def trainable(self, param_name: str) -> bool:
        param = self.module._parameters.get(param_name)
        return param is not None and param.requires_grad


Rule = Callable[[ModuleCall], "dict[str, PerExampleGrad]"]
