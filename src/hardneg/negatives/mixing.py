r"""Synthetic hard negatives by mixing (MoCHi, Kalantidis et al., "Hard Negative Mixing for
Contrastive Learning", NeurIPS 2020).

For a query q with its candidate negatives ordered by similarity, take the N hardest
``ñ_1..ñ_N``. Then create

- ``s`` mixes of pairs of hard negatives: ``h_k = α ñ_i + (1 − α) ñ_j``, α ~ U(0, 1), i ≠ j;
- ``s'`` mixes of the query with a hard negative: ``h'_k = β q + (1 − β) ñ_j``, β ~ U(0, β_max),
  β_max < 0.5 so the negative's share dominates. β is the paper's symbol for the query's share, not
  hardneg's tilt ``beta``: its bound β_max is the option ``query_mix_max``;

each re-normalised to the unit sphere (``h / ‖h‖``). They are added as negatives of that query only,
and are constants (no gradient flows through them, as in the paper).

Since ``‖α a + (1−α) b‖ ≤ 1`` for unit a, b, a normalised mix is at least as similar to q as the
weighted mean of its parents' similarities whenever that mean is positive: mixes are harder.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from hardneg.losses.checks import check_int, check_number
from hardneg.negatives.sources import NOBODY, Anchors, Candidates, Source


def _check_query_mix_max(v: object) -> float:
    return check_number("mixing option 'query_mix_max' (MoCHi's β_max, the query share)", v, 0.0, 0.5, hi_open=True)


def mochi_mix(
    q: Tensor,
    hard: Tensor,
    s: int,
    s_prime: int,
    query_mix_max: float = 0.45,
    generator: torch.Generator | None = None,
) -> Tensor:
    """MoCHi synthetic negatives for each query.

    Args:
        q: (n, d) unit queries.
        hard: (n, N, d) each query's N hardest negatives (unit rows), N ≥ 2 when ``s`` > 0.
        s: pair mixes per query; s_prime: query mixes per query.
        query_mix_max: MoCHi's β_max, the upper bound of the query's share β ~ U(0, β_max) (the
            paper's β, not the tilt); must lie in [0, 0.5).

    Returns:
        (n, s + s', d) unit vectors: first the ``s`` pair mixes, then the ``s'`` query mixes.
    """
    if hard.dim() != 3 or hard.shape[0] != q.shape[0] or hard.shape[2] != q.shape[1]:
        raise ValueError(f"hard must have shape (n={q.shape[0]}, N, d={q.shape[1]}), got {tuple(hard.shape)}")
    query_mix_max = _check_query_mix_max(query_mix_max)
    n, N, d = hard.shape
    if s > 0 and N < 2:
        raise ValueError(f"mixing pairs (s = {s}) needs at least 2 hard negatives per query, got N = {N}")
    dev = q.device
    outs = []
    if s > 0:
        i = torch.randint(N, (n, s), generator=generator).to(dev)
        j = (i + torch.randint(1, N, (n, s), generator=generator).to(dev)) % N  # j ≠ i
        a = torch.rand(n, s, 1, generator=generator).to(dev, q.dtype)
        hi = torch.gather(hard, 1, i[..., None].expand(n, s, d))
        hj = torch.gather(hard, 1, j[..., None].expand(n, s, d))
        outs.append(F.normalize(a * hi + (1 - a) * hj, dim=-1))
    if s_prime > 0:
        j = torch.randint(N, (n, s_prime), generator=generator).to(dev)
        b = (torch.rand(n, s_prime, 1, generator=generator) * query_mix_max).to(dev, q.dtype)
        hj = torch.gather(hard, 1, j[..., None].expand(n, s_prime, d))
        outs.append(F.normalize(b * q[:, None, :] + (1 - b) * hj, dim=-1))
    if not outs:
        return q.new_zeros(n, 0, d)
    return torch.cat(outs, 1)


class Mixing(Source):
    """MoCHi source: mixes the N hardest of the candidates gathered so far (batch, queue, pool…).

    Args:
        n_hard: N, the hardest negatives mixed (paper: 1024 of a 16k queue). Capped at the number
            of valid candidates of each query.
        s: pair mixes per query (paper: 1024). s_prime: query mixes per query (paper: 256).
        query_mix_max: MoCHi's β_max, the bound of the query's share β (the paper's symbol, not
            the tilt ``beta``), < 0.5 (paper: 0.5 exclusive). Schedulable.
        seed: seed of the mixing coefficients' generator.
    """

    kind = "mixing"
    schedulable = ("query_mix_max", "s", "s_prime", "n_hard")
    reads_candidate_rule = True

    def __init__(
        self, n_hard: int = 64, s: int = 32, s_prime: int = 16, query_mix_max: float = 0.45, seed: int = 0
    ) -> None:
        super().__init__()
        self.n_hard = check_int("mixing option 'n_hard'", n_hard)
        self.s, self.s_prime = check_int("mixing option 's'", s, 0), check_int("mixing option 's_prime'", s_prime, 0)
        self.query_mix_max = _check_query_mix_max(query_mix_max)
        self.generator = torch.Generator().manual_seed(check_int("mixing option 'seed'", seed, 0))

    def get_extra_state(self) -> dict:
        return {"rng": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["rng"])

    @torch.no_grad()
    def hardest(
        self,
        anchors: Anchors,
        cands: Candidates,
        n_hard: int,
        chunk: int = 1024,
        valid: Callable[[Tensor, slice], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """((n, N, d), (n,) bool): each anchor's ``n_hard`` most similar valid candidates
        (detached), and whether the anchor has any valid candidate. ``valid(S, rows)`` is the mask
        of the candidates each anchor may use (every one when None). An anchor with fewer than N
        valid candidates repeats its hardest one, so only valid candidates are ever mixed."""
        q = anchors.q.detach()
        k = cands.k.detach()
        out, has = [], []
        for r0 in range(0, q.shape[0], chunk):
            rows = slice(r0, min(q.shape[0], r0 + chunk))
            S = q[rows] @ k.T
            if valid is not None:
                S = S.masked_fill(~valid(S, rows), float("-inf"))
            top = S.topk(n_hard, dim=1)
            bad = torch.isneginf(top.values)
            idx = torch.where(bad, top.indices[:, :1], top.indices)
            out.append(k[idx])
            has.append(~bad[:, 0])
        return torch.cat(out), torch.cat(has)

    def extend(
        self, anchors: Anchors, cands: Candidates, step: int, valid: Callable[[Tensor, slice], Tensor] | None = None
    ) -> None:
        s, sp = int(round(self.s)), int(round(self.s_prime))
        if s + sp == 0:
            return
        n_hard = max(2, min(int(round(self.n_hard)), cands.m - 2))
        hard, has = self.hardest(anchors, cands, n_hard, valid=valid)
        mixes = mochi_mix(anchors.q.detach(), hard, s, sp, self.query_mix_max, self.generator)
        n = anchors.n
        owner = torch.arange(n, device=cands.k.device)
        owner = torch.where(has.to(owner.device), owner, torch.full_like(owner, NOBODY))
        owner = owner.repeat_interleave(s + sp)
        cands.append("mixing", mixes.reshape(n * (s + sp), -1), owner=owner)
