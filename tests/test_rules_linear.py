"""nn.Linear and transformers' Conv1D against the brute-force per-example loop (float64, noise 0)."""

import pytest
import torch
from bruteforce import check_all_modes, stacked_loss_fn
from torch import nn
from transformers.pytorch_utils import Conv1D

from privtune import PrivacyEngine
from privtune.errors import PrivacyError


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("input_shape", [(6,), (5, 6), (2, 3, 6)], ids=["2d", "3d", "4d"])
def test_linear(bias, input_shape):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4, bias=bias), nn.Tanh(), nn.Linear(4, 3, bias=bias)).double()
    examples = list(torch.randn(5, *input_shape, dtype=torch.float64))
    check_all_modes(model, examples, stacked_loss_fn())


def test_linear_ghost_and_materialised_agree_when_auto_switches():
    """T large relative to p*d makes "auto" materialise; T small makes it use ghost norms."""
    torch.manual_seed(1)
    model = nn.Linear(3, 2).double()  # p*d = 6: ghost only for T = 1
    for steps in (1, 4):
        examples = list(torch.randn(4, steps, 3, dtype=torch.float64))
        check_all_modes(model, examples, stacked_loss_fn(), splits=(1, 3))


@pytest.mark.parametrize("bias", [True, False])
def test_transformers_conv1d(bias):
    torch.manual_seed(2)
    layer = Conv1D(4, 6).double()
    if not bias:
        layer.bias.requires_grad_(False)
    model = nn.Sequential(layer, nn.Tanh(), Conv1D(3, 4).double())
    examples = list(torch.randn(5, 7, 6, dtype=torch.float64))
    check_all_modes(model, examples, stacked_loss_fn())


class SharedLayer(nn.Module):
    """One Linear called twice per forward (weight sharing, as in ALBERT): its per-example gradient is the sum
    of both calls' contributions, and its norm needs the cross term between them."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(self.shared(torch.tanh(self.shared(x))))


@pytest.mark.parametrize("input_shape", [(6,), (5, 6)], ids=["2d", "3d"])
def test_module_called_twice(input_shape):
    torch.manual_seed(3)
    model = SharedLayer().double()
    check_all_modes(model, list(torch.randn(5, *input_shape, dtype=torch.float64)), stacked_loss_fn())


class InPlaceAfterLinear(nn.Module):
    """Outputs of hooked modules modified in place after they return (a residual ``+=``, ``relu_``, ``mul_``):
    the gradient that reaches the module is that of the value it produced, which the engine must use."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(6, 6)
        self.second = nn.Linear(6, 3)

    def forward(self, x):
        h = self.first(x)
        h += x
        h.relu_()
        out = self.second(h)
        out.mul_(1.5)
        return out


def test_outputs_modified_in_place():
    """2-D inputs: a Linear's output is a fresh tensor, and in-place ops after it are handled exactly."""
    torch.manual_seed(4)
    model = InPlaceAfterLinear().double()
    check_all_modes(model, list(torch.randn(5, 6, dtype=torch.float64)), stacked_loss_fn())


def test_view_output_modified_in_place_is_refused():
    """3-D inputs: the output is a view, and an in-place op cuts it from the graph: a clear error, no update."""
    torch.manual_seed(4)
    model = InPlaceAfterLinear().double()
    engine = PrivacyEngine(model, torch.optim.SGD(model.parameters(), lr=1.0), max_grad_norm=1.0,
                           noise_multiplier=0.0, expected_batch_size=4)
    with pytest.raises(PrivacyError, match="modified in place"):
        engine.backward(model(torch.randn(4, 3, 6, dtype=torch.float64)).pow(2).sum((1, 2)))
