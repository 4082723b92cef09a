r"""Curriculum schedules for strategy knobs (β, k, margin, mixing share, t, …).

A schedule maps the global training step to a value. ``start > end`` gives the reverse curriculum
(hard to easy). With ``unit="epoch"`` the value changes once per epoch, ``epoch = step //
steps_per_epoch``, and ``steps`` / ``milestones`` count epochs.

- linear:  ``v(u) = start + (end − start) · min(u / steps, 1)``
- cosine:  ``v(u) = end + (start − end) · (1 + cos(π · min(u / steps, 1))) / 2``
- step:    ``v(u) = values[i]`` where ``i`` = number of milestones ≤ u (piecewise constant)
- constant: ``v(u) = value``

A schedule built for a named knob (`make_schedule` with ``name``) is checked over its whole range
when it is built: β must stay ≥ 0, t > 0, k ≥ 1 and τ⁺ in [0, 1) at every step, so a curriculum that
would cross the limit at step 200 of 1,000 is refused at step 0.

Dynamic re-mining (refreshing a pool's mined negatives every n steps with the current model) is a
property of the pool source: `hardneg.negatives.sources.ExternalPool` (``encode_fn``,
``refresh_every``).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hardneg.losses.checks import check_beta, check_int, check_number, check_tau_plus, check_temperature

_UNITS = ("step", "epoch")


def _num(name: str, v: Any) -> float:
    return check_number(f"schedule option {name!r}", v)


class Schedule:
    """Base class: ``schedule(step) -> value``. Subclasses implement `value_at` on the unit."""

    kind = "base"

    def __init__(self, unit: str = "step", steps_per_epoch: int | None = None) -> None:
        if unit not in _UNITS:
            raise ValueError(f"schedule option 'unit' must be one of {_UNITS}, got {unit!r}")
        if unit == "epoch" and (not isinstance(steps_per_epoch, int) or steps_per_epoch < 1):
            raise ValueError(
                f"schedule option 'steps_per_epoch' must be a positive int when unit='epoch', got {steps_per_epoch!r}"
            )
        self.unit = unit
        self.steps_per_epoch = steps_per_epoch

    def value_at(self, u: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def extremes(self) -> tuple[float, ...]:  # pragma: no cover - abstract
        """Values that bound the schedule over every step (each kind is monotone between them)."""
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        # __init__ refuses unit="epoch" without a positive steps_per_epoch
        u = step // self.steps_per_epoch if self.unit == "epoch" and self.steps_per_epoch else step
        return self.value_at(float(u))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if v is not None)
        return f"{type(self).__name__}({opts})"


class Constant(Schedule):
    """``v = value`` at every step."""

    kind = "constant"

    def __init__(self, value: float, **kw: Any) -> None:
        super().__init__(**kw)
        self.value = _num("value", value)

    def value_at(self, u: float) -> float:
        return self.value

    def extremes(self) -> tuple[float, ...]:
        return (self.value,)


class _Ramp(Schedule):
    def __init__(self, start: float, end: float, steps: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.start = _num("start", start)
        self.end = _num("end", end)
        self.steps = check_int("schedule option 'steps'", steps)

    def extremes(self) -> tuple[float, ...]:
        return (self.start, self.end)


class Linear(_Ramp):
    """``v(u) = start + (end − start) · min(u / steps, 1)``."""

    kind = "linear"

    def value_at(self, u: float) -> float:
        return self.start + (self.end - self.start) * min(u / self.steps, 1.0)


class Cosine(_Ramp):
    """``v(u) = end + (start − end) · (1 + cos(π · min(u / steps, 1))) / 2``."""

    kind = "cosine"

    def value_at(self, u: float) -> float:
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * min(u / self.steps, 1.0)))


class Step(Schedule):
    """Piecewise constant: ``values[0]`` before ``milestones[0]``, ``values[i]`` from ``milestones[i-1]``."""

    kind = "step"

    def __init__(self, milestones: Sequence[int], values: Sequence[float], **kw: Any) -> None:
        super().__init__(**kw)
        ms = list(milestones)
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in ms) or ms != sorted(ms):
            raise ValueError(f"schedule option 'milestones' must be increasing non-negative ints, got {milestones!r}")
        vs = [_num("values", v) for v in values]
        if len(vs) != len(ms) + 1:
            raise ValueError(
                f"schedule option 'values' must have len(milestones) + 1 = {len(ms) + 1} entries, got {len(vs)}"
            )
        self.milestones, self.values = ms, vs

    def value_at(self, u: float) -> float:
        return self.values[bisect.bisect_right(self.milestones, u)]

    def extremes(self) -> tuple[float, ...]:
        return tuple(self.values)


SCHEDULES: dict[str, type[Schedule]] = {c.kind: c for c in (Constant, Linear, Cosine, Step)}

def _at_least_one(name: str, v: float) -> float:
    if not v >= 1:
        raise ValueError(f"{name} must be >= 1, got {v!r}")
    return v


#: the check of each scheduled core knob, applied at every extreme of its schedule (the one definition
#: of each range lives in `hardneg.losses.checks`)
KNOB_CHECKS: dict[str, Callable[[str, float], Any]] = {
    "beta": lambda name, v: check_beta(v, name),
    "t": lambda name, v: check_temperature(v, name),
    "temperature": lambda name, v: check_temperature(v, name),
    "k": _at_least_one,
    "tau_plus": lambda name, v: check_tau_plus(v),
}


def check_range(name: str, schedule: Schedule) -> Schedule:
    """Refuse (ValueError naming the knob and the value) a schedule that leaves ``name``'s allowed range
    anywhere over its steps; knobs without a known range pass."""
    if name in KNOB_CHECKS:
        for v in schedule.extremes():
            try:
                KNOB_CHECKS[name](name, v)
            except ValueError as e:
                raise ValueError(f"schedule for {name!r} reaches {v:g} ({schedule!r}): {e}") from None
    return schedule


def make_schedule(spec: Schedule | Mapping[str, Any] | float | int, name: str | None = None) -> Schedule:
    """Build a schedule from a mapping such as ``{kind: linear, start: 0, end: 2, steps: 1000}``.

    A plain number gives a `Constant`. Unknown kinds and unknown keys raise ``ValueError``
    naming them. With ``name`` (the knob it drives), the whole range is checked (`check_range`).
    """
    if name is not None:
        return check_range(name, make_schedule(spec))
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return Constant(spec)
    if not isinstance(spec, Mapping):
        raise TypeError(f"a schedule must be a mapping with a 'kind' key or a number, got {type(spec).__name__}")
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in SCHEDULES:
        raise ValueError(f"schedule option 'kind' must be one of {sorted(SCHEDULES)}, got {kind!r}")
    cls = SCHEDULES[kind]
    import inspect

    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "kw"} | {"unit", "steps_per_epoch"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for schedule kind {kind!r}; allowed: {sorted(allowed)}")
    try:
        return cls(**spec)
    except TypeError as e:
        raise ValueError(f"schedule kind {kind!r}: {e}") from None
