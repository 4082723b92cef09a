"""The kernel on CUDA: every named loss and its gradients equal the CPU float64 values, half-precision
inputs are accumulated in float32, and the default chunk uses the device's memory. Skipped without
a CUDA device."""

import pytest
import torch

import hardneg.losses as L
from hardneg.losses.kernel import default_chunk

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

NAMED = {
    "ucl": lambda z1, z2, y: L.ucl(z1, z2, t=0.5),
    "supcon": lambda z1, z2, y: L.supcon(z1, z2, y, t=0.1),
    "scl": lambda z1, z2, y: L.scl(z1, z2, y, t=0.5),
    "hscl": lambda z1, z2, y: L.hscl(z1, z2, y, beta=1.0, t=0.5),
    "hucl": lambda z1, z2, y: L.hucl(z1, z2, beta=0.5, t=0.5),
    "dcl": lambda z1, z2, y: L.dcl(z1, z2, tau_plus=0.1, t=0.5),
    "decoupled": lambda z1, z2, y: L.decoupled(z1, z2, t=0.1),
}


def _inputs(B=300, d=32, classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.3 * torch.randn(B, d, generator=g, dtype=torch.float64)
    return z1, z2, torch.randint(0, classes, (B,), generator=g)


def _value_and_grads(name, z1, z2, y):
    z1 = z1.detach().requires_grad_(True)
    z2 = z2.detach().requires_grad_(True)
    loss = NAMED[name](z1, z2, y)
    g1, g2 = torch.autograd.grad(loss, [z1, z2])
    return loss.detach().double().cpu(), g1.double().cpu(), g2.double().cpu()


@pytest.mark.parametrize("name", sorted(NAMED))
def test_cuda_float32_equals_cpu_float64(name):
    z1, z2, y = _inputs()
    ref = _value_and_grads(name, z1, z2, y)
    ours = _value_and_grads(name, z1.float().cuda(), z2.float().cuda(), y.cuda())
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["ucl", "supcon", "hscl"])
def test_cuda_half_inputs_accumulate_in_float32(name, dtype):
    z1, z2, y = _inputs()
    half = (z1.to(dtype), z2.to(dtype))  # the same rounded inputs on both sides
    ref = _value_and_grads(name, half[0].double(), half[1].double(), y)
    ours = _value_and_grads(name, half[0].cuda(), half[1].cuda(), y.cuda())
    assert ours[1].dtype == torch.float64  # cast above; the kernel returned the input dtype
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-2, atol=1e-3)
    for a, b in zip(ours[1:], ref[1:]):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-4)


def test_cudadefault_chunk_uses_the_device():
    n = 65_536
    assert default_chunk(n, n, torch.device("cuda")) >= default_chunk(n, n, torch.device("cpu"))
