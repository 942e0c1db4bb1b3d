"""The privacy engine: DP-SGD / DP-Adam with exact per-example clipping for any PyTorch model.

Contract::

    engine = PrivacyEngine(model, optimizer, max_grad_norm=C, noise_multiplier=sigma,
                           expected_batch_size=B)
    for micro_batch in logical_batch:            # any number, uneven sizes allowed
        engine.backward(per_example_losses)      # accumulates sum_i clip(grad L_i)
    engine.step()                                # + N(0, sigma^2 C^2), / B, optimizer.step()
    engine.detach()                              # or use the engine as a context manager

How a micro-batch is processed (``clipped_sum="bookkeeping"``, the default; Bu et al. 2023):

1. While the model runs forward, a hook on every module that owns trainable parameters records the call:
   its inputs (no copies: autograd keeps them alive anyway) and the autograd *gradient edge* of each
   output, not the output itself, so an output that autograd does not save (the logits once the loss has
   copied them, a projection added to the residual stream) is freed as in a non-private step.
2. ``backward`` asks autograd for the gradients of ``sum_i L_i`` with respect to those edges only.
   Autograd then skips every weight gradient (those tensors are not requested): the ordinary weight
   gradient is never computed, because the clipped sum replaces it. An output modified in place after
   its module returned is no problem: its edge still receives the gradient of the value the module
   produced.
3. Each module's rule (``privtune.rules``) turns (inputs, output gradients) into per-example gradients in
   factored form; the engine takes their exact norms (ghost or materialised, per layer and per call,
   ``norm_method``), with cross terms where one parameter is used by several calls (tied weights).
4. The clipping rule (``privtune.clipping``) gives factors ``c_i``; the clipped sum ``sum_i c_i G_i`` is
   formed from the same factors (one matrix product per layer) and accumulated.

``clipped_sum="second_backward"`` is ghost clipping as in Li et al. (2022): norms as above, then a second
backward of ``sum_i c_i L_i``.

Privacy guard rails: BatchNorm using batch statistics (training mode, or no running statistics) is
refused; a module whose per-example gradients cannot be computed raises
:class:`~privtune.errors.UnsupportedModuleError`; on the first ``backward`` the engine checks that the
per-example gradients, weighted by a distinct factor per example, add up to autograd's gradient of the
losses weighted the same way (catching a parameter used outside the module that owns it, and a model that
mixes examples within the batch), and refuses to go on if they do not.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.utils._pytree import tree_flatten, tree_map

from privtune.clipping import ClippingRule, clip_factors, validate
from privtune.errors import PrivacyError, PrivtuneError
from privtune.grads import NORM_METHODS, GramCache, NormMethod, PerExampleGrad, total_sq_norms
from privtune.noise import GaussianNoise
from privtune.rules import EXAMPLE_MIXING_TYPES, ModuleCall, Rule, RuleRegistry, default_registry

ClippedSum = Literal["bookkeeping", "second_backward"]


class StepRecorder(Protocol):
    """What the engine tells the privacy ledger at every step (``privtune.accounting.Ledger``)."""

    def record(self, *, sample_rate: float, noise_multiplier: float, steps: int = 1) -> None: ...


@dataclass
class _Output:
    """One floating-point output of a recorded call, without a strong reference to its values."""

    edge: GradientEdge | None  # None: the output does not require grad
    shape: torch.Size
    dtype: torch.dtype
    device: torch.device
    value: weakref.ref[Tensor]  # alive only as long as autograd (or the model) keeps the tensor
    version: int  # the tensor's version counter when the module returned
    is_view: bool

    @property
    def key(self) -> tuple[int, int]:
        assert self.edge is not None
        return id(self.edge.node), self.edge.output_nr


@dataclass
class _Record:
    module: nn.Module
    name: str
    rule: Rule
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: list[_Output]


def _split_rows(value: Any, batch: int) -> Any:
    """(k B, ...) -> (B, k, ...): rows of a flattened (B, T, ...) tensor, grouped by example."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] != batch and value.shape[0] % batch == 0:
        return value.reshape(batch, value.shape[0] // batch, *value.shape[1:])
    return value


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, Tensor) else value


