"""hardneg.dense: per-pixel contrastive learning through the one kernel (docs/dense.md).

:class:`DenseContrast` samples anchor pixels of ``(B, C, H, W)`` feature maps and runs any
:class:`~hardneg.negatives.Strategy` on them; :mod:`hardneg.dense.geometry` matches pixels across
views. The fine-grained components (neighbourhood, input similarity, proximity, per-class memory)
are ordinary strategy components in :mod:`hardneg.negatives.pixels`.
"""

from hardneg.dense.geometry import correspondence_from_coords, identity_correspondence, random_flip_crop
from hardneg.dense.loss import DenseContrast, sample_anchors

__all__ = [
    "DenseContrast",
    "sample_anchors",
    "identity_correspondence",
    "correspondence_from_coords",
    "random_flip_crop",
]
