"""Sources: queue FIFO semantics, momentum encoder, FAISS pool, MoCHi mixing."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hardneg.negatives import ExternalPool, InBatch, MemoryQueue, Mixing, MomentumEncoder, Strategy, create_strategy
from hardneg.negatives.mixing import mochi_mix
from tests.negatives_reference import unit

torch.set_num_threads(1)


def _rand(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_queue_fifo_order_size_and_no_empty_slots():
    q = MemoryQueue(size=5)
    keys, labels, ids = q.contents()
    assert keys.shape[0] == 0 and len(q) == 0  # empty: nothing counts
    batches = [_rand(2, 3, s) for s in range(4)]
    for i, b in enumerate(batches):
        q.enqueue(b, labels=torch.tensor([i, i]), ids=torch.tensor([10 * i, 10 * i + 1]))
        keys, labels, ids = q.contents()
        expect = torch.cat(batches[: i + 1])[-5:]
        torch.testing.assert_close(keys, expect)  # oldest first, last `size` keys
        assert len(q) == min(2 * (i + 1), 5)
    assert ids.tolist() == [11, 20, 21, 30, 31]
    assert labels.tolist() == [1, 2, 2, 3, 3]
    q.enqueue(_rand(7, 3, 9), ids=torch.arange(100, 107))  # more than size: only the last 5 stay
    assert q.contents()[2].tolist() == [102, 103, 104, 105, 106]


def test_queue_state_dict_roundtrip():
    q = MemoryQueue(size=4)
    q.enqueue(_rand(3, 6, 0), ids=torch.arange(3))
    q2 = MemoryQueue(size=4)
    q2.load_state_dict(q.state_dict())
    for a, b in zip(q.contents(), q2.contents()):
        torch.testing.assert_close(a, b)
    assert int(q2.ptr) == 3 and len(q2) == 3


def test_queue_excludes_its_own_positive_by_id_and_counts_only_filled_slots():
    """Step 1 puts keys of ids 0..3 in the queue; at step 2 the same ids come back: their queued
    copies must not be negatives, and the 60 empty slots never count."""
    B, d = 4, 5
    s = Strategy(source=[InBatch(symmetric=False), MemoryQueue(size=64)], t=0.2)
    z1, z2 = _rand(B, d, 1), _rand(B, d, 2)
    s(z1, z2, ids=torch.arange(B))
    assert s.last_diagnostics["n_candidates_total"] == B  # empty queue contributed nothing
    z1b = z2 + 0.01 * _rand(B, d, 3)  # anchors nearly identical to their queued keys
    s(z1b, _rand(B, d, 4), ids=torch.arange(B))
    # candidates: 4 batch keys + 4 queued keys; per anchor: 3 other batch keys + 3 other queued keys
    assert s.last_diagnostics["n_candidates_total"] == 2 * B
    assert s.last_diagnostics["n_candidates"] == 2 * B - 2
    assert s.last_diagnostics["sim_p95"] < 0.99  # the near-identical queued copy is excluded
    s2 = Strategy(source=[InBatch(symmetric=False), MemoryQueue(size=64)], t=0.2)
    s2(z1, z2)  # without ids the queued copy cannot be recognised
    s2(z1b, _rand(B, d, 4))
    assert s2.last_diagnostics["n_candidates"] == 2 * B - 1


def test_momentum_encoder_is_an_ema():
    torch.manual_seed(0)
    enc = torch.nn.Linear(3, 2)
    me = MomentumEncoder(enc, momentum=0.9)
    before = me.ema.weight.clone()
    with torch.no_grad():
        enc.weight.add_(1.0)
    me.update(enc)
    torch.testing.assert_close(me.ema.weight, 0.9 * before + 0.1 * enc.weight)
    assert not me.ema.weight.requires_grad
    with pytest.raises(ValueError, match="momentum"):
        MomentumEncoder(enc, momentum=1.0)


def test_pool_returns_exact_nearest_neighbours_from_tensor_npy_and_faiss(tmp_path):
    pool = _rand(50, 8, 0)
    q = _rand(6, 8, 1)
    ref = np.argsort(-(q.numpy() @ pool.numpy().T), axis=1)[:, :4]
    np.save(tmp_path / "pool.npy", pool.numpy())
    index = faiss.IndexFlatIP(8)
    index.add(pool.numpy())
    for src in (pool, str(tmp_path / "pool.npy"), index):
        p = ExternalPool(src, k_per_anchor=4)
        _, I = p.search(q, 4)
        assert (I.numpy() == ref).all()
    with pytest.raises(FileNotFoundError):
        ExternalPool(str(tmp_path / "missing.npy"))


def test_pool_source_gives_each_anchor_its_own_neighbours():
    B, d = 3, 8
    pool = _rand(40, d, 5)
    s = Strategy(source=ExternalPool(pool, k_per_anchor=4), t=0.5)
    z1, z2 = _rand(B, d, 6), _rand(B, d, 7)
    s(z1, z2)
    # each of the 2B anchors: 2B − 2 batch negatives + its own 4 pool neighbours
    assert s.last_diagnostics["n_candidates"] == 2 * B - 2 + 4
    assert s.last_diagnostics["n_candidates_total"] == 2 * B + 2 * B * 4


def test_pool_dynamic_remining_refreshes_every_n_steps():
    calls = []

    def encode():
        calls.append(1)
        return _rand(20, 4, len(calls))

    s = Strategy(source=ExternalPool(_rand(20, 4, 0), k_per_anchor=2, encode_fn=encode, refresh_every=2))
    for step in range(5):
        s(_rand(2, 4, 10 + step), _rand(2, 4, 20 + step))
    assert len(calls) == 2  # at steps 2 and 4
    assert s.last_diagnostics["pool_refreshes"] == 2


def test_mochi_mixes_are_unit_and_harder_than_their_parents():
    n, N, d = 32, 8, 16
    q = _rand(n, d, 0)
    # hard negatives: moderately similar to q
    hard = F.normalize(q[:, None, :] + 1.2 * torch.randn(n, N, d, generator=torch.Generator().manual_seed(1)), dim=-1)
    g = torch.Generator().manual_seed(2)
    mixes = mochi_mix(q, hard, s=20, s_prime=10, query_mix_max=0.45, generator=g)
    assert mixes.shape == (n, 30, d)
    torch.testing.assert_close(mixes.norm(dim=-1), torch.ones(n, 30))
    sim_mix = (mixes * q[:, None, :]).sum(-1)
    sim_parents = (hard * q[:, None, :]).sum(-1)
    print(
        f"\nMoCHi: mean sim of hard negatives {sim_parents.mean():.3f}, of pair mixes "
        f"{sim_mix[:, :20].mean():.3f}, of query mixes {sim_mix[:, 20:].mean():.3f}"
    )
    assert sim_mix[:, :20].mean() > sim_parents.mean()
    assert sim_mix[:, 20:].mean() > sim_mix[:, :20].mean()
    with pytest.raises(ValueError, match="query_mix_max"):
        mochi_mix(q, hard, 2, 2, query_mix_max=0.5)


def test_mochi_literal_single_mix():
    """With a one-point distribution we can check the formula literally."""
    q = torch.tensor([[1.0, 0.0, 0.0]])
    hard = torch.tensor([[[0.6, 0.8, 0.0], [0.6, 0.0, 0.8]]])
    g = torch.Generator().manual_seed(0)
    out = mochi_mix(q, hard, s=1, s_prime=0, generator=g)
    g = torch.Generator().manual_seed(0)
    i = int(torch.randint(2, (1, 1), generator=g))
    j = (i + int(torch.randint(1, 2, (1, 1), generator=g))) % 2
    a = float(torch.rand(1, 1, 1, generator=g))
    expect = unit(a * hard[0, i].numpy() + (1 - a) * hard[0, j].numpy())
    np.testing.assert_allclose(out[0, 0].numpy(), expect, rtol=1e-6)


def test_mochi_strategy_adds_owned_synthetic_negatives():
    B, d = 4, 8
    s = create_strategy("mochi", size=16, n_hard=4, s=3, s_prime=2)
    for step in range(3):
        s(_rand(B, d, step), _rand(B, d, 10 + step), ids=torch.arange(step * B, step * B + B))
    # anchors are the B queries; candidates: B batch keys + 8 queued keys + B·(3+2) mixes
    assert s.last_diagnostics["n_candidates_total"] == B + 8 + B * 5
    assert s.last_diagnostics["n_candidates"] == (B - 1) + 8 + 5


def test_mixing_option_errors():
    with pytest.raises(ValueError, match="'n_hard'"):
        Mixing(n_hard=0)
    with pytest.raises(ValueError, match="query_mix_max"):
        Mixing(query_mix_max=0.6)


def test_mochi_mixes_only_valid_candidates():
    """With a label filter and few other-label candidates, an anchor's mixes are built only from
    its other-label candidates (never from its positive or a same-label sample)."""
    B, d = 4, 6
    z1, z2 = _rand(B, d, 1), _rand(B, d, 2)
    labels = torch.tensor([0, 0, 0, 1])
    from hardneg.negatives import LabelFilter

    mix = Mixing(n_hard=8, s=4, s_prime=0, seed=0)
    s = Strategy(source=[InBatch(symmetric=False), mix], filters=[LabelFilter()], t=0.5)
    seen = {}
    hardest = mix.hardest

    def spy(anchors, cands, n_hard, chunk=1024, valid=None):  # the mask the strategy hands the source
        seen["valid"] = valid(anchors.q @ cands.k.T, slice(0, anchors.n))
        seen["hard"] = hardest(anchors, cands, n_hard, chunk, valid)
        return seen["hard"]

    mix.hardest = spy
    s(z1, z2, labels=labels)
    # the batch block of keys: another label only (the positive key has the anchor's label)
    other = (labels[:, None] != labels[None, :]).numpy()
    assert (seen["valid"][:, :B].numpy() == other).all()
    # pair mixes of anchor 0 lie in the span of its only other-label candidate z2[3]: they equal it
    hard, has = seen["hard"]
    assert has.all()
    torch.testing.assert_close(hard[0], torch.nn.functional.normalize(z2[3], dim=0).expand(hard.shape[1], d))
