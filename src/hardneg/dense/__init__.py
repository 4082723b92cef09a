"""hardneg.dense: per-pixel contrastive learning through the one kernel (docs/dense.md).

`DenseContrast` samples anchor pixels of ``(B, C, H, W)`` feature maps and runs any
`Strategy` on them; `hardneg.dense.geometry` matches pixels across
views. The fine-grained components (neighbourhood, input similarity, proximity, per-class memory)
are ordinary strategy components in `hardneg.negatives.pixels`.
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