def _example_weights(losses: Tensor) -> Tensor:
    """A distinct weight per example, ``w_i = 1 + i/B``, for the checks that an attribution to examples is right:
    a gradient split correctly per example scales with its own example's ``w_i``, a wrong split does not."""
    batch = losses.shape[0]
    return 1.0 + torch.arange(batch, dtype=losses.dtype, device=losses.device) / batch


def _alive(out: _Output, split: Any) -> Tensor | None:
    """The output's values (rows split per example) if the tensor still exists, else None."""
    tensor = out.value()
    return None if tensor is None else split(tensor.detach())


class PrivacyEngine:
    """Turns ``model`` + ``optimizer`` into a differentially private optimiser (see module docstring).

    Args:
        model: any ``nn.Module``; every module that directly owns a parameter with ``requires_grad=True``
            is hooked. Frozen parameters take no part in norms or updates.
        optimizer: a ``torch.optim.Optimizer`` over (a subset of) the model's trainable parameters.
        max_grad_norm: the clipping threshold C.
        noise_multiplier: sigma; the noise added to the clipped sum is ``N(0, sigma^2 C^2)``.
        expected_batch_size: B, the divisor of the noisy sum (for Poisson sampling, ``q * N``).
        clipping: ``"flat"``, ``"per_layer"`` or ``"automatic"`` (see ``privtune.clipping``).
        norm_method: ``"auto"`` (per layer and call: ghost when ``2 T^2 < p d``), ``"ghost"`` or
            ``"per_example"`` (materialised per-example gradients).
        clipped_sum: ``"bookkeeping"`` (one backward) or ``"second_backward"`` (ghost clipping).
        gamma: stability constant of automatic clipping.
        generator: RNG for the noise (reproducible runs).
        rules: a :class:`~privtune.rules.RuleRegistry`; defaults to :func:`~privtune.rules.default_registry`.
        ledger: optional privacy ledger; ``record(sample_rate=..., noise_multiplier=...)`` is called at
            every ``step()`` (requires ``sample_rate``).
        sample_rate: q, only used to tell the ledger what each step was.
        self_check: verify on the first ``backward`` that the per-example gradients, weighted by a
            distinct factor per example, sum to autograd's gradient of the weighted losses (one extra
            backward, once; again on the first micro-batch of two or more examples if the first had one).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        max_grad_norm: float,
        noise_multiplier: float,
        expected_batch_size: float,
        clipping: ClippingRule = "flat",
        norm_method: NormMethod = "auto",
        clipped_sum: ClippedSum = "bookkeeping",
        gamma: float = 0.01,
        generator: torch.Generator | None = None,
        rules: RuleRegistry | None = None,
        ledger: StepRecorder | None = None,
        sample_rate: float | None = None,
        self_check: bool = True,
    ) -> None:
        validate(clipping, max_grad_norm, gamma)
        if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
            raise PrivtuneError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
        if not expected_batch_size > 0:
            raise PrivtuneError(f"expected_batch_size must be > 0, got {expected_batch_size}")
        if norm_method not in NORM_METHODS:
            raise PrivtuneError(f"unknown norm_method {norm_method!r}; choose one of {', '.join(NORM_METHODS)}")
        if clipped_sum not in ("bookkeeping", "second_backward"):
            raise PrivtuneError(f"unknown clipped_sum {clipped_sum!r}; use 'bookkeeping' or 'second_backward'")
        if clipped_sum == "second_backward" and clipping == "per_layer":
            raise PrivtuneError(
                "per_layer clipping needs a different factor per parameter, which one second backward of "
                "sum_i c_i L_i cannot apply; use clipped_sum='bookkeeping'"
            )
        if ledger is not None and sample_rate is None:
            raise PrivtuneError("a ledger needs the sample_rate of each step: pass sample_rate=q")
        self.model = model
        self.optimizer = optimizer
        self.max_grad_norm = float(max_grad_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.expected_batch_size = float(expected_batch_size)
        self.clipping = clipping
        self.norm_method = norm_method
        self.clipped_sum = clipped_sum
        self.gamma = gamma
        self._noise = GaussianNoise(generator)
        self.ledger = ledger
        self.sample_rate = sample_rate
        self.steps_taken = 0
        self._self_check_pending = self_check
        self._sums_checked = False  # the self-check ran on a micro-batch of one (which cannot mix examples)
        self._rules = rules if rules is not None else default_registry()

        self._params: list[nn.Parameter] = []
        self._index: dict[int, int] = {}
        for param in model.parameters():  # deduplicated: a tied parameter appears once
            if param.requires_grad:
                self._index[id(param)] = len(self._params)
                self._params.append(param)
        if not self._params:
            raise PrivtuneError("the model has no trainable parameters (requires_grad=True)")
        self._check_optimizer()
        self._accumulated: list[Tensor | None] = [None] * len(self._params)
        self._records: list[_Record] = []
        self._recording = True
        self._batch_hint: int | None = None
        self._checked_layouts: set[str] = set()
        self._rule_memos: dict[int, dict[Any, Any]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._attach()

    # ------------------------------------------------------------------ hooks
    def _check_optimizer(self) -> None:
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                if param.requires_grad and id(param) not in self._index:
                    raise PrivacyError(
                        "the optimizer updates a parameter that is not a trainable parameter of the model; "
                        "its gradient would not be clipped. Build the optimizer from model.parameters()."
                    )

    def _attach(self) -> None:
        for name, module in self.model.named_modules():
            if isinstance(module, EXAMPLE_MIXING_TYPES):
                self._handles.append(
                    module.register_forward_pre_hook(functools.partial(self._refuse_mixing, name or "model"))
                )
            if any(p is not None and p.requires_grad for p in module._parameters.values()):
                rule = self._rules.find(module)
                if rule is None:
                    raise PrivacyError(
                        f"no rule computes per-example gradients of {name!r} ({type(module).__name__}); "
                        "freeze its parameters or register a rule for its type"
                    )
                hook = functools.partial(self._record_call, name or "model", rule)
                self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
        self._handles.append(self.model.register_forward_pre_hook(self._note_batch_size, with_kwargs=True))

    @staticmethod
    def _refuse_mixing(name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        # BatchNorm uses the batch's statistics in training mode, and also in eval mode when it keeps no
        # running statistics (track_running_stats=False): the same test as _BatchNorm.forward.
        batch_statistics = module.training or (
            getattr(module, "running_mean", None) is None and getattr(module, "running_var", None) is None
        )
        if batch_statistics and torch.is_grad_enabled():
            raise PrivacyError(
                f"{name!r} ({type(module).__name__}) normalises with statistics of the whole batch, so one "
                "example's gradient depends on the others and cannot be clipped per example. Replace it "
                "with GroupNorm/LayerNorm, or put it in eval mode (module.eval()) with running statistics "
                "and frozen parameters."
            )

    def _note_batch_size(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        for value in tree_flatten((args, kwargs))[0]:
            if isinstance(value, Tensor) and value.dim() > 0:
                self._batch_hint = value.shape[0]
                return

    def _record_call(
        self, name: str, rule: Rule, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> Any:
        if not self._recording or not torch.is_grad_enabled():
            return None
        replaced = None
        batch = self._batch_hint
        if isinstance(output, Tensor) and batch and batch > 1 and output.dim() > 0 and output.shape[0] == 1:
            # Computed once for the whole batch (e.g. position embeddings of shape (1, T, d)): broadcast it
            # here so that autograd keeps one output gradient per example instead of their sum.
            output = replaced = output.expand(batch, *output.shape[1:])
        tensors = [t for t in tree_flatten(output)[0] if isinstance(t, Tensor) and t.is_floating_point()]
        if not any(t.requires_grad for t in tensors):
            return replaced
        outputs = [
            _Output(
                get_gradient_edge(t) if t.requires_grad else None, t.shape, t.dtype, t.device, weakref.ref(t),
                t._version, t._is_view(),
            )
            for t in tensors
        ]
        self._records.append(
            _Record(
                module=module,
                name=name,
                rule=rule,
                args=tree_map(_detach, args),
                kwargs=tree_map(_detach, kwargs),
                outputs=outputs,
            )
        )
        return replaced

    @contextlib.contextmanager
    def _paused(self) -> Iterator[None]:
        """Rules may re-run a module (RMSNorm check, torch.func): those calls must not be recorded."""
        previous, self._recording = self._recording, False
        try:
            yield
        finally:
            self._recording = previous

    # --------------------------------------------------------------- backward
    def backward(self, losses: Tensor) -> None:
        """Accumulate ``sum_i clip(grad L_i)`` for the examples of one micro-batch.

        ``losses`` holds one loss per example (1-D). The forward pass that produced it must have run
        since the previous ``backward``. An empty micro-batch is allowed and adds nothing.
        """
        if not isinstance(losses, Tensor) or losses.dim() != 1:
            shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise PrivtuneError(
                f"engine.backward expects a 1-D tensor of per-example losses, got {shape}; compute the loss "
                "with reduction='none' and reduce over tokens only (e.g. privtune.losses)"
            )
        records, self._records = self._records, []
        batch = losses.shape[0]
        if batch == 0:
            return
        if not losses.requires_grad:
            raise PrivtuneError("the losses do not require grad: run the forward pass with gradients enabled")
        if any(p.requires_grad is False for p in self._params):
            raise PrivtuneError(
                "a parameter was frozen after the engine was built; build a new engine after changing "
                "requires_grad so that norms and noise cover exactly the trainable parameters"
            )
        outputs: dict[tuple[int, int], GradientEdge] = {}
        for record in records:
            for out in record.outputs:
                if out.edge is not None:
                    outputs[out.key] = out.edge
                tensor = out.value()
                if out.is_view and tensor is not None and tensor._version != out.version:
                    # In place on a non-view output is fine (its edge still receives the gradient of the value
                    # the module produced); on a view, autograd rebuilds the view's history and the edge is cut.
                    raise PrivacyError(
                        f"the output of {record.name!r} is a view and was modified in place after the module "
                        "returned, which cuts it from the autograd graph, so its gradient cannot be captured. "
                        "Use an out-of-place op on it (e.g. x = x + y instead of x += y)."
                    )
        if not outputs:
            raise PrivtuneError(
                "no recorded module call led to these losses: run the model's forward pass (with the engine "
                "attached and gradients enabled) before engine.backward"
            )
        # Mixing between examples only shows in a micro-batch of at least two, so the check waits for one.
        check = self._self_check_pending and (batch > 1 or not self._sums_checked)
        second = self.clipped_sum == "second_backward"
        flattened = {  # outputs whose rows are (example, position) pairs, not yet checked for this module
            out.key: (record.name, out)
            for record in records
            if record.name not in self._checked_layouts
            for out in record.outputs
            if out.edge is not None and len(out.shape) > 0 and out.shape[0] != batch and out.shape[0] % batch == 0
        }
        total = losses.sum()
        grads = torch.autograd.grad(
            total, list(outputs.values()), allow_unused=True, retain_graph=second or check or bool(flattened)
        )
        grad_of = dict(zip(outputs, grads))
        if flattened:
            self._verify_row_layout(losses, list(flattened.values()), grad_of)
        contributions = self._per_example_grads(records, grad_of, batch)
        del records, grad_of, grads, outputs, flattened

        if check:
            self._verify_sums(losses, contributions, retain_graph=second)
            self._sums_checked = True
            self._self_check_pending = batch == 1

        order = sorted(contributions)
        grams = GramCache()
        sq_norms = [total_sq_norms(contributions[k], self.norm_method, grams) for k in order]
        del grams
        factors = clip_factors(self.clipping, self.max_grad_norm, sq_norms, len(self._params), self.gamma)
        # The accumulators hold (noise + sum_i c_i G_i) / B: dividing the factors (B values) and the noise's
        # scale now saves a pass over every parameter at step().
        scale = 1.0 / self.expected_batch_size
        if second:
            coef = factors[0].detach() * scale
            params = [self._params[k] for k in order]
            del contributions
            sums = torch.autograd.grad((losses * coef).sum(), params, allow_unused=True)
            for k, value in zip(order, sums):
                if value is not None:
                    self._accumulator(k).add_(value)
            return
        for k, factor in zip(order, factors):
            accumulator = self._accumulator(k)
            factor = factor * scale
            for part in contributions.pop(k):
                part.add_clipped_sum_(accumulator, factor)

    def _per_example_grads(
        self, records: list[_Record], grad_of: dict[int, Tensor | None], batch: int
    ) -> dict[int, list[PerExampleGrad]]:
        contributions: dict[int, list[PerExampleGrad]] = defaultdict(list)
        with self._paused():
            for record in records:
                grad_outputs = [None if out.edge is None else grad_of.get(out.key) for out in record.outputs]
                if all(g is None for g in grad_outputs):
                    continue  # this call did not influence the losses
                for g in grad_outputs:
                    if g is not None and (g.dim() == 0 or g.shape[0] % batch != 0):
                        raise PrivacyError(
                            f"the output of {record.name!r} has shape {tuple(g.shape)}, not a batch of {batch}: "
                            "its gradient is already summed over examples. Call the model itself (not a "
                            "sub-module) so privtune sees the batch size, with batch-first inputs"
                        )
                split = functools.partial(_split_rows, batch=batch)
                call = ModuleCall(
                    module=record.module,
                    name=record.name,
                    args=tree_map(split, record.args),
                    kwargs=tree_map(split, record.kwargs),
                    outputs=[_alive(out, split) for out in record.outputs],
                    grad_outputs=[
                        split(torch.zeros(out.shape, dtype=out.dtype, device=out.device) if g is None else g)
                        for out, g in zip(record.outputs, grad_outputs)
                    ],
                    batch_size=batch,
                    memo=self._rule_memos.setdefault(id(record.module), {}),
                )
                for param_name, grad in record.rule(call).items():
                    contributions[self._index[id(record.module._parameters[param_name])]].append(grad)
        return contributions

    def _verify_row_layout(
        self, losses: Tensor, flattened: list[tuple[str, _Output]], grad_of: dict[tuple[int, int], Tensor | None]
    ) -> None:
        """Some models flatten (B, T, d) to (B*T, d) inside a block (OPT does). Rows are then attributed to
        examples batch-major (row r -> example r // T); this checks it, once per tensor layout, by weighting
        each example's loss with a distinct factor w_i: every row's gradient must scale by its example's w_i.
        """
        batch = losses.shape[0]
        weights = _example_weights(losses)
        edges = [out.edge for _, out in flattened]
        weighted = torch.autograd.grad((losses * weights).sum(), edges, allow_unused=True, retain_graph=True)
        for (name, out), got in zip(flattened, weighted):
            plain = grad_of.get(out.key)
            if plain is None or got is None:
                continue
            rows = plain.reshape(batch, -1)
            expected = rows * weights.unsqueeze(1)
            if not torch.allclose(got.reshape(batch, -1), expected, rtol=1e-4, atol=1e-6 * float(rows.abs().max())):
                raise PrivacyError(
                    f"the output of {name!r} has shape {tuple(out.shape)} for a batch of {batch} and its rows "
                    "are not grouped by example (batch-major), so its per-example gradients cannot be split. "
                    "Keep the batch dimension first in this module's inputs."
                )
        self._checked_layouts.update(name for name, _ in flattened)

    def _verify_sums(
        self, losses: Tensor, contributions: dict[int, list[PerExampleGrad]], retain_graph: bool
    ) -> None:
        """Per-example gradients must be the gradients of the per-example losses, parameter by parameter.
        Checked with a distinct weight per example: ``sum_i w_i G_i`` must equal autograd's gradient of
        ``sum_i w_i L_i``. With equal weights this only checks the sum (catching a parameter used where no
        hook sees it); distinct weights also catch a wrong split between examples: a model that mixes
        examples within the batch (batch statistics, a batch dimension that is not first), which would
        otherwise make one example's "gradient" depend on the others and void the clipping bound."""
        weights = _example_weights(losses)
        reference = torch.autograd.grad(
            (losses * weights).sum(), self._params, allow_unused=True, retain_graph=retain_graph
        )
        # A gradient that is zero in exact arithmetic (an attention key's bias: softmax ignores a shift common
        # to all keys) is pure rounding noise on both sides, so relative error means nothing there. Errors are
        # therefore measured against the parameter's own gradient plus a small share of the whole model's:
        # a real mismatch (mixing, an unseen use) shows in the parameters that carry gradient.
        global_scale = math.sqrt(sum(float(g.detach().double().pow(2).sum()) for g in reference if g is not None))
        for k, (param, expected) in enumerate(zip(self._params, reference)):
            parts = contributions.get(k, [])
            if expected is None and not parts:
                continue
            coef = weights.to(param.dtype)
            got = sum((part.clipped_sum(coef) for part in parts), torch.zeros_like(param))
            expected = torch.zeros_like(param) if expected is None else expected
            # float64 models may still compute parts in float32 (Llama's RMSNorm does), and the weighted
            # backward rounds differently from the one the per-example gradients came from.
            tol = 1e-6 if param.dtype == torch.float64 else 2e-3
            error = float((got - expected).detach().norm())
            scale = float(expected.detach().norm() + got.detach().norm()) + 1e-3 * global_scale + 1e-30
            if error > tol * scale:
                name = next(n for n, p in self.model.named_parameters() if p is param)
                raise PrivacyError(
                    f"the per-example gradients of {name!r} do not add up to its gradient (relative error "
                    f"{error / scale:.2e} with examples weighted differently): the parameter is used "
                    "outside the module that owns it (e.g. F.linear(x, other.weight)), a module's forward is "
                    "not what its rule assumes, or the model mixes examples within the batch (batch "
                    "statistics, a batch dimension that is not first), so no per-example gradient exists. "
                    "Use the module itself with batch-first inputs, freeze the parameter, or register a rule "
                    "for the module."
                )

    def _accumulator(self, k: int) -> Tensor:
        """Parameter k's noisy sum divided by B, for this logical batch: created on first use as the noise
        ``N(0, sigma^2 C^2) / B`` itself, then the clipped sums (already divided by B) are added in place. No
        zero-filled buffer and no pass over the parameter at step(); the noise is drawn once per logical
        batch, whatever the micro-batches."""
        accumulator = self._accumulated[k]
        if accumulator is None:
            param = self._params[k]
            accumulator = torch.empty_like(param, memory_format=torch.contiguous_format)
            self._accumulated[k] = self._noise.fill_(accumulator, self.noise_std / self.expected_batch_size)
        return accumulator

    # ------------------------------------------------------------------- step
    @property
    def generator(self) -> torch.Generator | None:
        """The noise's RNG (its state is saved in checkpoints); owned by the noise sampler, so the two cannot
        disagree."""
        return self._noise.generator

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise on the *sum* of clipped gradients: ``sigma * C``."""
        return self.noise_multiplier * self.max_grad_norm

    def step(self) -> None:
        """Set each parameter's gradient to ``(sum_i c_i G_i + N(0, sigma^2 C^2)) / B`` (the noise drawn once,
        when the sum was started), run ``optimizer.step()``, and clear what was accumulated. A logical batch with no examples is a valid
        step: the update is noise only (Poisson sampling can draw an empty batch)."""
        if self._records:
            raise PrivtuneError("a forward pass was recorded but engine.backward was not called on its losses")
        for k, param in enumerate(self._params):
            param.grad = self._accumulator(k)  # (noise + sum_i c_i G_i) / B, see _accumulator
        self.optimizer.step()
        for param in self._params:
            param.grad = None
        self._accumulated = [None] * len(self._params)
        self.steps_taken += 1
        if self.ledger is not None:
            assert self.sample_rate is not None
            self.ledger.record(sample_rate=self.sample_rate, noise_multiplier=self.noise_multiplier)

    def clear(self) -> None:
        """Drop what was accumulated and recorded since the last step (no update, no privacy cost)."""
        self._accumulated = [None] * len(self._params)
        self._records = []

    # -------------------------------------------------------------- lifetime
    def detach(self) -> None:
        """Remove every hook this engine registered; the model is left as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._noise.close()
        self.clear()

    def __enter__(self) -> PrivacyEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()
