"""LayerNorm and RMSNorm (torch's, Hugging Face's, and any module of the same structure)."""

import pytest
import torch
from bruteforce import check_all_modes, stacked_loss_fn
from torch import nn
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm
from transformers.models.t5.modeling_t5 import T5LayerNorm

from privtune.rules import default_registry
from privtune.rules.functional import functional_rule
from privtune.rules.normalization import rms_norm_rule


class HandRolledRMSNorm(nn.Module):
    """Not a known class: recognised by its structure (a weight-only scale of the normalised input)."""

    def __init__(self, dim):
        super().__init__()
        self.scale = None
        self.weight = nn.Parameter(torch.ones(dim) + 0.1 * torch.randn(dim))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)


class OnePlusWeightNorm(nn.Module):
    """Gemma-style ``(1 + w) * n(x)``: same shape, different structure -> must not use the scale rule."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(0.1 * torch.randn(dim))

    def forward(self, x):
        return (1 + self.weight) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def _model(norm):
    return nn.Sequential(nn.Linear(6, 6), norm, nn.Linear(6, 3)).double()


@pytest.mark.parametrize("affine", ["both", "weight_only", "no_bias"])
@pytest.mark.parametrize("normalized", [(6,), (4, 6)])
def test_layer_norm(affine, normalized):
    torch.manual_seed(0)
    norm = nn.LayerNorm(normalized, bias=affine != "no_bias")
    if affine == "weight_only":
        norm.bias.requires_grad_(False)
    with torch.no_grad():
        norm.weight.add_(0.3 * torch.randn_like(norm.weight))
    model = _model(norm)
    check_all_modes(model, list(torch.randn(5, 4, 6, dtype=torch.float64)), stacked_loss_fn())


@pytest.mark.parametrize(
    "make_norm",
    [lambda: nn.RMSNorm(6, eps=1e-6), lambda: nn.RMSNorm(6), lambda: LlamaRMSNorm(6), lambda: Qwen2RMSNorm(6),
     lambda: T5LayerNorm(6), lambda: HandRolledRMSNorm(6), lambda: OnePlusWeightNorm(6), lambda: GemmaRMSNorm(6)],
    ids=["torch", "torch-default-eps", "llama", "qwen2", "t5", "hand-rolled", "one-plus-weight", "gemma"],
)
def test_rms_norms(make_norm):
    torch.manual_seed(1)
    norm = make_norm()
    with torch.no_grad():
        norm.weight.add_(0.2 * torch.randn_like(norm.weight))
    check_all_modes(_model(norm), list(torch.randn(5, 3, 6, dtype=torch.float64)), stacked_loss_fn())


def test_torch_rms_norm_over_several_dims():
    """``nn.RMSNorm((4, 6))`` has a 2-D weight: the per-example gradient keeps that shape."""
    torch.manual_seed(3)
    norm = nn.RMSNorm((4, 6))
    with torch.no_grad():
        norm.weight.add_(0.2 * torch.randn_like(norm.weight))
    check_all_modes(_model(norm), list(torch.randn(5, 4, 6, dtype=torch.float64)), stacked_loss_fn())


def test_rms_norm_structure_is_recognised_and_impostors_fall_back(monkeypatch):
    registry = default_registry()
    for norm in (LlamaRMSNorm(4), Qwen2RMSNorm(4), T5LayerNorm(4), HandRolledRMSNorm(4)):
        assert registry.find(norm) is rms_norm_rule, type(norm).__name__
    calls = []
    import privtune.rules.normalization as normalization

    def spy(call):
        calls.append(type(call.module).__name__)
        return functional_rule(call)

    monkeypatch.setattr(normalization, "functional_rule", spy)
    torch.manual_seed(2)
    check_all_modes(_model(OnePlusWeightNorm(6)), list(torch.randn(4, 6, dtype=torch.float64)), stacked_loss_fn(),
                    modes=[("flat", "auto", "bookkeeping")])
    assert calls and set(calls) == {"OnePlusWeightNorm"}
