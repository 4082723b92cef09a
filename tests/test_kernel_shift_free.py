"""The kernel's softmax without the max shift (`hardneg.losses.kernel._exp_room`): taken only where
every exponent is bounded (|s/t| ≤ max‖q‖ max‖k‖ / t), equal to the literal float64 references on
both sides of the bound, and equal to the max-shifted path at the boundary."""

import pytest
import torch

import hardneg.losses as L
from hardneg.losses import kernel, weighted_info_nce
from tests import reference_losses as R


@pytest.fixture
def decisions(monkeypatch):
    """Every answer of `_Workspace.shift_free` during the test (True: the shift-free softmax)."""
    seen: list[bool] = []
    original = kernel._Workspace.shift_free

    def spy(self, factor=1.0):
        seen.append(original(self, factor))
        return seen[-1]

    monkeypatch.setattr(kernel._Workspace, "shift_free", spy)
    return seen


def _views(B=12, d=8, seed=0, n_classes=3):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = (torch.arange(B) % n_classes)[torch.randperm(B, generator=g)]
    return z1, z2, y


# (ours on float32 copies of the float64 leaves, the literal float64 reference)
LOSSES = {
    "ucl": (lambda z1, z2, y, t: L.ucl(z1, z2, t=t), lambda z1, z2, y, t: R.ref_infonce(z1, z2, t=t)),
    "supcon": (lambda z1, z2, y, t: L.supcon(z1, z2, y, t=t), lambda z1, z2, y, t: R.ref_supcon(z1, z2, y, t=t)),
    "supcon_skipped_anchor": (  # one view, label 9 once: an anchor without a positive is skipped
        lambda z1, z2, y, t: L.supcon(z1, None, torch.cat([y[:-1], torch.tensor([9])]), t=t),
        lambda z1, z2, y, t: R.ref_supcon(z1, None, torch.cat([y[:-1], torch.tensor([9])]), t=t),
    ),
    "scl": (lambda z1, z2, y, t: L.scl(z1, z2, y, t=t), lambda z1, z2, y, t: R.ref_infonce(z1, z2, t=t, labels=y)),
    "decoupled": (lambda z1, z2, y, t: L.decoupled(z1, z2, t=t), lambda z1, z2, y, t: R.ref_decoupled(z1, z2, t=t)),
    "hucl": (lambda z1, z2, y, t: L.hucl(z1, z2, beta=1.0, t=t),
             lambda z1, z2, y, t: R.ref_infonce(z1, z2, t=t, beta=1.0)),
    "hscl": (lambda z1, z2, y, t: L.hscl(z1, z2, y, beta=1.0, t=t),
             lambda z1, z2, y, t: R.ref_hscl_all(z1, z2, y, t=t, beta=1.0)),
}


def _float32_against_reference(name, t, rtol):
    ours_fn, ref_fn = LOSSES[name]
    z1, z2, y = _views()
    ours = ours_fn(z1.float(), z2.float(), y, t)  # the kernel runs in float32; gradients reach the leaves
    ref = ref_fn(z1, z2, y, t)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, rtol=rtol, atol=rtol)
    grads = [torch.autograd.grad(x, [z1, z2], allow_unused=True) for x in (ours, ref)]
    for a, b in zip(*grads):
        if a is None and b is None:  # the single-view case uses z1 only
            continue
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_shift_free_inside_the_bound_matches_float64_reference(name, decisions):
    # t = 0.1, unit rows: |s/t| ≤ 10 (20 for the root tilt's e^{2s/t}), far inside the bound of 40
    _float32_against_reference(name, 0.1, rtol=2e-5)
    assert decisions and all(decisions)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_shifted_outside_the_bound_matches_float64_reference(name, decisions):
    # t = 0.01 (CLIP's logit scale 100): e^{s/t} reaches e^{100}, past float32's range (e^{88.7})
    _float32_against_reference(name, 0.01, rtol=2e-4)
    assert decisions and not any(decisions)


def _loss_and_grads(fn, z1, z2, y, t):
    a, b = z1.detach().float().requires_grad_(True), z2.detach().float().requires_grad_(True)
    loss = fn(a, b, y, t)
    return [loss.detach(), *torch.autograd.grad(loss, [a, b])]


@pytest.mark.parametrize("name,t_edge", [("ucl", 0.025), ("supcon", 0.025), ("scl", 0.025), ("hucl", 0.05),
                                         ("hscl", 0.05)])
