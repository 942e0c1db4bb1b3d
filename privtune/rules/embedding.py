"""Per-example gradients of ``nn.Embedding``.

Example i's gradient is ``sum_t e_{x_{i,t}} g_{i,t}^T``: row ``x`` receives the sum of the output
gradients at the positions where token ``x`` occurs. It is kept as token indices plus output gradients
(:class:`OuterGrad` with an index factor), so neither a one-hot tensor nor a dense ``(B, V, d)`` gradient
is ever built. Positions holding ``padding_idx`` contribute nothing (PyTorch never updates that row).
Indices shared by the whole batch, e.g. position ids computed once as ``(1, T)``, are broadcast per example
(the engine also broadcasts the layer's output so each example's gradient stays separate).
"""

from __future__ import annotations

from privtune.errors import UnsupportedModuleError
from privtune.grads import OuterGrad, PerExampleGrad
from privtune.rules.base import ModuleCall


def embedding_rule(call: ModuleCall) -> dict[str, PerExampleGrad]:
    module = call.module
    if not call.trainable("weight"):
        return {}
    if module.scale_grad_by_freq:
        raise UnsupportedModuleError(
            f"embedding {call.name!r} has scale_grad_by_freq=True: it scales each row's gradient by the "
            "token's frequency in the whole batch, which mixes examples and breaks per-example clipping. "
            "Construct it with scale_grad_by_freq=False."
        )
    if module.max_norm is not None:
        raise UnsupportedModuleError(
            f"embedding {call.name!r} has max_norm set: it renormalises rows in place during the forward "
            "pass, so the recorded weights are not the ones used. Use max_norm=None."
        )
    indices = call.batched(call.input)
    grads = call.batched(call.grad_output)
    batch = call.batch_size
    indices = indices.reshape(batch, -1)
    grads = grads.reshape(batch, indices.shape[1], -1)
    if module.padding_idx is not None:
        grads = grads * (indices != module.padding_idx).unsqueeze(-1).to(grads.dtype)
    return {"weight": OuterGrad(indices, grads, module.num_embeddings, module.weight.shape)}
