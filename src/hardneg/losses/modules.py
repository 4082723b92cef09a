"""``torch.nn.Module`` versions of the named losses (torchmetrics-style: the module holds the
options, the function holds the maths). ``forward(z1, z2, labels=None)``."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from hardneg.losses import named, triplet


class _LossModule(nn.Module):
    _fn: Any = None
    _needs_labels = False

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())

    def forward(self, z1: Tensor, z2: Tensor | None = None, labels: Tensor | None = None) -> Tensor:
        fn = type(self)._fn
        if self._needs_labels:
            return fn(z1, z2, labels, **self.options)
        if labels is not None and fn in (triplet.triplet, triplet.margin):
            return fn(z1, z2, labels, **self.options)
        return fn(z1, z2, **self.options)


class UCL(_LossModule):
    """SimCLR / NT-Xent. See `hardneg.losses.ucl`."""

    _fn = staticmethod(named.ucl)


class SCL(_LossModule):
    """Label-conditional negatives, one positive. See `hardneg.losses.scl`."""

    _fn = staticmethod(named.scl)
    _needs_labels = True


class SupCon(_LossModule):
    """Khosla et al. L_out. See `hardneg.losses.supcon`."""

    _fn = staticmethod(named.supcon)
    _needs_labels = True


class HUCL(_LossModule):
    """Robinson et al. HCL. See `hardneg.losses.hucl`."""

    _fn = staticmethod(named.hucl)


class DCL(_LossModule):
    """Chuang et al. debiased contrastive loss. See `hardneg.losses.dcl`."""

    _fn = staticmethod(named.dcl)


class HSCL(_LossModule):
    """Jiang et al. H-SCL. See `hardneg.losses.hscl`."""

    _fn = staticmethod(named.hscl)
    _needs_labels = True


class Decoupled(_LossModule):
    """Yeh et al. decoupled contrastive loss. See `hardneg.losses.decoupled`."""

    _fn = staticmethod(named.decoupled)


class Triplet(_LossModule):
    """Triplet margin loss with π-weighted negatives. See `hardneg.losses.triplet`."""

    _fn = staticmethod(triplet.triplet)


class Margin(_LossModule):
    """Wu et al. margin loss with π-weighted negatives. See `hardneg.losses.margin`."""

    _fn = staticmethod(triplet.margin)
