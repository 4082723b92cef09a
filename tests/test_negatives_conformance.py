"""Conformance suite: every registered source, filter and weighting kind and every preset, in every
layout it supports (tests/conformance_cases.py generates the cases from the registry), passes the
same checks — the way timm tests every registered model. A kind defined anywhere is covered without
touching a test (``test_a_new_kind_is_covered_without_touching_the_suite``).

Checks: π is zero on every invalid candidate; the loss of a subset of anchor rows (what
``DistributedStrategy`` hands one process) equals those rows of the whole batch, values and
gradients; options are checked when a component is built; a state-dict round trip and a deep copy
after a step give the same next loss; float16 / bfloat16 inputs give finite gradients; a component
that cannot work without labels or with a tiny batch refuses at the first step or keeps working.
"""

from __future__ import annotations

import copy
import io
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import hardneg.distributed as hd
from hardneg.losses.checks import check_number
from hardneg.negatives import Strategy, Weighting, create_strategy
from hardneg.negatives.registry import PRESETS
from hardneg.negatives.weighting import WEIGHTINGS
from tests.conformance_cases import (
    LAYOUTS,
    ROLES,
    B,
    Case,
    batch,
    build,
    cases,
    kind_args,
    layout_kwargs,
    numeric_options,
    run,
)
from tests.negatives_reference import two_view_pos

torch.set_num_threads(1)

def _params() -> list:
    return [pytest.param(c, id=c.id) for c in cases()]


# ---------------------------------------------------------------------------------------------
# π is zero on every invalid candidate
# ---------------------------------------------------------------------------------------------


def _capture(strategy: Strategy) -> dict:
    """Record the log-weights the strategy gives the kernel (and its diagnostics pass: with
    ``diagnostics_anchors=None`` every anchor passes through it) and the step context. Where the
    kernel's blocks apply them in place (``_block_weights``), what a block leaves at −∞ — the
    anchor itself and its positive, masked by the kernel, included — is what π is zero on."""
    rec: dict = {"rows": {}}
    inner, inner_block = strategy._log_weights, strategy._block_weights

    def keep(rows, ctx, lw):
        for r, row in zip(ctx.row_ids(rows, torch.device("cpu")).tolist(), lw.detach(), strict=True):
            rec["rows"][r] = row.clone()
        rec["ctx"] = ctx

    def spy(S, rows, ctx, acc):
        lw = inner(S, rows, ctx, acc)
        keep(rows, ctx, lw)
        return lw

    def spy_block(X, rows, sp, ctx, acc):
        X0 = X.clone()
        out = inner_block(X, rows, sp, ctx, acc)
        keep(rows, ctx, torch.where(torch.isfinite(X), X - X0, -math.inf))
        return out

    strategy._log_weights = spy
    strategy._block_weights = spy_block
    return rec


def _literal_invalid(ctx) -> list[list[bool]]:
    """The candidate rule written out per pair (docs/design.md §2): the anchor itself, its view
    positive, its sample id (view positives), another anchor's owned candidate, its own modality."""
    n, m = ctx.n, ctx.m

    def at(x, i):
        return None if x is None else int(x[i])

    out = []
    for i in range(n):
        row = []
        for j in range(m):
            bad = j == at(ctx.self_index, i)
            if not ctx.label_positives:
                bad |= ctx.pos_index is not None and j == at(ctx.pos_index, i)
                bad |= ctx.q_ids is not None and at(ctx.q_ids, i) >= 0 and at(ctx.k_ids, j) == at(ctx.q_ids, i)
            bad |= ctx.owner is not None and at(ctx.owner, j) not in (-1, i)
            bad |= ctx.cross_view and at(ctx.k_view, j) == at(ctx.q_view, i)
            row.append(bad)
        out.append(row)
    return out


