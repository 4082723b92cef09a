r"""Adversarial negatives.

(a) `AdversarialBank` — AdCo (Hu et al., "AdCo: Adversarial Contrast for Efficient Learning
of Unsupervised Representations from Self-Trained Negative Adversaries", CVPR 2021). A bank of K
learned negative embeddings ``n_1..n_K`` is a second player: the encoder minimises the contrastive
loss, the bank **maximises** it. With its own temperature ``t_n`` (AdCo's τ_n, 0.02) the bank's
loss per query is

    L_i = −log( e^{q_i·k_i/t_n} / (e^{q_i·k_i/t_n} + Σ_j e^{q_i·n_j/t_n}) ),

and each step takes one gradient-**ascent** step ``n_j ← n_j + η ∇_{n_j} mean_i L_i`` (SGD with
momentum 0.9, AdCo's η = 3), then re-normalises. ``∇_{n_j} L_i = p_ij q_i / t_n`` with ``p_ij`` the
softmax weight of n_j, so the bank moves towards the queries that find it most confusing: the
negatives get harder. In the encoder's loss the bank rows are constants.

(b) `NegativeGenerator` — a generator network ``G(q, z)`` (anchor q, noise z) outputs a unit
vector meant to be a negative close to, but distinct from, q; a discriminator ``D`` tells real
candidate negatives (label 1) from generated ones (label 0). Per step:

    L_D = BCE(D(real), 1) + BCE(D(g), 0)
    L_G = BCE(D(g), 1) − λ_h · mean cos(g, q)
          + λ_dist · mean [cos(g, p) − (1 − δ)]_+²           (minimum distance to the positive)
          + λ_div · mean_{a≠b} cos(g_a, g_b)                   (diversity across one anchor's negatives)

The hardness term alone drives g onto the positive (collapse); the distance term keeps
``cos(g, p) ≤ 1 − δ`` (i.e. ``‖g − p‖ ≥ sqrt(2δ)``) and the diversity term keeps the
``n_per_anchor`` negatives of an anchor apart. Both regularisers can be switched off
(``lambda_dist = lambda_div = 0``) to see the collapse (tests/test_negatives_adversarial.py).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardneg.losses.checks import check_int, check_nonneg, check_number, check_positive
from hardneg.negatives.sources import Anchors, Candidates, Source


class AdversarialBank(Source):
    """AdCo's learned negatives: ``size`` unit vectors trained by gradient ascent (see module doc).

    Args:
        size: K, number of learned negatives (AdCo: 65536; preset ``adco``: 1024).
        dim: embedding dimension; inferred from the first batch when None (then initialised from
            random unit vectors drawn with ``seed``).
        lr: the bank's own learning rate η (AdCo ``mem_lr`` = 3.0). bank_temperature: the
            temperature τ_n of the bank's own loss (AdCo ``mem_t`` = 0.02), not the encoder's t.
            momentum: SGD momentum (0.9).
    """

    kind = "adversarial_bank"
    schedulable = ("lr", "bank_temperature")

    def __init__(
        self,
        size: int = 1024,
        dim: int | None = None,
        lr: float = 3.0,
        bank_temperature: float = 0.02,
        momentum: float = 0.9,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.size = check_int("option 'size'", size)
        self.lr = check_positive("option 'lr'", lr)
        self.bank_temperature = check_positive("option 'bank_temperature'", bank_temperature)
        self.momentum = check_number("option 'momentum'", momentum, 0.0, 1.0, hi_open=True)
        self.seed = check_int("option 'seed'", seed, 0)
        self.bank = nn.Parameter(torch.zeros(0, 0), requires_grad=False)
        self.register_buffer("velocity", torch.zeros(0, 0))
        self.last_adv_loss = float("nan")
        if dim is not None:
            self._init(check_int("option 'dim'", dim), torch.device("cpu"), torch.float32)

    def _init(self, dim: int, device: torch.device, dtype: torch.dtype) -> None:
        g = torch.Generator().manual_seed(self.seed)
        self.bank = nn.Parameter(
            F.normalize(torch.randn(self.size, dim, generator=g), dim=1).to(device, dtype),
            requires_grad=False,
        )
        self.velocity = torch.zeros_like(self.bank)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        for name in ("bank", "velocity"):
            v = state_dict.get(prefix + name)
            if v is not None and v.shape != getattr(self, name).shape:
                if name == "bank":
                    self.bank = nn.Parameter(torch.empty_like(v), requires_grad=False)
                else:
                    self.velocity = torch.empty_like(v)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extend(self, anchors: Anchors, cands: Candidates, step: int) -> None:
        if self.bank.numel() == 0:
            self._init(anchors.q.shape[1], anchors.q.device, torch.float32)
        cands.append("adversarial", self.bank.detach().to(cands.k.dtype))

    def adversary_loss(self, q: Tensor, k_pos: Tensor, bank: Tensor) -> Tensor:
        """The bank's InfoNCE (temperature ``bank_temperature``), mean over queries; q, k_pos constants."""
        lp = (q * k_pos).sum(1, keepdim=True) / self.bank_temperature
        ln = q @ bank.T / self.bank_temperature
        return (torch.logsumexp(torch.cat([lp, ln], 1), 1) - lp[:, 0]).mean()

    def ascend(self, q: Tensor, k_pos: Tensor) -> float:
        """One gradient-ascent step of the bank on queries ``q`` with positives ``k_pos``."""
        q = F.normalize(q.detach().float(), dim=1)
        k_pos = F.normalize(k_pos.detach().float(), dim=1)
        with torch.enable_grad():
            bank = self.bank.detach().float().requires_grad_(True)
            loss = self.adversary_loss(q, k_pos, bank)
            (grad,) = torch.autograd.grad(loss, bank)
        with torch.no_grad():
            self.velocity.mul_(self.momentum).add_(grad.to(self.velocity.dtype))
            self.bank.add_(self.velocity, alpha=self.lr)  # ascent
            self.bank.copy_(F.normalize(self.bank, dim=1))
        self.last_adv_loss = float(loss.detach())
        return self.last_adv_loss

    def after_step(self, anchors: Anchors, cands: Candidates, step: int) -> None:
        if not self.training or anchors.pos_index is None:
            return
        has = anchors.pos_index >= 0
        self.ascend(anchors.q[has], cands.k[anchors.pos_index[has]])

    def diagnostics(self) -> dict[str, float]:
        return {"adco_loss": self.last_adv_loss}


