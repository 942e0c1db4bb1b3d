"""The engine's contract beyond exactness: noise, steps, hooks' lifetime, and refusals."""

import math

import pytest
import torch
from bruteforce import check_all_modes, stacked_loss_fn
from torch import nn

from privtune import PrivacyEngine, PrivacyError, PrivtuneError


def _linear_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(300, 200), nn.Tanh(), nn.Linear(200, 100)).double()


def _engine(model, **kwargs):
    params = dict(max_grad_norm=1.0, noise_multiplier=0.0, expected_batch_size=4)
    params.update(kwargs)
    return PrivacyEngine(model, torch.optim.SGD(model.parameters(), lr=1.0), **params)


def _losses(model, x):
    return model(x).pow(2).sum(1)


@pytest.mark.parametrize("micro_batches", [1, 3])
def test_noise_std_is_sigma_c_over_b_and_added_once_per_step(micro_batches):
    """With zero data gradient the update is pure noise: std sigma*C/B per coordinate, whatever the number of
    micro-batches (adding it per micro-batch would give sqrt(3) times more). 80,300 coordinates: the sample
    std is within 1% of the truth with overwhelming probability; the seed is fixed, so this cannot flake."""
    model = _linear_model()
    for p in model.parameters():
        nn.init.zeros_(p)  # zero parameters: zero gradients, the update is the noise alone
    sigma, clip, batch = 0.7, 2.5, 8.0
    engine = _engine(model, noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=batch,
                     generator=torch.Generator().manual_seed(123))
    for _ in range(micro_batches):
        engine.backward(_losses(model, torch.randn(3, 300, dtype=torch.float64)))
    engine.step()
    update = torch.cat([p.detach().flatten() for p in model.parameters()])
    expected = sigma * clip / batch
    assert abs(float(update.std()) / expected - 1) < 0.01
    assert abs(float(update.mean())) < 4 * expected / math.sqrt(update.numel())


def test_noise_reaches_every_parameter_tensor_even_one_without_gradient():
    """Each parameter tensor on its own has noise std sigma*C/B, including one that no example touched in
    this step (an unused branch: leaving it unchanged would reveal that no example used it). The bound on
    each tensor's sample std is 6 standard errors; the seed is fixed, so this cannot flake."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"used": nn.Linear(300, 200), "unused": nn.Linear(300, 100)}).double()
    for p in model.parameters():
        nn.init.zeros_(p)
    sigma, clip, batch = 1.3, 0.5, 6.0
    engine = _engine(model, noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=batch,
                     generator=torch.Generator().manual_seed(7))
    for size in (2, 1, 3):  # uneven micro-batches
        engine.backward(model["used"](torch.randn(size, 300, dtype=torch.float64)).pow(2).sum(1))
    engine.step()
    expected = sigma * clip / batch
    for name, p in model.named_parameters():
        tolerance = 6 / math.sqrt(2 * p.numel())
        assert abs(float(p.detach().std()) / expected - 1) < tolerance, name


def test_noise_is_reproducible_with_a_generator_and_differs_across_steps():
    def run(seed):
        model = _linear_model()
        engine = _engine(model, noise_multiplier=1.0, generator=torch.Generator().manual_seed(seed))
        steps = []
        for _ in range(2):
            engine.backward(_losses(model, torch.ones(2, 300, dtype=torch.float64)))
            engine.step()
            steps.append(model[0].weight.detach().clone())
        return steps

    first, again, other = run(1), run(1), run(2)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_empty_logical_batch_is_a_noise_only_step():
    model = _linear_model()
    before = [p.detach().clone() for p in model.parameters()]
    engine = _engine(model, noise_multiplier=1.0, generator=torch.Generator().manual_seed(0))
    engine.backward(torch.zeros(0, dtype=torch.float64))  # an empty micro-batch is allowed
    engine.step()
    for b, p in zip(before, model.parameters()):
        assert not torch.equal(b, p)
    assert engine.steps_taken == 1


def test_step_clears_accumulation_and_grads():
    model = _linear_model()
    engine = _engine(model)
    engine.backward(_losses(model, torch.randn(2, 300, dtype=torch.float64)))
    engine.step()
    assert all(p.grad is None for p in model.parameters())
    snapshot = [p.detach().clone() for p in model.parameters()]
    engine.step()  # nothing accumulated and no noise: no change
    for s, p in zip(snapshot, model.parameters()):
        assert torch.equal(s, p)


def test_detach_removes_every_hook():
    model = _linear_model()
    counts = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())  # noqa: E731
    baseline = counts()
    with _engine(model):
        assert counts() > baseline
    assert counts() == baseline


def test_ledger_is_told_every_step():
    class Ledger:
        def __init__(self):
            self.steps = []

        def record(self, *, sample_rate, noise_multiplier, steps=1):
            self.steps.append((sample_rate, noise_multiplier, steps))

    ledger = Ledger()
    model = _linear_model()
    engine = _engine(model, noise_multiplier=0.5, ledger=ledger, sample_rate=0.01)
    engine.step()
    engine.step()
    assert ledger.steps == [(0.01, 0.5, 1)] * 2
    with pytest.raises(PrivtuneError, match="sample_rate"):
        _engine(model, ledger=ledger)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"expected_batch_size": 0}, "expected_batch_size"),
        ({"clipping": "median"}, "unknown clipping"),
        ({"norm_method": "fast"}, "unknown norm_method"),
        ({"clipping": "per_layer", "clipped_sum": "second_backward"}, "per_layer"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(PrivtuneError, match=match):
        _engine(_linear_model(), **kwargs)


def test_losses_must_be_per_example():
    model = _linear_model()
    engine = _engine(model)
    with pytest.raises(PrivtuneError, match="1-D tensor of per-example losses"):
        engine.backward(_losses(model, torch.randn(2, 300, dtype=torch.float64)).mean())


def test_optimizer_over_foreign_parameters_is_refused():
    model = _linear_model()
    stray = nn.Parameter(torch.zeros(3))
    with pytest.raises(PrivacyError, match="not a trainable parameter of the model"):
        PrivacyEngine(model, torch.optim.SGD([*model.parameters(), stray], lr=1), max_grad_norm=1.0,
                      noise_multiplier=1.0, expected_batch_size=2)


def test_forward_without_backward_before_step_is_refused():
    model = _linear_model()
    engine = _engine(model)
    model(torch.randn(2, 300, dtype=torch.float64))
    with pytest.raises(PrivtuneError, match="engine.backward was not called"):
        engine.step()


def test_stray_backward_by_the_user_does_not_leak_into_the_update():
    """A plain loss.backward() fills .grad non-privately; the engine's step must overwrite it, not add it."""
    model = _linear_model()
    x = torch.randn(3, 300, dtype=torch.float64)
    from bruteforce import engine_update

    reference = engine_update(model, [list(x)], lambda m, b: _losses(m, torch.stack(list(b))), 4, max_grad_norm=0.1)
    _losses(model, x).sum().backward()  # stray, non-private
    got = engine_update(model, [list(x)], lambda m, b: _losses(m, torch.stack(list(b))), 4, max_grad_norm=0.1)
    for name in reference:
        torch.testing.assert_close(got[name], reference[name])


