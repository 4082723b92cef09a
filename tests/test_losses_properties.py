"""Properties of the kernel and the named losses (hypothesis), and the errors for bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hardneg.losses as L


def batch(seed, B=8, d=6, classes=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, d, generator=g, dtype=dtype)
    z2 = z1 + 0.5 * torch.randn(B, d, generator=g, dtype=dtype)
    y = torch.arange(B) % classes
    return z1, z2, y


SETTINGS = settings(max_examples=25, deadline=None)


@SETTINGS
@given(seed=st.integers(0, 10_000), beta=st.floats(0.0, 4.0), t=st.floats(0.05, 1.0))
def test_tilted_is_at_least_untilted(seed, beta, t):
    """Companion inequality: L_H-UCL ≥ L_UCL and L_H-SCL ≥ L_SCL on the same batch, for β ≥ 0.

    For the estimator this holds exactly: π tilted towards larger s puts more weight on larger
    e^{s/t} (Chebyshev's sum inequality), so N Σ π e^{s/t} ≥ N mean e^{s/t}."""
    z1, z2, y = batch(seed)
    assert L.hucl(z1, z2, beta=beta, t=t) >= L.ucl(z1, z2, t=t) - 1e-12
    assert L.hscl(z1, z2, y, beta=beta, t=t, positives="view") >= L.scl(z1, z2, y, t=t) - 1e-12
    assert L.hscl(z1, z2, y, beta=beta, t=t) >= L.hscl(z1, z2, y, beta=0.0, t=t) - 1e-12


@SETTINGS
@given(seed=st.integers(0, 10_000), t=st.floats(0.05, 1.0))
def test_beta_zero_recovers_untilted(seed, t):
    z1, z2, y = batch(seed)
    torch.testing.assert_close(L.hucl(z1, z2, beta=0.0, t=t), L.ucl(z1, z2, t=t))
    torch.testing.assert_close(L.hscl(z1, z2, y, beta=0.0, t=t, positives="view"), L.scl(z1, z2, y, t=t))
    torch.testing.assert_close(L.dcl(z1, z2, tau_plus=0.0, t=t), L.ucl(z1, z2, t=t))


@SETTINGS
@given(seed=st.integers(0, 10_000), beta=st.floats(0.0, 3.0), tau=st.floats(0.0, 0.3))
def test_permutation_invariance(seed, beta, tau):
    z1, z2, y = batch(seed)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 1))
    for fn in (
        lambda a, b, c: L.hucl(a, b, beta=beta, tau_plus=tau),
        lambda a, b, c: L.hscl(a, b, c, beta=beta),
        lambda a, b, c: L.supcon(a, b, c),
        lambda a, b, c: L.triplet(a, b, c, beta=beta),
    ):
        torch.testing.assert_close(fn(z1, z2, y), fn(z1[perm], z2[perm], y[perm]))


@SETTINGS
@given(seed=st.integers(0, 10_000), chunk=st.integers(1, 20), beta=st.floats(0.0, 3.0))
def test_chunked_equals_unchunked(seed, chunk, beta):
    z1, z2, y = batch(seed, B=10)
    for fn in (
        lambda c: L.hscl(z1, z2, y, beta=beta, chunk_size=c),
        lambda c: L.hucl(z1, z2, beta=beta, tau_plus=0.1, chunk_size=c),
        lambda c: L.supcon(z1, z2, y, chunk_size=c),
        lambda c: L.ucl(z1, z2, chunk_size=c),
    ):
        torch.testing.assert_close(fn(chunk), fn(None))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_accumulates_in_float32(dtype):
    z1, z2, y = batch(0, B=64, d=32, dtype=torch.float32)
    ref = L.hscl(z1, z2, y, beta=1.0)
    low = L.hscl(z1.to(dtype), z2.to(dtype), y, beta=1.0)
    assert low.dtype == dtype
    assert abs(float(low) - float(ref)) / float(ref) < 2e-2


