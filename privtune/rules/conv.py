"""Per-example gradients of ``nn.Conv1d`` and ``nn.Conv2d`` (groups=1).

Unfolding the (padded) input into patches turns a convolution into a linear layer applied at L
positions: with patches ``u_i`` (L x C k) and output gradients ``g_i`` (L x out),
``grad_W L_i = g_i^T u_i`` reshaped to (out, C, *k), and ``grad_b L_i = sum_l g_{i,l}``. The weight
gradient is kept factored (:class:`OuterGrad`), so the ghost norm applies as for linear layers.
Grouped convolutions go to the generic ``torch.func`` rule.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from privtune.grads import DenseGrad, OuterGrad, PerExampleGrad
from privtune.rules.base import ModuleCall
from privtune.rules.functional import functional_rule


def _padded_input(module: nn.Conv1d | nn.Conv2d, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """Apply the module's padding explicitly; returns the input and the padding left for ``unfold``."""
    spatial = x.dim() - 2
    if module.padding_mode != "zeros":
        return F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode), (0,) * spatial
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return x, (0,) * spatial
        pads: list[int] = []  # "same": total d (k - 1), the extra one on the right, as PyTorch does
        for dilation, kernel in reversed(list(zip(module.dilation, module.kernel_size))):
            total = dilation * (kernel - 1)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads), (0,) * spatial
    return x, tuple(module.padding)


def conv_rule(call: ModuleCall) -> dict[str, PerExampleGrad]:
    module: nn.Conv1d | nn.Conv2d = call.module  # type: ignore[assignment]
    if module.groups != 1:
        return functional_rule(call)
    x = call.batched(call.input)
    grads = call.batched(call.grad_output)
    x, padding = _padded_input(module, x)
    kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    if isinstance(module, nn.Conv1d):  # treat as a 2-D convolution of height 1
        x = x.unsqueeze(2)
        kernel, stride, dilation, padding = (1, *kernel), (1, *stride), (1, *dilation), (0, *padding)
    patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (B, C k, L)
    grads = grads.reshape(call.batch_size, module.out_channels, -1)  # (B, out, L)
    out: dict[str, PerExampleGrad] = {}
    if call.trainable("weight"):
        out["weight"] = OuterGrad(
            grads.transpose(1, 2), patches.transpose(1, 2), module.out_channels, module.weight.shape
        )
    if call.trainable("bias"):
        out["bias"] = DenseGrad(grads.sum(2))
    return out
