"""hardneg.negatives: where candidate negatives come from, which are filtered out, how π is shaped.

The core is importable from here: compose a `Strategy` from sources, filters, weightings and
schedules, or name a preset with `create_strategy` / `from_config` (docs/strategies.md).

- building strategies: `Strategy`, `create_strategy`, `from_config`, `list_strategies`,
  `describe_strategies`, `build_source`, `build_filter`, `build_weighting`;
- writing a component: the base classes `Source`, `Filter`, `Weighting` (registered by ``kind``)
  and the step's layout, `StepContext`, `Anchors`, `Candidates`;
- sources: `InBatch`, `MemoryQueue` (with `MomentumEncoder`), `ExternalPool`, `Mixing`,
  `AdversarialBank`, `NegativeGenerator`;
- filters: `LabelFilter`, `IdFilter`, `SimilarityFilter`, `GuideFilter`;
- weightings: `Uniform`, `TopK`, `SemiHard`, `Tilt`, `DistanceWeighted`, `ClusterGuided`, `Calibrated`;
- schedules: `Constant`, `Linear`, `Cosine`, `Step`, `make_schedule`.

The specialised groups are imported from their own modules, each name from that one place:

- `hardneg.negatives.cross_modal`, two-tower batches: `CrossModal`, `CrossModalQueue`,
  `CrossModalClusters`, CLIP's `LogitScale`, `pair_ids`;
- `hardneg.negatives.pixels`, per-pixel anchors: `PixelGrid`, `NeighbourhoodFilter`,
  `InputSimilarityFilter`, `Proximity`, `ClassMemory`;
- `hardneg.negatives.text_negatives`, meaning-changing text rewrites: `TextNegatives`, `negate`,
  `swap_antonym`, `swap_entities`, `shuffle_words`;
- `hardneg.negatives.caption_edits`, one-edit caption swaps: `EDIT_KINDS`, `EditVocabulary`,
  `one_edit_swaps`, `swap_colour`, `swap_shape`, `swap_size`, `swap_count`, `swap_relation`;
- `hardneg.negatives.diagnostics`, what π did: `DiagnosticsAccumulator`, `negative_diagnostics`;
- the components' functions on plain tensors: `similarity_drops` in `hardneg.negatives.filters`;
  `topk_mask`, `semihard_mask`, `distance_weighted_log_weights` in `hardneg.negatives.weighting`;
  `mochi_mix` in `hardneg.negatives.mixing`.

Every component kind is registered once this package is imported, the specialised ones too, so a
configuration names any of them by ``kind``.
"""

# imported for their kinds (cross_modal, neighbourhood, proximity, …), which `from_config` looks up
from hardneg.negatives import cross_modal as cross_modal
from hardneg.negatives import pixels as pixels
from hardneg.negatives.adversarial import AdversarialBank, NegativeGenerator
from hardneg.negatives.context import StepContext
from hardneg.negatives.filters import Filter, GuideFilter, IdFilter, LabelFilter, SimilarityFilter
from hardneg.negatives.mixing import Mixing
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
from hardneg.negatives.weighting import (
    Calibrated,
    ClusterGuided,
    DistanceWeighted,
    SemiHard,
    Tilt,
    TopK,
    Uniform,
    Weighting,
)

__all__ = [
    # building strategies
    "Strategy",
    "create_strategy",
    "from_config",
    "list_strategies",
    "describe_strategies",
    "build_source",
    "build_filter",
    "build_weighting",
    # writing a component
    "Source",
    "Filter",
    "Weighting",
    "StepContext",
    "Anchors",
    "Candidates",
    # sources
    "InBatch",
    "MemoryQueue",
    "MomentumEncoder",
    "ExternalPool",
    "Mixing",
    "AdversarialBank",
    "NegativeGenerator",
    # filters
    "LabelFilter",
    "IdFilter",
    "SimilarityFilter",
    "GuideFilter",
    # weightings
    "Uniform",
    "TopK",
    "SemiHard",
    "Tilt",
    "DistanceWeighted",
    "ClusterGuided",
    "Calibrated",
    # schedules
    "Constant",
    "Linear",
    "Cosine",
    "Step",
    "make_schedule",
]