def _check_layout(case: Case, ctx) -> None:
    """The batch block is the layout's: anchors, their own columns and their positives."""
    ar = list(range(2 * B))
    if case.layout == "one_view":
        assert ctx.self_index.tolist() == list(range(B)) and ctx.pos_index is None
    elif case.layout == "queue":
        assert ctx.self_index.tolist() == [-1] * B and ctx.pos_index.tolist() == list(range(B))
    elif case.role != "preset":
        assert ctx.self_index.tolist() == ar and ctx.pos_index.tolist() == two_view_pos(B)
    assert ctx.cross_view == (case.layout == "cross_modal")


def check_pi_zero_on_invalid(case: Case) -> int:
    """π_ij = 0 (log-weight −∞) on every pair the literal rule forbids; returns how many such pairs."""
    s = build(case)
    run(s, case, 0)  # fills queues and memories, trains what learns
    rec = _capture(s)
    run(s, case, 1)
    ctx = rec["ctx"]
    _check_layout(case, ctx)
    assert sorted(rec["rows"]) == list(range(ctx.n)), "every anchor's weights are seen"
    bad = _literal_invalid(ctx)
    count = 0
    for i in range(ctx.n):
        lw = rec["rows"][i]
        for j in range(ctx.m):
            if bad[i][j]:
                count += 1
                assert lw[j] == -math.inf, f"{case.id}: anchor {i} gives invalid candidate {j} weight {lw[j]}"
    assert count > 0
    return count


@pytest.mark.parametrize("case", _params())
def test_pi_is_zero_on_every_invalid_candidate(case):
    check_pi_zero_on_invalid(case)


# ---------------------------------------------------------------------------------------------
# a subset of anchor rows equals those rows of the whole batch
# ---------------------------------------------------------------------------------------------


