"""nn.Conv1d and nn.Conv2d: stride, dilation, padding (numbers, 'same', non-zero modes), groups."""

import pytest
import torch
from bruteforce import check_all_modes, stacked_loss_fn
from torch import nn

CONV_OPTIONS = [
    {},
    {"stride": 2, "padding": 1},
    {"dilation": 2, "padding": "same"},
    {"padding": "valid", "bias": False},
    {"padding": 1, "padding_mode": "reflect"},
    {"padding": 1, "groups": 2},
]


@pytest.mark.parametrize("options", CONV_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_conv1d(options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 6, 3, **options), nn.Tanh(), nn.Conv1d(6, 2, 2)).double()
    check_all_modes(model, list(torch.randn(5, 4, 9, dtype=torch.float64)), stacked_loss_fn())


@pytest.mark.parametrize("options", CONV_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_conv2d(options):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 4, (3, 2), **options), nn.Tanh(), nn.Conv2d(4, 2, 2)).double()
    check_all_modes(model, list(torch.randn(4, 2, 7, 6, dtype=torch.float64)), stacked_loss_fn())
