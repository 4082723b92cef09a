"""float16 / bfloat16 inputs: every named loss gives finite gradients of the input dtype, close to the
float32 gradients of the same (already rounded) inputs.

The kernel accumulates in float32 whatever the input dtype, so what remains is the rounding of the
normalised inputs and of the returned gradient: a few units of the dtype's machine epsilon relative
to the largest gradient entry (measured at most ~2.7 eps over many seeds; the bound is 4 eps).
"""

import pytest
import torch

import hardneg.losses as L

LOSSES = {
    "ucl": lambda z1, z2, y: L.ucl(z1, z2),
    "scl": lambda z1, z2, y: L.scl(z1, z2, y),
    "supcon": lambda z1, z2, y: L.supcon(z1, z2, y),
    "hucl": lambda z1, z2, y: L.hucl(z1, z2, beta=1.0, tau_plus=0.1),
    "dcl": lambda z1, z2, y: L.dcl(z1, z2),
    "hscl": lambda z1, z2, y: L.hscl(z1, z2, y),
    "decoupled": lambda z1, z2, y: L.decoupled(z1, z2),
    "triplet": lambda z1, z2, y: L.triplet(z1, z2, y),
    "margin": lambda z1, z2, y: L.margin(z1, z2, y),
}
GRAD_TOL_EPS = 4.0
LOSS_TOL_EPS = 2.0



def _cases():
    for dtype in (torch.float16, torch.bfloat16):
        for name in LOSSES:
            yield pytest.param(name, dtype, id=f"{name}-{str(dtype)[6:]}")


@pytest.mark.parametrize("name,dtype", list(_cases()))
def test_half_precision_gradients_are_finite_and_close_to_float32(name, dtype):
    eps = torch.finfo(dtype).eps
    fn = LOSSES[name]
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        z1 = torch.randn(16, 8, generator=g)
        z2 = z1 + 0.7 * torch.randn(16, 8, generator=g)
        y = torch.randint(0, 4, (16,), generator=g)
        h1, h2 = z1.to(dtype).requires_grad_(), z2.to(dtype).requires_grad_()
        f1, f2 = h1.detach().float().requires_grad_(), h2.detach().float().requires_grad_()  # same values
        loss_h, loss_f = fn(h1, h2, y), fn(f1, f2, y)
        assert loss_h.dtype == dtype
        grads_h = torch.autograd.grad(loss_h, [h1, h2])
        grads_f = torch.autograd.grad(loss_f, [f1, f2])
        lh, lf = float(loss_h.detach()), float(loss_f.detach())
        assert abs(lh - lf) <= LOSS_TOL_EPS * eps * max(1.0, abs(lf))
        scale = max(float(gf.abs().max()) for gf in grads_f)
        for gh, gf in zip(grads_h, grads_f):
            assert gh.dtype == dtype
            assert torch.isfinite(gh).all(), f"seed {seed}: non-finite {dtype} gradient"
            err = float((gh.float() - gf).abs().max())
            assert err <= GRAD_TOL_EPS * eps * scale, f"seed {seed}: gradient error {err / (eps * scale):.2f} eps"
