"""nn.Embedding: padding_idx, repeated tokens, indices broadcast over the batch, refused options."""

import pytest
import torch
from bruteforce import check_all_modes, stacked_loss_fn
from torch import nn

from privtune import PrivacyEngine, UnsupportedModuleError


class EmbedThenProject(nn.Module):
    def __init__(self, padding_idx=None, shared_positions=False):
        super().__init__()
        self.tokens = nn.Embedding(11, 5, padding_idx=padding_idx)
        self.positions = nn.Embedding(8, 5)
        self.shared_positions = shared_positions
        self.out = nn.Linear(5, 3)

    def forward(self, ids):
        hidden = self.tokens(ids)
        if self.shared_positions:  # computed once as (1, T) and broadcast, like GPT-2's wpe
            hidden = hidden + self.positions(torch.arange(ids.shape[1]).unsqueeze(0))
        return self.out(torch.tanh(hidden))


@pytest.mark.parametrize("padding_idx", [None, 0])
@pytest.mark.parametrize("shared_positions", [False, True])
def test_embedding(padding_idx, shared_positions):
    torch.manual_seed(0)
    model = EmbedThenProject(padding_idx, shared_positions).double()
    ids = torch.randint(0, 11, (6, 7))
    ids[:, 0] = 3  # the same token several times in one example and across examples
    ids[:, 1] = 3
    ids[::2, -2:] = 0  # padding positions
    check_all_modes(model, list(ids), stacked_loss_fn(), splits=(1, 4))


def test_embedding_alone_with_frozen_rest():
    torch.manual_seed(1)
    model = EmbedThenProject(padding_idx=0, shared_positions=True).double()
    model.out.requires_grad_(False)
    model.tokens.requires_grad_(False)  # only the broadcast position embedding is trained
    check_all_modes(model, list(torch.randint(0, 11, (5, 6))), stacked_loss_fn())


def test_index_norms_never_build_dense_batch_by_vocab_tensor(monkeypatch):
    """The materialised embedding norm sums rows that share a token; it must not scatter into (B, V, d)."""
    from privtune.grads import OuterGrad

    def forbidden(self):
        raise AssertionError("dense (B, V, d) tensor built")

    monkeypatch.setattr(OuterGrad, "materialize", forbidden)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Embedding(1000, 4), nn.Linear(4, 2)).double()
    check_all_modes(model, list(torch.randint(0, 1000, (4, 9))), stacked_loss_fn())


@pytest.mark.parametrize("option", [{"scale_grad_by_freq": True}, {"max_norm": 1.0}])
def test_embedding_options_that_break_per_example_clipping_are_refused(option):
    model = nn.Sequential(nn.Embedding(10, 4, **option), nn.Linear(4, 1))
    engine = PrivacyEngine(model, torch.optim.SGD(model.parameters(), lr=1), max_grad_norm=1.0,
                           noise_multiplier=0.0, expected_batch_size=2)
    losses = model(torch.randint(0, 10, (2, 3))).sum((1, 2))
    with pytest.raises(UnsupportedModuleError, match="embedding"):
        engine.backward(losses)
