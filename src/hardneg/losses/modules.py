"""``torch.nn.Module`` versions of the named losses (torchmetrics-style: the module holds the
options, the function holds the maths). ``forward(z1, z2, labels=None)``.

Every option is an explicit keyword-only constructor argument, checked when the module is built by
the checkers of `hardneg.losses.checks` (the ones the functions and the kernel use): an unknown
keyword is a ``TypeError`` and a bad value a ``ValueError`` naming the option and the value, before
any forward pass. Labels given to a loss that cannot use them (UCL, H-UCL, DCL, Decoupled) are a
``ValueError`` in ``forward``: those losses never read labels, so passing them is a mistake (a
supervised loss was meant), not something to ignore.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from hardneg.losses import named, triplet
from hardneg.losses.checks import (
    POSITIVES,
    check_beta,
    check_choice,
    check_chunk_size,
    check_nonneg,
    check_positive,
    check_reduction,
    check_tau_plus,
    resolve_temperature,
)


class _LossModule(nn.Module):
    """Holds the checked options of one functional loss and calls it."""

    #: whether ``labels`` are required (True), optional (None) or refused (False)
    _labels: bool | None = False

    def __init__(self, fn: Callable[..., Tensor], options: dict[str, Any]) -> None:
        super().__init__()
        self._fn = fn
        self.options = options

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())

    def forward(self, z1: Tensor, z2: Tensor | None = None, labels: Tensor | None = None) -> Tensor:
        if self._labels is False:
            if labels is not None:
                raise ValueError(
                    f"{type(self).__name__} does not use labels, got labels; an unsupervised loss ignores them, "
                    "so a supervised one (SCL, SupCon, HSCL) or Strategy(filters=[LabelFilter()]) was likely meant"
                )
            return self._fn(z1, z2, **self.options)
        return self._fn(z1, z2, labels, **self.options)


def _common(reduction: str, chunk_size: int | None) -> dict[str, Any]:
    return {"reduction": check_reduction(reduction), "chunk_size": check_chunk_size(chunk_size)}


class UCL(_LossModule):
    """SimCLR / NT-Xent. See `hardneg.losses.ucl`."""

    def __init__(
        self, *, temperature: float | None = None, t: float | None = None, reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(named.ucl, {"temperature": resolve_temperature(t, temperature, 0.5),
                                     **_common(reduction, chunk_size)})


class SCL(_LossModule):
    """Label-conditional negatives, one positive. See `hardneg.losses.scl`."""

    _labels = True

    def __init__(
        self, *, temperature: float | None = None, t: float | None = None, reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(named.scl, {"temperature": resolve_temperature(t, temperature, 0.5),
                                     **_common(reduction, chunk_size)})


class SupCon(_LossModule):
    """Khosla et al. L_out. See `hardneg.losses.supcon`."""

    _labels = True

    def __init__(
        self, *, temperature: float | None = None, t: float | None = None, reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(named.supcon, {"temperature": resolve_temperature(t, temperature, 0.1),
                                        **_common(reduction, chunk_size)})


class HUCL(_LossModule):
    """Robinson et al. HCL. See `hardneg.losses.hucl`."""

    def __init__(
        self, *, beta: float = 1.0, tau_plus: float = 0.0, temperature: float | None = None, t: float | None = None,
        clamp: bool = True, detach_weights: bool = False, reduction: str = "mean", chunk_size: int | None = None,
    ) -> None:
        super().__init__(named.hucl, {
            "beta": check_beta(beta), "tau_plus": check_tau_plus(tau_plus),
            "temperature": resolve_temperature(t, temperature, 0.5), "clamp": bool(clamp),
            "detach_weights": bool(detach_weights), **_common(reduction, chunk_size),
        })


class DCL(_LossModule):
    """Chuang et al. debiased contrastive loss. See `hardneg.losses.dcl`."""

    def __init__(
        self, *, tau_plus: float = 0.1, temperature: float | None = None, t: float | None = None, clamp: bool = True,
        reduction: str = "mean", chunk_size: int | None = None,
    ) -> None:
        super().__init__(named.dcl, {
            "tau_plus": check_tau_plus(tau_plus), "temperature": resolve_temperature(t, temperature, 0.5),
            "clamp": bool(clamp), **_common(reduction, chunk_size),
        })


class HSCL(_LossModule):
    """Jiang et al. H-SCL. See `hardneg.losses.hscl`."""

    _labels = True

    def __init__(
        self, *, beta: float = 1.0, temperature: float | None = None, t: float | None = None,
        positives: str = "labels", detach_weights: bool = False, reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(named.hscl, {
            "beta": check_beta(beta), "temperature": resolve_temperature(t, temperature, 0.5),
            "positives": check_choice("positives", positives, POSITIVES), "detach_weights": bool(detach_weights),
            **_common(reduction, chunk_size),
        })


class Decoupled(_LossModule):
    """Yeh et al. decoupled contrastive loss. See `hardneg.losses.decoupled`."""

    def __init__(
        self, *, temperature: float | None = None, t: float | None = None, reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(named.decoupled, {"temperature": resolve_temperature(t, temperature, 0.1),
                                           **_common(reduction, chunk_size)})


class Triplet(_LossModule):
    """Triplet margin loss with π-weighted negatives. See `hardneg.losses.triplet`. Labels are
    optional: with labels every same-label sample is a positive."""

    _labels = None

    def __init__(
        self, *, margin: float = 0.05, beta: float = 0.0, tilt_scale: float = 1.0, reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(triplet.triplet, {
            "margin": check_nonneg("margin", margin), "beta": check_beta(beta),
            "tilt_scale": check_positive("tilt_scale", tilt_scale), **_common(reduction, chunk_size),
        })


class Margin(_LossModule):
    """Wu et al. margin loss with π-weighted negatives. See `hardneg.losses.margin`; ``boundary``
    is the b that PML's ``MarginLoss`` calls ``beta``. Labels are optional. A ``boundary`` given as
    an ``nn.Parameter`` (one element) is learned: it is registered, so ``parameters()`` yields it."""

    _labels = None

    def __init__(
        self, *, alpha: float = 0.2, boundary: float | Tensor = 1.2, beta: float = 0.0, tilt_scale: float = 1.0,
        reduction: str = "mean", chunk_size: int | None = None,
    ) -> None:
        super().__init__(triplet.margin, {
            "alpha": check_nonneg("alpha", alpha), "boundary": _boundary(boundary),
            "beta": check_beta(beta), "tilt_scale": check_positive("tilt_scale", tilt_scale),
            **_common(reduction, chunk_size),
        })
        if isinstance(boundary, nn.Parameter):
            self.boundary = boundary


def _boundary(b: float | Tensor) -> float | Tensor:
    """The margin loss's boundary: a number ≥ 0, or a one-element tensor (learnable) holding one."""
    if isinstance(b, Tensor):
        if b.numel() != 1:
            raise ValueError(f"boundary must be a number or a one-element tensor, got shape {tuple(b.shape)}")
        check_nonneg("boundary", float(b.detach()))
        return b
    return check_nonneg("boundary", b)