class FlattensRows(nn.Module):
    """Flattens (B, T, d) to rows like OPT; ``time_major`` flattens (T, B, d) instead."""

    def __init__(self, time_major):
        super().__init__()
        self.time_major = time_major
        self.inner = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        b, t, d = x.shape
        rows = (x.transpose(0, 1) if self.time_major else x).reshape(-1, d)
        h = torch.tanh(self.inner(rows)).reshape((t, b, d) if self.time_major else (b, t, d))
        if self.time_major:
            h = h.transpose(0, 1)
        return self.out(h)


def test_rows_flattened_batch_major_are_split_per_example():
    torch.manual_seed(0)
    check_all_modes(FlattensRows(time_major=False).double(), list(torch.randn(4, 3, 4, dtype=torch.float64)),
                    stacked_loss_fn(), modes=[("flat", "auto", "bookkeeping"), ("flat", "ghost", "bookkeeping")])


def test_rows_flattened_time_major_are_refused():
    model = FlattensRows(time_major=True)
    engine = _engine(model)
    with pytest.raises(PrivacyError, match="not grouped by example"):
        engine.backward(model(torch.randn(4, 3, 4)).pow(2).sum((1, 2)))


def test_engine_keeps_no_module_output_alive():
    """An output that autograd does not save (here: logits copied by the loss, as a language model's shifted
    logits are) must be freed after the forward pass, as in a non-private step: the engine keeps gradient
    edges, not outputs. Holding GPT-2's logits cost 206 MB per micro-batch of 8 x 128 tokens."""
    import gc
    import weakref

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 50)).double()
    engine = _engine(model)
    seen = []
    model[2].register_forward_hook(lambda module, args, out: seen.append(weakref.ref(out)))
    x = torch.randn(4, 3, 8, dtype=torch.float64)
    logits = model(x)
    copied = logits[:, :-1].reshape(-1, 50)  # a copy (non-contiguous slice), as in causal_lm_losses
    del logits
    gc.collect()
    assert seen[0]() is None, "the engine holds the output of the last layer"
    losses = torch.nn.functional.log_softmax(copied, -1).amax(-1).reshape(4, 2).sum(1)
    engine.backward(losses)
    engine.step()