def test_generic_kernel_log_weight_fn_topk_matches_manual():
    """A top-k π through log_weight_fn equals the plain sum over the k hardest negatives."""
    z1, z2, _ = batch(3, B=6)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z)
    pos = torch.cat([torch.arange(6) + 6, torch.arange(6)])
    k = 3

    def topk_fn(S, rows):
        S = S.clone()
        r = torch.arange(rows.start, rows.stop)
        S[torch.arange(len(r)), r] = -2
        S[torch.arange(len(r)), pos[r]] = -2
        keep = torch.zeros_like(S, dtype=torch.bool)
        keep.scatter_(1, S.topk(k, dim=1).indices, True)
        return torch.zeros_like(S).masked_fill(~keep, float("-inf"))

    ours = L.weighted_info_nce(z, z, t=0.5, pos_index=pos, self_index=torch.arange(n), log_weight_fn=topk_fn)
    s = z @ z.T
    tot = 0.0
    for i in range(n):
        negs = sorted([j for j in range(n) if j not in (i, int(pos[i]))], key=lambda j: -float(s[i, j]))[:k]
        sp = torch.exp(s[i, pos[i]] / 0.5)
        tot = tot - torch.log(sp / (sp + sum(torch.exp(s[i, j] / 0.5) for j in negs)))
    torch.testing.assert_close(ours, tot / n)


# ---------------------------------------------------------------------------------------- errors
Z = torch.randn(4, 3)
Y = torch.tensor([0, 1, 0, 1])


@pytest.mark.parametrize(
    "call,exc,words",
    [
        (lambda: L.ucl(Z, torch.randn(5, 3)), ValueError, "z2 must have the same shape"),
        (lambda: L.ucl(torch.randn(0, 3), torch.randn(0, 3)), ValueError, "z1 is empty"),
        (lambda: L.ucl(Z, Z, t=0), ValueError, "temperature must be a finite number > 0"),
        (lambda: L.ucl(Z, Z, t=-1.0), ValueError, "temperature must be a finite number > 0"),
        (lambda: L.hucl(Z, Z, beta=-0.1), ValueError, "beta"),
        (lambda: L.hucl(Z, Z, tau_plus=1.0), ValueError, "tau_plus"),
        (lambda: L.dcl(Z, Z, tau_plus=-0.1), ValueError, "tau_plus"),
        (lambda: L.scl(Z, Z, torch.tensor([0, 1, 0])), ValueError, "labels must have shape (4,)"),
        (lambda: L.scl(Z, Z, Y.float()), TypeError, "labels must be an integer"),
        (lambda: L.scl(Z, Z, None), ValueError, "labels are required"),
        (lambda: L.ucl(Z.clone().fill_(float("nan")), Z), ValueError, "NaN or inf"),
        (lambda: L.ucl(Z, Z.clone().fill_(float("inf"))), ValueError, "NaN or inf"),
        (lambda: L.ucl(Z.numpy(), Z), TypeError, "z1 must be a torch.Tensor"),
        (lambda: L.scl(Z, Z, torch.zeros(4, dtype=torch.long)), ValueError, "no anchor has both a positive"),
        (lambda: L.supcon(Z, None, torch.tensor([0, 1, 2, 3])), ValueError, "no anchor has both a positive"),
        (lambda: L.ucl(Z[:1], Z[:1]), ValueError, "a batch of one sample"),
        (lambda: L.supcon(Z, Z, torch.tensor([0, 1, -2, 2])), ValueError, "labels must be integers >= -1"),
        (lambda: L.ucl(Z, None), ValueError, "needs two views"),
        (lambda: L.hscl(Z, Z, Y, positives="some"), ValueError, "positives"),
        (lambda: L.weighted_info_nce(Z, Z, t=0.5), ValueError, "needs pos_index"),
        (lambda: L.weighted_info_nce(Z, torch.randn(4, 2), t=0.5, pos_index=Y), ValueError, "same embedding dim"),
        (lambda: L.weighted_info_nce(Z, Z, t=0.5, pos_index=torch.tensor([1, 2, 3, 9])), ValueError, "pos_index"),
        (lambda: L.weighted_info_nce(Z, Z, t=0.5, pos_index=Y, reduction="avg"), ValueError, "reduction"),
        (lambda: L.triplet(Z, Z, Y, margin=-1.0), ValueError, "margin must be a finite number >= 0"),
    ],
)
def test_bad_input_names_the_argument(call, exc, words):
    with pytest.raises(exc) as e:
        call()
    assert words in str(e.value)


def test_mismatched_devices_are_named():
    q = torch.randn(4, 3)
    k = torch.empty(4, 3, device="meta")
    with pytest.raises(ValueError, match="same device"):
        L.weighted_info_nce(q, k, t=0.5, pos_index=torch.tensor([1, 0, 3, 2]))
    with pytest.raises(ValueError, match="same device"):
        L.ucl(q, k)
