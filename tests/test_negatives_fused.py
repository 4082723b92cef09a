"""The presets' filters and weightings applied in the kernel's blocks (``log_weight_block``) on
batches large enough for the two-stage top-k selection, against vectorised float64 formulas."""

import numpy as np
import pytest
import torch

from hardneg.negatives import create_strategy


def _batch(B: int, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, d, generator=g, dtype=torch.float64)
    return z1, z1 + 0.7 * torch.randn(B, d, generator=g, dtype=torch.float64)


def _literal(z1, z2, keep, t=0.5):
    """mean_i −log(e^{s_ip/t} / (e^{s_ip/t} + Σ_{j kept} e^{s_ij/t})), the mask a constant."""
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    S = z @ z.T / t
    n = S.shape[0]
    pos = (torch.arange(n) + n // 2) % n
    sp = S[torch.arange(n), pos]
    neg = torch.logsumexp(S.masked_fill(~torch.as_tensor(keep), float("-inf")), 1)
    return (torch.logaddexp(sp, neg) - sp).mean()


@pytest.mark.slow
def test_topk_two_stage_selection_matches_the_sorted_k_hardest():
    """2B = 4180 candidates: top-k goes through its rows' best 64-column groups, with a tail of 20
    columns past the last whole group; the k kept per anchor are the k largest of numpy's partition."""
    B, k = 2090, 16
    z1, z2 = _batch(B)
    z = np.concatenate([z1.numpy(), z2.numpy()])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    S = z @ z.T
    n = 2 * B
    S[np.arange(n), np.arange(n)] = -np.inf  # the anchor itself
    S[np.arange(n), (np.arange(n) + B) % n] = -np.inf  # its positive
    order = np.argpartition(-S, k, axis=1)[:, :k]  # the k largest, in any order
    keep = np.zeros((n, n), bool)
    keep[np.arange(n)[:, None], order] = True
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    ra, rb = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    s = create_strategy("topk", k=k)
    loss = s(a, b)
    ref = _literal(ra, rb, keep)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=0)
    (loss + 0).backward()
    ref.backward()
    torch.testing.assert_close(a.grad, ra.grad, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(b.grad, rb.grad, rtol=1e-8, atol=1e-12)
    assert s.last_diagnostics["n_candidates"] == k and s.last_diagnostics["topk_short_share"] == 0.0


def test_topk_block_keeps_the_k_largest_valid_entries():
    """The in-place top-k on a block of 4180 columns (two-stage: 65 groups of 64 and a tail of 20)
    with −∞ on invalid entries: the k largest stay, everything else becomes −∞; a row with fewer
    than k valid entries keeps them all and counts as short."""
    from hardneg.negatives import TopK

    g = torch.Generator().manual_seed(1)
    X = torch.randn(6, 4180, generator=g)
    X[0, 4170:] += 10.0  # the hardest in the tail
    X[1, : 4100] = float("-inf")  # 80 valid
    X[2, 7:] = float("-inf")  # 7 valid: short
    X0 = X.clone()
    w = TopK(16)
    w._rows = w._short = 0
    cnt, lse_a, fallback = w.weigh_(X, slice(0, 6), None, None)
    ref = np.full(X0.shape, -np.inf, np.float32)
    for i, row in enumerate(X0.numpy()):
        top = np.argpartition(-row, 16)[:16]
        ref[i, top] = row[top]
    np.testing.assert_array_equal(X.numpy(), ref)
    assert cnt.tolist() == [16, 16, 7, 16, 16, 16] and lse_a is None and fallback is None
    assert w.diagnostics()["topk_short_share"] == 1 / 6


def test_log_mask_keeps_exactly_the_entries_the_comparison_keeps():
    """The float-only mask of the fused blocks against the boolean comparison it replaces: strict
    and inclusive, at exact zeros of both signs, ±∞ and the smallest subnormals."""
    from hardneg.losses.candidates import finite_count, log_mask_

    tiny = torch.finfo(torch.float32).tiny
    y = torch.tensor([[0.0, -0.0, 1e-45, -1e-45, tiny, -tiny, 1.0, -1.0],
                      [-2.0, float("inf"), float("-inf"), 3.0, -3.0, 0.5, 0.0, 2.0]])
    for inclusive in (False, True):
        keep = (y >= 0) if inclusive else (y > 0)
        a = log_mask_(y.clone(), inclusive=inclusive)
        assert torch.equal(a == 0, keep) and torch.equal(a == float("-inf"), ~keep)
        assert finite_count(a).tolist() == finite_count(a, log_mask=True).tolist() == keep.sum(1).tolist()
        X = torch.randn(2, 8)
        assert torch.equal(X + a, X.masked_fill(~keep, float("-inf")))  # x + 0 is x exactly
    big = torch.finfo(torch.float32).max
    X = torch.tensor([[-big, big, float("inf"), float("-inf"), 0.0, -1e-45], [float("-inf")] * 5 + [1.0]])
    assert finite_count(X).tolist() == [5, 1]
