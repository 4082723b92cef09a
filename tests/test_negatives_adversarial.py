"""Adversarial sources: AdCo negatives get harder; the generator collapses without its regularisers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hardneg.negatives import AdversarialBank, NegativeGenerator, create_strategy

torch.set_num_threads(1)


def _data(n=64, d=16, seed=0, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(n, d, generator=g), dim=1)
    pos = F.normalize(q + noise * torch.randn(n, d, generator=g), dim=1)
    return q, pos


def test_adco_bank_gradient_is_the_analytic_one():
    """∇_{n_j} mean_i L_i = mean_i p_ij q_i / t_n (p: softmax over [positive, bank])."""
    q, pos = _data(8, 6)
    bank = AdversarialBank(5, dim=6, bank_temperature=0.3, seed=7)
    b = bank.bank.detach().clone().requires_grad_(True)
    loss = bank.adversary_loss(q, pos, b)
    (grad,) = torch.autograd.grad(loss, b)
    logits = torch.cat([(q * pos).sum(1, keepdim=True), q @ b.detach().T], 1) / 0.3
    p = torch.softmax(logits, 1)[:, 1:]
    torch.testing.assert_close(grad, p.T @ q / 0.3 / 8)


def test_adco_negatives_become_harder_during_training():
    q, pos = _data(noise=0.5)  # early-training views: cos(q, positive) ≈ 0.4
    s = create_strategy("adco", size=128, dim=16, seed=3)
    s.train()

    def hardness() -> tuple[float, float]:
        bank = s.sources[0].bank.detach()
        S = q @ bank.T
        return float(S.max(1).values.mean()), float(S.topk(8, dim=1).values.mean())

    top1_0, top8_0 = hardness()
    adv0 = None
    for _ in range(40):
        s(q, pos)
        adv0 = adv0 if adv0 is not None else s.last_diagnostics["adco_loss"]
    top1_1, top8_1 = hardness()
    print(
        f"\nAdCo: mean top-1 sim {top1_0:.3f} -> {top1_1:.3f}, top-8 {top8_0:.3f} -> {top8_1:.3f}, "
        f"bank loss {adv0:.4f} -> {s.last_diagnostics['adco_loss']:.4f}"
    )
    assert top1_1 > top1_0 + 0.2
    assert top8_1 > top8_0 + 0.05
    assert s.last_diagnostics["adco_loss"] > adv0
    torch.testing.assert_close(s.sources[0].bank.norm(dim=1), torch.ones(128))


def _train_generator(reg: bool, steps: int = 200):
    q, pos = _data()
    real = F.normalize(torch.randn(256, 16, generator=torch.Generator().manual_seed(9)), dim=1)
    G = NegativeGenerator(
        16,
        n_per_anchor=4,
        hidden=64,
        lr=1e-3,
        min_dist=0.3,
        lambda_dist=10.0 if reg else 0.0,
        lambda_div=1.0 if reg else 0.0,
        seed=0,
    )
    for _ in range(steps):
        G.train_step(q, pos, real)
    with torch.no_grad():
        g = G.generate(q)
    cos_p = (g * pos[:, None, :]).sum(-1)
    gram = g @ g.transpose(1, 2)
    pair = (gram.sum((1, 2)) - 4.0) / 12.0
    return cos_p, pair


def test_generator_collapses_without_regularisers_and_not_with_them():
    cos_p0, pair0 = _train_generator(reg=False)
    cos_p1, pair1 = _train_generator(reg=True)
    print(
        f"\ngenerator without regularisers: cos(g, positive) {cos_p0.mean():.3f}, "
        f"pairwise cos of an anchor's "
        f"negatives {pair0.mean():.3f}; with: {cos_p1.mean():.3f}, {pair1.mean():.3f}"
    )
    # collapse: an anchor's 4 negatives are (almost) one point, pulled towards the positive
    assert pair0.mean() > 0.9
    assert pair1.mean() < 0.5
    assert cos_p0.mean() > cos_p1.mean() + 0.15
    # the minimum-distance regulariser holds cos(g, p) <= 1 − δ = 0.7 (soft penalty: small slack)
    assert (cos_p1 > 0.75).float().mean() < 0.05


def test_generator_strategy_adds_owned_negatives_and_trains():
    q, pos = _data(8, 16)
    s = create_strategy("generator", dim=16, n_per_anchor=3)
    s.train()
    s(q, pos)
    assert s.last_diagnostics["n_candidates"] == 2 * 8 - 2 + 3
    assert "gen_loss_d" in s.last_diagnostics


def test_adversarial_option_errors():
    with pytest.raises(ValueError, match="'size'"):
        AdversarialBank(size=0)
    with pytest.raises(ValueError, match="'min_dist'"):
        NegativeGenerator(8, min_dist=0.0)
    with pytest.raises(ValueError, match="'lambda_div'"):
        NegativeGenerator(8, lambda_div=-1.0)


def test_generator_and_adco_resume_exactly():
    q, pos = _data(8, 16)
    for make in (
        lambda: create_strategy("generator", dim=16, n_per_anchor=2),
        lambda: create_strategy("adco", size=32, dim=16),
    ):
        a = make().train()
        a(q, pos)
        b = make().train()
        b.load_state_dict(a.state_dict())
        for _ in range(2):
            assert a(q, pos).item() == b(q, pos).item()
