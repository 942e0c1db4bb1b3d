"""The reference every clipping test compares against: one backward per example, in float64.

``per_example_grads`` runs each example alone (unpadded), so padding, masking and batching inside the engine
are checked too; ``clipped_update`` applies a clipping rule exactly as documented in privtune.clipping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from privtune import PrivacyEngine

LossFn = Callable[[nn.Module, Sequence[Any]], Tensor]


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def per_example_grads(model: nn.Module, examples: Sequence[Any], loss_fn: LossFn) -> list[dict[str, Tensor]]:
    params = trainable(model)
    out = []
    for example in examples:
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model, [example])
        assert loss.shape == (1,)
        loss.sum().backward()
        out.append({n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for n, p in params.items()})
    model.zero_grad(set_to_none=True)
    return out


def clipped_update(
    grads: list[dict[str, Tensor]], rule: str, max_grad_norm: float, batch_size: float, gamma: float = 0.01
) -> dict[str, Tensor]:
    """``-(1/B) sum_i clip(g_i)``: the SGD(lr=1) update with noise 0."""
    names = list(grads[0])
    total = {n: torch.zeros_like(grads[0][n]) for n in names}
    for g in grads:
        if rule == "per_layer":
            threshold = max_grad_norm / math.sqrt(len(names))
            for n in names:
                norm = g[n].norm().item()
                total[n] += g[n] * (min(1.0, threshold / norm) if norm > 0 else 1.0)
            continue
        norm = math.sqrt(sum(float(g[n].pow(2).sum()) for n in names))
        if rule == "flat":
            factor = min(1.0, max_grad_norm / norm) if norm > 0 else 1.0
        else:
            factor = max_grad_norm / (norm + gamma)
        for n in names:
            total[n] += factor * g[n]
    return {n: -t / batch_size for n, t in total.items()}


def flat_norms(grads: list[dict[str, Tensor]]) -> list[float]:
    return [math.sqrt(sum(float(t.pow(2).sum()) for t in g.values())) for g in grads]


def engine_update(
    model: nn.Module,
    micro_batches: Sequence[Sequence[Any]],
    loss_fn: LossFn,
    batch_size: float,
    **engine_kwargs: Any,
) -> dict[str, Tensor]:
    """Run one engine step (SGD lr=1, noise 0) and return the change of every trainable parameter;
    the model's parameters are restored afterwards."""
    params = trainable(model)
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.SGD(params.values(), lr=1.0)
    engine_kwargs.setdefault("noise_multiplier", 0.0)
    with PrivacyEngine(model, optimizer, expected_batch_size=batch_size, **engine_kwargs) as engine:
        for micro_batch in micro_batches:
            engine.backward(loss_fn(model, micro_batch))
        engine.step()
    update = {n: p.detach() - before[n] for n, p in params.items()}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(before[n])
    return update


def assert_updates_close(got: dict[str, Tensor], expected: dict[str, Tensor], rtol: float = 1e-6) -> None:
    assert got.keys() == expected.keys()
    scale = max(float(t.abs().max()) for t in expected.values())
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=rtol, atol=rtol * scale, msg=lambda m, n=name: f"{n}: {m}")


CLIPPING_RULES = ("flat", "per_layer", "automatic")
NORM_METHODS = ("auto", "ghost", "per_example")
# (clipping, norm_method, clipped_sum): every rule x every norm method in book-keeping mode, and the
# second-backward mode for the rules it supports.
ENGINE_MODES = [(c, n, "bookkeeping") for c in CLIPPING_RULES for n in NORM_METHODS] + [
    (c, n, "second_backward") for c in ("flat", "automatic") for n in NORM_METHODS
]


def stacked_loss_fn(readout_seed: int = 0) -> LossFn:
    """Loss for a single layer fed with stacked example tensors: ``sum(tanh(y) * R)`` per example, with a
    fixed random readout R, so every output coordinate gets a different, non-trivial gradient."""
    readouts: dict[tuple[int, ...], Tensor] = {}

    def loss_fn(model: nn.Module, batch: Sequence[Tensor]) -> Tensor:
        out = model(torch.stack(list(batch)))
        key = tuple(out.shape[1:])
        if key not in readouts:
            gen = torch.Generator().manual_seed(readout_seed)
            readouts[key] = torch.randn(key, generator=gen, dtype=out.dtype)
        return (torch.tanh(out) * readouts[key]).reshape(out.shape[0], -1).sum(1)

    return loss_fn


def check_all_modes(
    model: nn.Module,
    examples: Sequence[Any],
    loss_fn: LossFn,
    splits: Sequence[int] = (2,),
    modes: Sequence[tuple[str, str, str]] = tuple(ENGINE_MODES),
    rtol: float = 1e-6,
) -> None:
    """Engine update == brute-force update for every mode; the threshold C is the median flat norm so that
    some examples are clipped and some are not. ``splits`` cut the examples into uneven micro-batches."""
    grads = per_example_grads(model, examples, loss_fn)
    norms = sorted(flat_norms(grads))
    max_grad_norm = norms[len(norms) // 2]
    batch_size = len(examples) + 0.5  # the divisor is the *expected* batch size, not the count
    cuts = [0, *splits, len(examples)]
    micro_batches = [examples[a:b] for a, b in zip(cuts, cuts[1:])]
    for clipping, norm_method, clipped_sum in modes:
        expected = clipped_update(grads, clipping, max_grad_norm, batch_size)
        got = engine_update(
            model, micro_batches, loss_fn, batch_size, max_grad_norm=max_grad_norm,
            clipping=clipping, norm_method=norm_method, clipped_sum=clipped_sum,
        )
        try:
            assert_updates_close(got, expected, rtol=rtol)
        except AssertionError as exc:
            raise AssertionError(f"mode {(clipping, norm_method, clipped_sum)}: {exc}") from None
