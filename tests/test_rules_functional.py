"""Modules without a dedicated rule: the torch.func fallback, and the errors where it cannot work."""

import pytest
import torch
import torch.nn.functional as F
from bruteforce import check_all_modes, stacked_loss_fn
from torch import nn

from privtune import PrivacyEngine, PrivacyError, UnsupportedModuleError, default_registry
from privtune.grads import DenseGrad


class ScaledResidual(nn.Module):
    """Holds parameters directly *and* has a child with its own rule."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Parameter(torch.randn(5))
        self.offset = nn.Parameter(torch.randn(5))
        self.inner = nn.Linear(5, 5)

    def forward(self, x, scale=2.0):
        return x + scale * torch.sigmoid(self.gate) * torch.tanh(self.inner(x) + self.offset)


def _engine(model, **kwargs):
    return PrivacyEngine(model, torch.optim.SGD(model.parameters(), lr=1), max_grad_norm=1.0,
                         noise_multiplier=0.0, expected_batch_size=4, **kwargs)


def test_module_with_direct_parameters_uses_torch_func():
    torch.manual_seed(0)
    model = nn.Sequential(ScaledResidual(), nn.Linear(5, 2)).double()
    check_all_modes(model, list(torch.randn(5, 3, 5, dtype=torch.float64)), stacked_loss_fn())


def test_group_norm_and_prelu_through_fallback():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.GroupNorm(2, 4), nn.PReLU(4), nn.Flatten(), nn.Linear(16, 2)).double()
    check_all_modes(model, list(torch.randn(5, 2, 6, dtype=torch.float64)), stacked_loss_fn())


class NoisyLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return F.dropout(x * self.w, p=0.5, training=True)


def test_fallback_failure_names_the_module_and_the_fix():
    model = nn.Sequential(NoisyLayer())
    engine = _engine(model)
    with pytest.raises(UnsupportedModuleError, match=r"'0' \(NoisyLayer\).*Freeze its parameters"):
        engine.backward(model(torch.randn(4, 3)).sum(1))


def test_no_fallback_means_a_clear_error_at_construction():
    registry = default_registry()
    registry.fallback = None
    with pytest.raises(PrivacyError, match="ScaledResidual"):
        _engine(ScaledResidual(), rules=registry)


def test_user_registered_rule_is_used():
    calls = []

    def gate_rule(call):
        calls.append(call.name)
        x, g = call.input, call.grad_output
        return {"w": DenseGrad((g * x).reshape(call.batch_size, -1, 3).sum(1))}

    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3))

        def forward(self, x):
            return x * self.w

    registry = default_registry()
    registry.register(Gate, gate_rule)
    torch.manual_seed(3)
    model = nn.Sequential(Gate(), nn.Tanh(), nn.Linear(3, 2)).double()
    from bruteforce import clipped_update, engine_update, per_example_grads

    examples = list(torch.randn(4, 3, dtype=torch.float64))
    loss_fn = stacked_loss_fn()
    expected = clipped_update(per_example_grads(model, examples, loss_fn), "flat", 0.5, 4)
    got = engine_update(model, [examples], loss_fn, 4, max_grad_norm=0.5, rules=registry)
    assert calls == ["0"]
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("norm", [nn.BatchNorm1d(3), nn.SyncBatchNorm(3)])
def test_batch_norm_in_training_mode_is_refused(norm):
    model = nn.Sequential(nn.Linear(3, 3), norm)
    _engine(model)
    with pytest.raises(PrivacyError, match="statistics of the whole batch"):
        model(torch.randn(4, 3))


def test_batch_norm_without_running_statistics_is_refused_in_eval_mode():
    """track_running_stats=False: BatchNorm normalises with the batch's statistics even in eval mode."""
    norm = nn.BatchNorm1d(3, affine=False, track_running_stats=False).eval()
    model = nn.Sequential(nn.Linear(3, 3), norm)
    _engine(model)
    with pytest.raises(PrivacyError, match="statistics of the whole batch"):
        model(torch.randn(4, 3))


