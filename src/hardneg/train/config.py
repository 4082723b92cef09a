"""The experiment configs, defined in `hardneg.runs.config` (run folders own them); re-exported
here for ``from hardneg.train.config import RunConfig``."""

from hardneg.runs.config import (
    AugmentConfig,
    BoundsConfig,
    CompareConfig,
    DataConfig,
    EvalConfig,
    GridConfig,
    GridLoss,
    LossConfig,
    ModelConfig,
    OptimConfig,
    ReportConfig,
    RunConfig,
    SearchConfig,
    SearchKnob,
    SearchStrategy,
    TrainLoopConfig,
    apply_overrides,
    dump_config,
    load_config,
    load_raw,
    validate_config,
)

__all__ = [
    "AugmentConfig", "BoundsConfig", "CompareConfig", "DataConfig", "EvalConfig", "GridConfig", "GridLoss",
    "LossConfig", "ModelConfig", "OptimConfig", "ReportConfig", "RunConfig", "SearchConfig", "SearchKnob",
    "SearchStrategy", "TrainLoopConfig", "apply_overrides",
    "dump_config", "load_config", "load_raw", "validate_config",
]