def _rank_rows(strategy: Strategy, two_views: bool, r: int, monkeypatch) -> torch.Tensor:
    """The anchors ``DistributedStrategy`` hands rank ``r`` of 2 (its own ``anchor_rows``)."""
    monkeypatch.setattr(hd, "world_size", lambda: 2)
    monkeypatch.setattr(hd, "rank", lambda: r)
    try:
        return hd.anchor_rows(B // 2, two_views)
    finally:
        monkeypatch.undo()


def check_anchor_subset(case: Case, monkeypatch) -> None:
    s0 = build(case, reduction="none")
    run(s0, case, 0)
    two_views = case.layout != "one_view" and s0.in_batch.symmetric
    for r in range(2):
        rows = _rank_rows(s0, two_views, r, monkeypatch)
        full_s, part_s = copy.deepcopy(s0), copy.deepcopy(s0)
        z1, z2, y, ids = batch(case, 1)
        full = full_s(z1, z2, labels=y, ids=ids, step=1, **layout_kwargs(case))[rows]
        g_full = torch.autograd.grad(full.sum(), [z for z in (z1, z2) if z is not None])
        z1, z2, y, ids = batch(case, 1)
        part = part_s(z1, z2, labels=y, ids=ids, step=1, anchor_rows=rows, **layout_kwargs(case))
        g_part = torch.autograd.grad(part.sum(), [z for z in (z1, z2) if z is not None])
        torch.testing.assert_close(part, full, rtol=1e-9, atol=1e-12)
        for a, b in zip(g_part, g_full, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        # the state a step teaches (queue, bank, calibrator, clusters) does not depend on the rows
        sa, sb = part_s.state_dict(), full_s.state_dict()
        for k, v in sb.items():
            if isinstance(v, torch.Tensor):
                torch.testing.assert_close(sa[k], v, rtol=0, atol=0)


@pytest.mark.parametrize("case", _params())
def test_anchor_subset_equals_those_rows_of_the_whole_batch(case, monkeypatch):
    check_anchor_subset(case, monkeypatch)


# ---------------------------------------------------------------------------------------------
# saved and copied after a step: the same next loss
# ---------------------------------------------------------------------------------------------


def check_round_trip(case: Case) -> None:
    s = build(case)
    run(s, case, 0).backward()
    torch.save(s, io.BytesIO())  # the whole module pickles: no closure, no lambda in it
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    fresh = build(case)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    twin = copy.deepcopy(s)
    want = run(s, case, 1)
    for other in (fresh, twin):
        torch.testing.assert_close(run(other, case, 1), want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("case", _params())
def test_state_dict_and_deepcopy_after_a_step_give_the_same_next_loss(case):
    check_round_trip(case)


# ---------------------------------------------------------------------------------------------
# float16 / bfloat16 inputs
# ---------------------------------------------------------------------------------------------


def check_low_precision(case: Case, dtype: torch.dtype) -> None:
    s = build(case)
    for step in range(2):
        z1, z2, y, ids = batch(case, step, dtype=dtype)
        loss = s(z1, z2, labels=y, ids=ids, step=step, **layout_kwargs(case))
        assert torch.isfinite(loss), (case.id, dtype, step)
        loss.backward()
        for z in (z1, z2):
            if z is not None:
                assert z.grad.dtype == dtype and torch.isfinite(z.grad).all(), (case.id, dtype, step)
    assert float(z1.grad.float().abs().sum()) > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", _params())
def test_low_precision_inputs_give_finite_gradients(case, dtype):
    check_low_precision(case, dtype)


# ---------------------------------------------------------------------------------------------
# modes a component cannot work in: refused at the first step, or working every step
# ---------------------------------------------------------------------------------------------


def check_mode(case: Case, mode: str) -> None:
    """Without labels, or with a batch of 2 samples: the first step either refuses with one
    ``ValueError`` line, or every later step works too (never a failure in the middle of training)."""
    s = build(case)
    kw = {"labels": False} if mode == "no_labels" else {"n": 2}
    try:
        run(s, case, 0, **kw)
    except ValueError as e:
        assert "\n" not in str(e) and str(e), (case.id, mode)
        return
    for step in (1, 2):
        loss = run(s, case, step, **kw)
        assert torch.isfinite(loss), (case.id, mode, step)


@pytest.mark.parametrize("mode", ["no_labels", "tiny_batch"])
@pytest.mark.parametrize("case", _params())
def test_a_mode_a_component_cannot_serve_is_refused_at_the_first_step(case, mode):
    check_mode(case, mode)


def test_topk_counts_candidates_by_the_candidate_rule_under_cross_modal():
    """Under CrossModal an anchor's candidates are the other modality's B − 1 rows: k = 10 above the
    7 valid ones uses all 7 (the uniform CLIP loss) and reports every anchor short."""
    from hardneg.negatives import TopK
    from hardneg.negatives.cross_modal import CrossModal

    case = Case("weighting", "topk", "cross_modal")
    z1, z2, _, _ = batch(case, 0)
    topk = Strategy(source=[CrossModal()], weighting=[TopK(10)], t=0.5)
    clip = Strategy(source=[CrossModal()], t=0.5)
    torch.testing.assert_close(topk(z1, z2), clip(z1, z2), rtol=1e-12, atol=0)
    assert topk.last_diagnostics["topk_short_share"] == 1.0
    assert topk.last_diagnostics["n_candidates"] == B - 1
    within = Strategy(source=[CrossModal()], weighting=[TopK(B - 1)], t=0.5)
    within(z1, z2)
    assert within.last_diagnostics["topk_short_share"] == 0.0


# ---------------------------------------------------------------------------------------------
# options are checked when a component is built, one checker per value type
# ---------------------------------------------------------------------------------------------


def _option_params() -> list:
    out = []
    for role, table in [*ROLES.items(), ("preset", PRESETS)]:
        for kind in sorted(table):
            for name, value in numeric_options(role, kind):
                out.append(pytest.param(role, kind, name, value, id=f"{role}:{kind}.{name}"))
    return out


def _make(role: str, kind: str, **over):
    if role == "preset":
        from tests.conformance_cases import PRESET_ARGS

        return create_strategy(kind, **{**PRESET_ARGS.get(kind, dict)(), **over})
    return ROLES[role][kind](**{**kind_args(role, kind), **over})


def check_option(role: str, kind: str, name: str, value) -> None:
    """A string, NaN and (for an int option) a fraction are refused naming the option; an int
    option takes an integral float (16.0) as the int."""
    bad = ["abc", math.nan] + ([value + 0.5] if isinstance(value, int) else [])
    for v in bad:
        with pytest.raises(ValueError, match=re.escape(f"'{name}'") + "|" + rf"\b{name}\b"):
            _make(role, kind, **{name: v})
    if isinstance(value, int):
        built = _make(role, kind, **{name: float(value)})
        if role != "preset" and name in vars(built):
            assert type(vars(built)[name]) is int and vars(built)[name] == value


@pytest.mark.parametrize("role,kind,name,value", _option_params())
def test_bad_option_values_are_refused_when_built_naming_the_option(role, kind, name, value):
    check_option(role, kind, name, value)


@pytest.mark.parametrize(
    "options,needle",
    [
        ({"positive_reduce": "pairs"}, "positive_reduce='pairs'"),
        ({"clamp": False}, "clamp"),
        ({"detach_weights": True}, "detach_weights"),
    ],
)
def test_inert_options_warn_when_built(options, needle):
    with pytest.warns(UserWarning, match=re.escape(needle)):
        Strategy(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"positive_reduce": "pairs", "positives": "labels"},
        {"clamp": False, "tau_plus": 0.1},
        {"detach_weights": True, "beta": 1.0},
        {"detach_weights": True, "schedule": {"beta": {"kind": "linear", "start": 0.0, "end": 1.0, "steps": 10}}},
        {"clamp": True, "schedule": {"tau_plus": {"kind": "linear", "start": 0.0, "end": 0.1, "steps": 10}}},
    ],
)
def test_options_that_act_do_not_warn(options):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Strategy(**options)


def test_a_presets_own_positive_reduce_is_dropped_with_view_positives():
    """H-SCL's preset sums label positives pair by pair; asked for view positives it has none to sum,
    so the preset's choice is dropped instead of warned about."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = create_strategy("hscl", positives="view")
    assert s.positives == "view" and s.positive_reduce == "mean"


@pytest.mark.parametrize("option,value", [("positives", "pairs"), ("reduction", "avg"), ("positive_reduce", "sum")])
def test_positives_and_reduction_values_have_one_home(option, value):
    """The kernel and the strategy refuse a value with the same line, listing the one set of values."""
    from hardneg.losses import checks
    from hardneg.losses.kernel import weighted_info_nce

    allowed = {"positives": checks.POSITIVES, "reduction": checks.REDUCTIONS,
               "positive_reduce": checks.POSITIVE_REDUCES}[option]
    z = torch.randn(4, 3)
    with pytest.raises(ValueError) as by_kernel:
        weighted_info_nce(z, z, t=0.5, pos_index=torch.tensor([1, 0, 3, 2]), **{option: value})
    with pytest.raises(ValueError) as by_strategy:
        Strategy(**{option: value})
    assert str(by_kernel.value) == str(by_strategy.value) == f"{option} must be one of {allowed}, got {value!r}"


# ---------------------------------------------------------------------------------------------
# the suite covers a kind written anywhere, and its checks can fail
# ---------------------------------------------------------------------------------------------


def _run_every_check(case: Case, monkeypatch) -> None:
    check_pi_zero_on_invalid(case)
    check_anchor_subset(case, monkeypatch)
    check_round_trip(case)
    check_low_precision(case, torch.bfloat16)
    check_mode(case, "no_labels")


def test_a_new_kind_is_covered_without_touching_the_suite(monkeypatch):
    class Throwaway(Weighting):
        """π ∝ exp(gain · s): a kind written in this module only."""

        kind = "conformance_throwaway"

        def __init__(self, gain: float = 0.5) -> None:
            super().__init__()
            self.gain = check_number("weighting option 'gain'", gain, 0.0, 10.0)

        def log_weights(self, S, rows, ctx, valid):
            return self.gain * S

    # torch.save pickles a module by its class's importable name: give the class one while it lives
    Throwaway.__qualname__ = "Throwaway"
    globals()["Throwaway"] = Throwaway
    try:
        mine = [c for c in cases() if c.kind == "conformance_throwaway"]
        assert [c.layout for c in mine] == list(LAYOUTS)
        for case in mine:
            _run_every_check(case, monkeypatch)
        assert [p.values[2:] for p in _option_params() if p.values[1] == "conformance_throwaway"] == [("gain", 0.5)]
        check_option("weighting", "conformance_throwaway", "gain", 0.5)
    finally:
        del WEIGHTINGS["conformance_throwaway"], globals()["Throwaway"]
    assert all(c.kind != "conformance_throwaway" for c in cases())


def test_a_kind_that_reads_its_chunk_position_fails_the_subset_check(monkeypatch):
    """The subset check can fail: weights from the row's position in the chunk (not the anchor's
    global row, ``ctx.row_ids``) change when a process computes only some anchors."""

    class ByPosition(Weighting):
        kind = "conformance_by_position"

        def log_weights(self, S, rows, ctx, valid):
            return torch.arange(S.shape[0], dtype=S.dtype)[:, None] * S

    try:
        with pytest.raises(AssertionError):
            check_anchor_subset(Case("weighting", "conformance_by_position", "two_view"), monkeypatch)
    finally:
        del WEIGHTINGS["conformance_by_position"]


# ---------------------------------------------------------------------------------------------
# the figures docs/reliability.md states
# ---------------------------------------------------------------------------------------------


def _ours(role: str, kind: str) -> bool:
    """A kind hardneg defines (other test modules and the docs' examples register their own)."""
    return role == "preset" or ROLES[role][kind].__module__.startswith("hardneg.")


def figures() -> dict[str, int]:
    """The suite's size over hardneg's own kinds and presets."""
    own = [c for c in cases() if _ours(c.role, c.kind)]
    return {
        "kinds": len({(c.role, c.kind) for c in own if c.role != "preset"}),
        "presets": len(PRESETS),
        "cases": len(own),
        "layouts": len(LAYOUTS),
        "options": sum(_ours(*p.values[:2]) for p in _option_params()),
    }


def test_the_reliability_page_states_the_suites_figures():
    f = figures()
    print(f)
    doc = " ".join((Path(__file__).parents[1] / "docs" / "reliability.md").read_text().split())
    want = (f"{f['kinds']} component kinds and {f['presets']} presets in {f['layouts']} layouts: "
            f"{f['cases']} cases; {f['options']} numeric options")
    assert want in doc, want


# ---------------------------------------------------------------------------------------------
# 2 gloo processes equal one, for every case (slow)
# ---------------------------------------------------------------------------------------------


def _gloo_worker(r: int, world: int, port: int, outdir: str, ids: list[str]) -> None:
    import os

    import torch.distributed as dist

    from tests.conformance_cases import run_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=r, world_size=world)
    try:
        torch.save({i: run_distributed(i) for i in ids}, Path(outdir) / f"rank{r}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gloo_results(tmp_path_factory):
    from tests.distributed_workers import free_port

    out = tmp_path_factory.mktemp("conformance_gloo")
    mp.spawn(_gloo_worker, args=(2, free_port(), str(out), [c.id for c in cases()]), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("case", _params())
def test_two_gloo_processes_equal_one_for_every_case(case, gloo_results):
    from tests.conformance_cases import run_distributed

    ref = run_distributed(case.id)
    for r, got in enumerate(gloo_results):
        torch.testing.assert_close(got[case.id]["loss"], ref["loss"], rtol=1e-9, atol=1e-12, msg=f"{case.id} {r}")
        torch.testing.assert_close(got[case.id]["grad"], ref["grad"], rtol=1e-9, atol=1e-12, msg=f"{case.id} {r}")
