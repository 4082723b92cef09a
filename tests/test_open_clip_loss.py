"""hardneg's ClipLoss against open_clip's own ``ClipLoss`` (the installed open-clip-torch), on one
process and on 2 gloo processes with DDP towers, for every (local_loss, gather_with_grad)."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from hardneg.integrations.open_clip import ClipLoss
from tests.distributed_workers import CLIP_MODES, B, Towers, clip_batch, clip_worker, free_port, run_clip_case
from tests.open_clip_reference import open_clip_loss_module

OPEN_CLIP = open_clip_loss_module()
pytestmark = pytest.mark.skipif(OPEN_CLIP is None, reason="open-clip-torch is not installed (make setup installs it)")
ATOL = 1e-5
MODE_IDS = [f"local_loss={a}-gather_with_grad={b}" for a, b in CLIP_MODES]


def _features(B=7, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(B, d, generator=g, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(img + 0.8 * torch.randn(B, d, generator=g, dtype=torch.float64), dim=1)
    return img, txt


@pytest.mark.parametrize("kw", [{}, {"local_loss": True, "gather_with_grad": True, "cache_labels": True}])
def test_clip_loss_equals_open_clip_value_and_gradients(kw):
    """One process (world_size=1, where open_clip ignores local_loss / gather_with_grad): the same
    value and the same gradients for both features and the logit scale, twice in a row (cached labels).
    The features are normalised in the graph, as open_clip's model does before its loss."""
    img, txt = _features()
    ours, ref = ClipLoss(**kw), OPEN_CLIP.ClipLoss(**kw)
    norm = torch.nn.functional.normalize
    for _ in range(2):
        raw = (2 * img, 3 * txt, torch.tensor(2.6, dtype=torch.float64))
        leaves = [t.clone().requires_grad_(True) for t in raw]
        got = ours(norm(leaves[0], dim=1), norm(leaves[1], dim=1), leaves[2].exp(), output_dict=True)
        got = got["contrastive_loss"]
        g_got = torch.autograd.grad(got, leaves)
        ref_leaves = [t.clone().requires_grad_(True) for t in raw]
        want = ref(norm(ref_leaves[0], dim=1), norm(ref_leaves[1], dim=1), ref_leaves[2].exp())
        g_want = torch.autograd.grad(want, ref_leaves)
        assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
        for a, b in zip(g_got, g_want, strict=True):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_open_clip_keywords_are_checked():
    with pytest.raises(ValueError, match="use_horovod=True is not supported"):
        ClipLoss(use_horovod=True)
    with pytest.raises(ValueError, match=r"rank must be an integer in \[0, world_size = 2\), got 2"):
        ClipLoss(rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size must be an integer >= 1, got 0"):
        ClipLoss(world_size=0)
    img, txt = _features()
    with pytest.raises(ValueError, match=r"world_size=2, rank=0 but the torch.distributed process group has 1"):
        ClipLoss(world_size=2, local_loss=True)(img, txt, 10.0)


@pytest.fixture(scope="module")
def two_process_clip(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip_ddp")
    mp.spawn(clip_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"clip{r}.pt") for r in range(2)]


def _assert_grads(got, want, scale=None):
    for pname, v in want.items():
        s = 1.0 if scale is None else scale(pname)
        assert torch.allclose(got[pname], v * s, atol=ATOL, rtol=0), pname


@pytest.mark.slow  # starting 2 processes takes 10-30 s on a busy machine
@pytest.mark.parametrize("mode", CLIP_MODES, ids=MODE_IDS)
def test_two_processes_equal_open_clip_in_the_same_processes(two_process_clip, mode):
    """Plain CLIP on 2 gloo processes: each process's loss and every DDP-averaged parameter gradient
    are open_clip's, for each (local_loss, gather_with_grad)."""
    for res in two_process_clip:
        got, want = res[("plain", *mode)], res[("open_clip", *mode)]
        assert got["loss"] == pytest.approx(want["loss"], abs=ATOL)
        _assert_grads(got["grads"], want["grads"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["plain", "tilted"])
@pytest.mark.parametrize("mode", CLIP_MODES, ids=MODE_IDS)
def test_two_processes_against_one_process_on_the_global_batch(two_process_clip, mode, name):
    """With gather_with_grad every parameter gets the single-process gradient of the global batch;
    without it and without local_loss the towers get that gradient ÷ 2 (each process's backward
    reaches its own rows only) and the logit scale, computed on both processes, all of it; with
    local_loss alone the gradient differs (no gradient through the candidates), as in open_clip."""
    local_loss, with_grad = mode
    ref = run_clip_case(name, False, False)  # one process, the global batch
    losses = [res[(name, *mode)]["loss"] for res in two_process_clip]
    assert sum(losses) / 2 == pytest.approx(ref["loss"], abs=ATOL)
    if not local_loss:
        assert losses[0] == pytest.approx(ref["loss"], abs=ATOL)
    for res in two_process_clip:
        got = res[(name, *mode)]["grads"]
        if with_grad:
            _assert_grads(got, ref["grads"])
        elif not local_loss:
            _assert_grads(got, ref["grads"], scale=lambda p: 1.0 if p == "log_scale" else 0.5)
        else:
            assert not torch.allclose(got["image.0.weight"], ref["grads"]["image.0.weight"], atol=1e-3)


def literal_local_tilted(img, txt, scale, beta, rows):
    """The tilted CLIP loss of the anchors ``rows`` (images, then texts) against every row of the other
    modality, written out with the candidate rows detached (open_clip's local_loss without
    gather_with_grad): logits l_j = scale·q·k_j, π ∝ exp(β l_j) over the B − 1 negatives,
    L = −log(e^{l_p} / (e^{l_p} + (B − 1) Σ_j π_j e^{l_j})), the mean over the anchors."""
    losses = []
    for i in rows:
        for q, keys in ((img[i], txt.detach()), (txt[i], img.detach())):
            logits = scale * (keys @ q)
            neg = torch.cat([logits[:i], logits[i + 1:]])
            pi = torch.softmax(beta * neg, 0)
            total = torch.exp(logits[i]) + neg.numel() * (pi * torch.exp(neg)).sum()
            losses.append(torch.log(total) - logits[i])
    return torch.stack(losses).mean()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "beta"), [("plain", 0.0), ("open_clip", 0.0), ("tilted", 0.7)])
def test_local_loss_without_gather_with_grad_equals_the_literal_detached_loss(two_process_clip, name, beta):
    """local_loss=True, gather_with_grad=False on 2 processes: DDP's average of the two processes'
    gradients of their local loss with detached candidates, written out on one process; open_clip's own
    loss (β = 0) checks the reference itself."""
    x_img, x_txt = clip_batch()
    model = Towers()
    img, txt, scale = model(x_img, x_txt)
    b = B // 2
    want = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for r in range(2):
        loss = literal_local_tilted(img, txt, scale, beta, range(r * b, (r + 1) * b))
        for (n, _), g in zip(model.named_parameters(), torch.autograd.grad(loss, list(model.parameters()),
                                                                           retain_graph=True)):
            want[n] += g / 2
    for res in two_process_clip:
        _assert_grads(res[(name, True, False)]["grads"], want)