class _MLP(nn.Sequential):
    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, d_out)
        )


class NegativeGenerator(Source):
    """Generator of hard negatives trained against a discriminator (see module doc).

    Args:
        dim: embedding dimension. n_per_anchor: generated negatives per anchor.
        noise_dim, hidden: sizes of the noise and of the MLPs. lr: Adam learning rate of G and D.
        min_dist: δ, the generated negative must keep ``cos(g, p) ≤ 1 − δ``.
        lambda_hard, lambda_dist, lambda_div: weights of hardness, distance and diversity terms
            (set the last two to 0 to disable the regularisers).
    """

    kind = "generator"
    schedulable = ("lambda_hard", "min_dist")

    def __init__(
        self,
        dim: int,
        n_per_anchor: int = 4,
        noise_dim: int = 16,
        hidden: int = 128,
        lr: float = 1e-3,
        min_dist: float = 0.3,
        lambda_hard: float = 1.0,
        lambda_dist: float = 10.0,
        lambda_div: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.dim = check_int("option 'dim'", dim)
        self.n_per_anchor = check_int("option 'n_per_anchor'", n_per_anchor)
        self.noise_dim = check_int("option 'noise_dim'", noise_dim)
        hidden = check_int("option 'hidden'", hidden)
        lr = check_positive("option 'lr'", lr)
        self.min_dist = check_number("option 'min_dist' (δ, cos(g, p) ≤ 1 − δ)", min_dist, 0.0, 2.0,
                                     lo_open=True, hi_open=True)
        self.lambda_hard = check_nonneg("option 'lambda_hard'", lambda_hard)
        self.lambda_dist = check_nonneg("option 'lambda_dist'", lambda_dist)
        self.lambda_div = check_nonneg("option 'lambda_div'", lambda_div)
        seed = check_int("option 'seed'", seed, 0)
        g = torch.Generator().manual_seed(seed)
        self.G = _MLP(self.dim + self.noise_dim, hidden, self.dim)
        self.D = _MLP(self.dim, hidden, 1)
        with torch.no_grad():
            for p in list(self.G.parameters()) + list(self.D.parameters()):
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / max(1, p.shape[-1]) ** 0.5))
        self.noise_gen = torch.Generator().manual_seed(seed + 1)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=lr)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=lr)
        self.last: dict[str, float] = {}

    def get_extra_state(self) -> dict:
        return {
            "rng": self.noise_gen.get_state(),
            "opt_g": copy.deepcopy(self.opt_g.state_dict()),  # not references to the live state
            "opt_d": copy.deepcopy(self.opt_d.state_dict()),
        }

    def set_extra_state(self, state: dict) -> None:
        self.noise_gen.set_state(state["rng"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])

    def generate(self, q: Tensor) -> Tensor:
        """(n, n_per_anchor, d) unit negatives for unit anchors ``q`` (n×d); differentiable in G."""
        n, r = q.shape[0], self.n_per_anchor
        z = torch.randn(n, r, self.noise_dim, generator=self.noise_gen).to(q.device, q.dtype)
        x = torch.cat([q[:, None, :].expand(n, r, q.shape[1]), z], -1)
        return F.normalize(q[:, None, :] + self.G(x), dim=-1)

    def train_step(self, q: Tensor, pos: Tensor, real: Tensor) -> dict[str, float]:
        """One D step and one G step on anchors ``q``, their positives ``pos`` and real negatives."""
        q, pos, real = (F.normalize(x.detach().float(), dim=-1) for x in (q, pos, real))
        with torch.enable_grad():
            g = self.generate(q)
            d_real = self.D(real)
            d_fake = self.D(g.detach().reshape(-1, self.dim))
            loss_d = F.binary_cross_entropy_with_logits(
                d_real, torch.ones_like(d_real)
            ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
            d_g = self.D(g.reshape(-1, self.dim))
            fool = F.binary_cross_entropy_with_logits(d_g, torch.ones_like(d_g))
            cos_q = (g * q[:, None, :]).sum(-1)
            cos_p = (g * pos[:, None, :]).sum(-1)
            dist = F.relu(cos_p - (1.0 - self.min_dist)).pow(2).mean()
            r = self.n_per_anchor
            if r > 1:
                gram = g @ g.transpose(1, 2)
                div = (gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(1)).mean() / (r * (r - 1))
            else:
                div = g.new_zeros(())
            loss_g = fool - self.lambda_hard * cos_q.mean() + self.lambda_dist * dist + self.lambda_div * div
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_g.step()
        self.last = {
            "gen_loss_d": float(loss_d.detach()),
            "gen_loss_g": float(loss_g.detach()),
            "gen_cos_anchor": float(cos_q.detach().mean()),
            "gen_cos_positive": float(cos_p.detach().mean()),
            "gen_pairwise_cos": float(div.detach()),
        }
        return self.last

    def extend(self, anchors: Anchors, cands: Candidates, step: int) -> None:
        with torch.no_grad():
            g = self.generate(anchors.q.detach().float())
        n = anchors.n
        owner = torch.arange(n, device=cands.k.device).repeat_interleave(self.n_per_anchor)
        cands.append("generator", g.reshape(-1, self.dim).to(cands.k.dtype), owner=owner)

    def after_step(self, anchors: Anchors, cands: Candidates, step: int) -> None:
        if not self.training or anchors.pos_index is None:
            return
        name, a, b = cands.blocks[0]
        real = cands.k[a:b].detach()
        has = anchors.pos_index >= 0
        self.train_step(anchors.q[has], cands.k[anchors.pos_index[has]], real)

    def diagnostics(self) -> dict[str, float]:
        return dict(self.last)
