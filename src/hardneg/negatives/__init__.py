"""hardneg.negatives: where candidate negatives come from, which are filtered out, how π is shaped.

Compose a `Strategy` from sources, filters, weightings and schedules, or name a preset with
`create_strategy` / `from_config` (see docs/strategies.md; base classes
`Source`, `Filter`, `Weighting` to write your own, registered by ``kind``).
"""

from hardneg.negatives.adversarial import AdversarialBank, NegativeGenerator
from hardneg.negatives.caption_edits import EDIT_KINDS, EditVocabulary, one_edit_swaps
from hardneg.negatives.context import StepContext
from hardneg.negatives.cross_modal import CrossModal, CrossModalClusters, CrossModalQueue, LogitScale, pair_ids
from hardneg.negatives.diagnostics import DiagnosticsAccumulator, negative_diagnostics
from hardneg.negatives.filters import Filter, GuideFilter, IdFilter, LabelFilter, SimilarityFilter, similarity_drops
from hardneg.negatives.mixing import Mixing, mochi_mix
from hardneg.negatives.pixels import (
    ClassMemory,
    InputSimilarityFilter,
    NeighbourhoodFilter,
    PixelGrid,
    Proximity,
)
from hardneg.negatives.queue import MemoryQueue, MomentumEncoder
from hardneg.negatives.registry import (
    build_filter,
    build_source,
    build_weighting,
    create_strategy,
    describe_strategies,
    from_config,
    list_strategies,
)
from hardneg.negatives.schedules import Constant, Cosine, Linear, Step, make_schedule
from hardneg.negatives.sources import Anchors, Candidates, ExternalPool, InBatch, Source
from hardneg.negatives.strategy import Strategy
from hardneg.negatives.text_negatives import TextNegatives, negate, shuffle_words, swap_antonym, swap_entities
from hardneg.negatives.weighting import (
    Calibrated,
    ClusterGuided,
    DistanceWeighted,
    SemiHard,
    Tilt,
    TopK,
    Uniform,
    Weighting,
    distance_weighted_log_weights,
    semihard_mask,
    topk_mask,
)

__all__ = [
    "EDIT_KINDS",
    "EditVocabulary",
    "one_edit_swaps",
    "CrossModal",
    "CrossModalClusters",
    "CrossModalQueue",
    "LogitScale",
    "pair_ids",
    "Strategy",
    "Source",
    "Filter",
    "Weighting",
    "StepContext",
    "Anchors",
    "Candidates",
    "similarity_drops",
    "create_strategy",
    "from_config",
    "list_strategies",
    "describe_strategies",
    "build_source",
    "build_filter",
    "build_weighting",
    "InBatch",
    "MemoryQueue",
    "MomentumEncoder",
    "ExternalPool",
    "Mixing",
    "mochi_mix",
    "AdversarialBank",
    "NegativeGenerator",
    "LabelFilter",
    "IdFilter",
    "SimilarityFilter",
    "GuideFilter",
    "NeighbourhoodFilter",
    "InputSimilarityFilter",
    "Proximity",
    "ClassMemory",
    "PixelGrid",
    "Uniform",
    "TopK",
    "SemiHard",
    "Tilt",
    "DistanceWeighted",
    "ClusterGuided",
    "Calibrated",
    "topk_mask",
    "semihard_mask",
    "distance_weighted_log_weights",
    "Constant",
    "Linear",
    "Cosine",
    "Step",
    "make_schedule",
    "DiagnosticsAccumulator",
    "negative_diagnostics",
    "TextNegatives",
    "negate",
    "swap_antonym",
    "swap_entities",
    "shuffle_words",
]
