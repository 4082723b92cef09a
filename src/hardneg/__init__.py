"""hardneg: negative sampling for contrastive learning.

One chunked, log-space kernel (:func:`hardneg.losses.weighted_info_nce`) computes every
InfoNCE-family loss; each strategy is a distribution π over candidate negatives (docs/design.md §1).
"""

__version__ = "0.1.0"