@pytest.mark.parametrize("side", [1.001, 0.999])  # just inside, just outside the bound
def test_path_boundary_gives_the_other_paths_result(name, t_edge, side, decisions, monkeypatch):
    # |s/t| ≤ 1/t for unit rows, e^{2s/t} under the root tilt: the bound of 40 sits at t_edge
    z1, z2, y = _views(seed=3)
    t = t_edge * side
    chosen = _loss_and_grads(LOSSES[name][0], z1, z2, y, t)
    assert decisions and all(d == (side > 1) for d in decisions)
    # the other path on the same inputs: a limit of 0 forces the shift, a limit of 100 removes it
    monkeypatch.setattr(kernel, "_EXP_LIMIT", 100.0 if side < 1 else 0.0)
    decisions.clear()
    other = _loss_and_grads(LOSSES[name][0], z1, z2, y, t)
    assert decisions and all(d == (side < 1) for d in decisions)
    for a, b in zip(chosen, other):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def _literal_ntxent_unnormalised(z, t):
    """NT-Xent on raw (not normalised) rows, float64 loop: −log e^{z_i·z_p/t} / Σ_{j≠i} e^{z_i·z_j/t}."""
    n = z.shape[0]
    total = 0.0
    for i in range(n):
        p = (i + n // 2) % n
        logits = torch.stack([z[i] @ z[j] / t for j in range(n) if j != i])
        total = total - (z[i] @ z[p] / t - torch.logsumexp(logits, 0))
    return total / n


@pytest.mark.parametrize("norm,free", [(30.0, False), (0.5, True)])
def test_unnormalised_inputs_path_follows_their_norms(norm, free, decisions):
    # normalize=False: the bound is max‖q‖ max‖k‖ / t: rows of norm 30 at t = 0.5 give |s/t| up to
    # 1800 (the shifted path, whose result is still exact), rows of norm 0.5 give 0.5
    g = torch.Generator().manual_seed(5)
    z = torch.randn(16, 8, generator=g, dtype=torch.float64)
    z = (norm * z / z.norm(dim=1, keepdim=True)).requires_grad_(True)
    n = z.shape[0]
    zf = z.float()
    ours = weighted_info_nce(zf, zf, t=0.5, pos_index=(torch.arange(n) + n // 2) % n, self_index=torch.arange(n),
                             normalize=False)
    ref = _literal_ntxent_unnormalised(z, 0.5)
    assert decisions and all(d == free for d in decisions)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-4)
    (g_ours,), (g_ref,) = torch.autograd.grad(ours, [z]), torch.autograd.grad(ref, [z])
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-4 * float(g_ref.abs().max()))


def test_exp_room_bound():
    # the factor f with f · max‖q‖ max‖k‖ / t ≤ 40 (and m e^{f B} max(1, ‖k‖) ≤ 1e30)
    q = torch.zeros(3, 4)
    q[:, 0] = torch.tensor([1.0, 2.0, 0.5])
    k = torch.zeros(5, 4)
    k[:, 1] = 3.0
    assert kernel._exp_room(q, k, 0.5) == pytest.approx(40.0 / (2.0 * 3.0 / 0.5))
    assert kernel._exp_room(q, q, 0.1) == pytest.approx(40.0 / (4.0 / 0.1))
    huge = k * 1e20  # the sums' cap binds first: 30 ln 10 − ln 5 − ln 3e20 < 0, no shift-free factor
    assert kernel._exp_room(q, huge, 1.0) == 0.0


@pytest.mark.parametrize("t,free", [(0.1, True), (0.01, False)])
def test_fused_semihard_on_both_sides_of_the_bound_matches_float64_reference(t, free, decisions):
    # the fused blocks hold the filters' −∞: inside the bound their softmax is 2^{S log₂e}
    # unnormalised (exp2 is fast on −∞), outside it the max-shifted softmax
    from hardneg.negatives import create_strategy
    from tests import negatives_reference as NR

    z1, z2, _ = _views(B=16, d=8, seed=7)
    B = z1.shape[0]
    ours = create_strategy("semihard", temperature=t)(z1.float(), z2.float())
    z = torch.cat([z1, z2])
    S = (z / z.norm(dim=1, keepdim=True)).detach() @ (z / z.norm(dim=1, keepdim=True)).detach().T
    keep = NR.ref_semihard(S.numpy(), NR.in_batch_valid(B), NR.two_view_pos(B), 0.2)
    ref = NR.ref_weighted_infonce_t(z, z, NR.two_view_pos(B), keep, t=t)
    assert decisions and all(d == free for d in decisions)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(torch.autograd.grad(ours, [z1, z2]), torch.autograd.grad(ref, [z1, z2])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
