"""Schedules give the values they promise; a strategy applies them at each step."""

from __future__ import annotations

import math

import pytest
import torch

from hardneg.negatives import Cosine, Linear, Step, create_strategy, make_schedule

torch.set_num_threads(1)


def test_linear_cosine_step_values():
    lin = Linear(0.0, 2.0, steps=100)
    assert [lin(s) for s in (0, 25, 50, 100, 500)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    rev = Linear(64, 8, steps=8)  # reverse curriculum (hard → easy is start > end)
    assert [rev(s) for s in (0, 4, 8)] == [64.0, 36.0, 8.0]
    cos = Cosine(1.0, 0.0, steps=10)
    for s in range(12):
        u = min(s / 10, 1.0)
        assert cos(s) == pytest.approx(0.5 * (1 + math.cos(math.pi * u)))
    assert cos(5) == pytest.approx(0.5)
    st = Step(milestones=[10, 20], values=[0.1, 0.2, 0.4])
    assert [st(s) for s in (0, 9, 10, 19, 20, 99)] == [0.1, 0.1, 0.2, 0.2, 0.4, 0.4]


def test_epoch_unit():
    sch = make_schedule({"kind": "linear", "start": 0, "end": 1, "steps": 4, "unit": "epoch", "steps_per_epoch": 10})
    assert [sch(s) for s in (0, 9, 10, 25, 39, 40, 100)] == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_schedule_errors():
    with pytest.raises(ValueError, match="'kind'"):
        make_schedule({"kind": "exponential"})
    with pytest.raises(ValueError, match=r"\['stop'\]"):
        make_schedule({"kind": "linear", "start": 0, "stop": 1, "steps": 3})
    with pytest.raises(ValueError, match="'steps'"):
        Linear(0, 1, steps=0)
    with pytest.raises(ValueError, match="'values'"):
        Step([1, 2], [0.0, 1.0])
    with pytest.raises(ValueError, match="'steps_per_epoch'"):
        Linear(0, 1, steps=3, unit="epoch")


def test_strategy_applies_schedules_to_beta_k_and_margin():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    s = create_strategy(
        "topk",
        k=14,
        beta=0.0,
        schedule={
            "k": {"kind": "linear", "start": 14, "end": 2, "steps": 6},
            "beta": {"kind": "step", "milestones": [3], "values": [0.0, 1.5]},
        },
    )
    s.train()
    seen = []
    for _ in range(7):
        s(z1, z2)  # internal step counter
        d = s.last_diagnostics
        seen.append((d["step"], d["sched_k"], d["beta"], d["n_candidates"]))
    assert [x[0] for x in seen] == [0, 1, 2, 3, 4, 5, 6]
    assert [x[1] for x in seen] == [14, 12, 10, 8, 6, 4, 2]
    assert [x[2] for x in seen] == [0.0, 0.0, 0.0, 1.5, 1.5, 1.5, 1.5]
    assert [x[3] for x in seen] == [14, 12, 10, 8, 6, 4, 2]  # top-k really used the scheduled k
    sm = create_strategy("semihard", schedule={"margin": {"kind": "cosine", "start": 0.0, "end": 0.5, "steps": 2}})
    sm(z1, z2, step=2)
    assert sm.weightings[0].margin == pytest.approx(0.5)
    mo = create_strategy(
        "mochi", size=32, schedule={"query_mix_max": {"kind": "linear", "start": 0.1, "end": 0.4, "steps": 10}}
    )
    mo(z1, z2, step=5)
    assert mo.sources[1].query_mix_max == pytest.approx(0.25)


@pytest.mark.parametrize(
    "knob,spec,value",
    [
        ("beta", {"kind": "linear", "start": 1.0, "end": -0.5, "steps": 1000}, "-0.5"),
        ("t", {"kind": "cosine", "start": 0.5, "end": 0.0, "steps": 1000}, "0"),
        ("k", {"kind": "step", "milestones": [200, 400], "values": [8, 2, 0]}, "0"),
    ],
)
def test_schedule_leaving_the_knobs_range_is_refused_when_built(knob, spec, value):
    """The value would only be reached late in training; the whole range is checked at construction."""
    kw = {"k": 8} if knob == "k" else {}
    with pytest.raises(ValueError, match=rf"schedule for '{knob}' reaches {value} .*{knob} must be"):
        create_strategy("topk" if knob == "k" else "hucl", schedule={knob: spec}, **kw)
    with pytest.raises(ValueError, match=rf"'{knob}' reaches {value}"):
        make_schedule(spec, knob)
    ok = dict(spec)
    if "end" in ok:
        ok["end"] = 0.1 if knob != "k" else 1
    else:
        ok["values"] = [8, 2, 1]
    make_schedule(ok, knob)  # the same curriculum within range is accepted
