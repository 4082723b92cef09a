"""Losses: the one kernel (`weighted_info_nce`) and the named losses built on it.

Functional API (plain tensors): ``ucl, scl, supcon, hucl, dcl, hscl, decoupled, triplet, margin``.
Module API: ``UCL, SCL, SupCon, HUCL, DCL, HSCL, Decoupled, Triplet, Margin``.
"""

from hardneg.losses.kernel import KernelSpec, weighted_info_nce
from hardneg.losses.modules import DCL, HSCL, HUCL, SCL, UCL, Decoupled, Margin, SupCon, Triplet
from hardneg.losses.named import dcl, decoupled, hscl, hucl, scl, supcon, ucl
from hardneg.losses.triplet import margin, triplet

__all__ = [
    "weighted_info_nce", "KernelSpec",
    "ucl", "scl", "supcon", "hucl", "dcl", "hscl", "decoupled", "triplet", "margin",
    "UCL", "SCL", "SupCon", "HUCL", "DCL", "HSCL", "Decoupled", "Triplet", "Margin",
]