class BatchCentering(nn.Module):
    """No parameters, no known type, yet one example's output depends on every other example."""

    def forward(self, x):
        return x - x.mean(0, keepdim=True)


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5))

    def forward(self, x):
        return torch.tanh(x * self.w)


class TimeMajorGate(nn.Module):
    """Hands its child (T, B, d): with T == B the torch.func fallback would split by time step, not example."""

    def __init__(self):
        super().__init__()
        self.gate = Gate()
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        return self.out(self.gate(x.transpose(0, 1)).transpose(0, 1))


@pytest.mark.parametrize(
    "make_model, shape",
    [(lambda: nn.Sequential(nn.Linear(3, 3), BatchCentering(), nn.Tanh(), nn.Linear(3, 2)), (4, 3)),
     (TimeMajorGate, (4, 4, 5))],
    ids=["batch-centering", "time-major"],
)
def test_models_that_mix_examples_are_refused(make_model, shape):
    """The self-check weights each example's loss differently, so a wrong split between examples (not only a
    wrong sum) is caught before any update: never a silent non-private step."""
    torch.manual_seed(6)
    model = make_model().double()
    engine = _engine(model)
    x = torch.randn(*shape, dtype=torch.float64)
    with pytest.raises(PrivacyError, match="mixes examples within the batch"):
        engine.backward(model(x).pow(2).reshape(shape[0], -1).sum(1))


def test_frozen_batch_norm_in_eval_mode_is_allowed():
    torch.manual_seed(4)
    norm = nn.BatchNorm1d(3).double().eval().requires_grad_(False)
    model = nn.Sequential(nn.Linear(3, 3), norm, nn.Linear(3, 2)).double()
    check_all_modes(model, list(torch.randn(4, 3, dtype=torch.float64)), stacked_loss_fn(),
                    modes=[("flat", "auto", "bookkeeping")])


def test_parameter_used_outside_its_module_is_caught_by_the_self_check():
    class Sneaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 2)

        def forward(self, x):  # b.weight used through F.linear: no hook sees this use
            return self.b(torch.tanh(self.a(x))) + F.linear(x, self.b.weight)

    model = Sneaky()
    engine = _engine(model)
    with pytest.raises(PrivacyError, match="'b.weight' do not add up"):
        engine.backward(model(torch.randn(4, 3)).sum(1))


def test_subclass_that_redefines_forward_does_not_inherit_the_rule():
    """OPT's positional embedding subclasses nn.Embedding but takes an attention mask: the embedding rule's
    assumption (input = token ids) would be wrong, so the registry must not hand it that rule."""
    from privtune.rules.embedding import embedding_rule

    class ShiftedPositions(nn.Embedding):
        def forward(self, mask):
            return super().forward(torch.cumsum(mask, dim=1))

    class KeepsForward(nn.Embedding):
        pass

    registry = default_registry()
    assert registry.find(KeepsForward(4, 2)) is embedding_rule
    assert registry.find(ShiftedPositions(4, 2)) is not embedding_rule

    torch.manual_seed(5)
    model = nn.Sequential(ShiftedPositions(12, 3), nn.Linear(3, 2)).double()
    masks = [torch.tensor([1, 1, 1, 0]), torch.tensor([1, 1, 0, 0]), torch.tensor([1, 1, 1, 1])]
    check_all_modes(model, masks, stacked_loss_fn(), splits=(1,), modes=[("flat", "auto", "bookkeeping")])


def test_mixing_is_caught_even_when_the_first_micro_batch_has_one_example():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(3, 3), BatchCentering(), nn.Tanh(), nn.Linear(3, 2)).double()
    engine = _engine(model)
    engine.backward(model(torch.randn(1, 3, dtype=torch.float64)).pow(2).sum(1))  # one example cannot mix
    with pytest.raises(PrivacyError, match="mixes examples within the batch"):
        engine.backward(model(torch.randn(3, 3, dtype=torch.float64)).pow(2).sum(1))
