"""Per-example gradient representations against dense per-example tensors built by brute force (float64)."""

import pytest
import torch

from privtune import grads
from privtune.grads import DenseGrad, GramCache, OuterGrad, inner, total_sq_norms


def _dense(grad: OuterGrad) -> torch.Tensor:
    """G_i = sum_t u_t v_t^T by an explicit loop (one-hot rows for index factors)."""
    batch, steps = grad.right.shape[:2]
    out = torch.zeros(batch, grad.left_size, grad.right_size, dtype=torch.float64)
    for i in range(batch):
        for t in range(steps):
            if grad.left_is_index:
                out[i, grad.left[i, t]] += grad.right[i, t]
            else:
                out[i] += torch.outer(grad.left[i, t], grad.right[i, t])
    return out


def _random(kind, batch=3, steps=4, size=6, width=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    right = torch.randn(batch, steps, width, generator=gen, dtype=torch.float64)
    if kind == "index":
        left = torch.randint(0, size, (batch, steps), generator=gen)
        left[:, 1] = left[:, 0]  # repeated token within an example
    else:
        left = torch.randn(batch, steps, size, generator=gen, dtype=torch.float64)
    return OuterGrad(left, right, size, torch.Size([size, width]))


@pytest.mark.parametrize("kind", ["dense", "index"])
@pytest.mark.parametrize("method", ["ghost", "per_example", "auto"])
def test_norms_and_clipped_sums(kind, method):
    grad = _random(kind)
    dense = _dense(grad)
    torch.testing.assert_close(grad.sq_norms(method), dense.pow(2).sum((1, 2)))
    coef = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(grad.clipped_sum(coef), torch.einsum("b,bpd->pd", coef, dense))
    torch.testing.assert_close(grad.materialize(), dense)


@pytest.mark.parametrize("kinds", [("dense", "dense"), ("index", "dense"), ("dense", "index"), ("index", "index")])
def test_cross_terms_of_tied_contributions(kinds):
    a, b = _random(kinds[0], seed=1), _random(kinds[1], steps=3, seed=2)
    da, db = _dense(a), _dense(b)
    torch.testing.assert_close(inner(a, b), (da * db).sum((1, 2)))
    dense = DenseGrad(torch.randn(3, 6, 5, dtype=torch.float64))
    total = total_sq_norms([a, b, dense], "ghost")
    torch.testing.assert_close(total, (da + db + dense.values).pow(2).sum((1, 2)))


def test_gram_cache_shares_one_gram_per_tensor():
    cache = GramCache()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    same = x.reshape(2, 5, 4)  # a view with the same memory and layout
    assert cache.self_gram(x) is cache.self_gram(same)
    assert cache.self_gram(x[:, :3]) is not cache.self_gram(x)
    q = OuterGrad(torch.randn(2, 5, 3, dtype=torch.float64), x, 3, torch.Size([3, 4]))
    k = OuterGrad(torch.randn(2, 5, 7, dtype=torch.float64), same, 7, torch.Size([7, 4]))
    torch.testing.assert_close(q.sq_norms("ghost", cache), _dense(q).pow(2).sum((1, 2)))
    torch.testing.assert_close(k.sq_norms("ghost", cache), _dense(k).pow(2).sum((1, 2)))


@pytest.mark.parametrize("chunk", [4, 7, 1 << 16])
def test_rowwise_dot_matches_a_loop_in_chunks(monkeypatch, chunk):
    """Norms and cross terms go through rowwise_dot; long rows are summed chunk by chunk (chunk 4 and 7 split a
    row of 30 evenly and unevenly; 1 << 16 takes it whole)."""
    monkeypatch.setattr(grads, "_DOT_CHUNK", chunk)
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(4, 5, 6, generator=gen, dtype=torch.float64)
    b = torch.randn(4, 5, 6, generator=gen, dtype=torch.float64)
    expected = torch.tensor(
        [sum(float(x) * float(y) for x, y in zip(a[i].flatten(), b[i].flatten())) for i in range(4)],
        dtype=torch.float64,
    )
    assert torch.allclose(grads.rowwise_dot(a, b), expected, rtol=1e-12, atol=1e-12)
