"""Run folders, the one place that knows them: layout and the ``.hardneg`` marker (what ``--overwrite``
may delete), ``metrics.jsonl``, the experiment configs, grid expansion of a compare folder, and loading
a run. It imports nothing from hardneg but :mod:`hardneg.io`, so training, evaluation, the report and
the command line all build on it without importing one another.
"""

from hardneg.runs.config import (
    CompareConfig,
    RunConfig,
    apply_overrides,
    check_path_name,
    dump_config,
    load_config,
    load_raw,
    validate_config,
)
from hardneg.runs.folders import (
    CHECKPOINT,
    COMPARE_FILES,
    COMPARE_PATTERNS,
    CONFIG,
    EMBEDDINGS,
    KINDS,
    MARKER,
    METRICS,
    MODEL,
    REPORT,
    RESULTS,
    RUN_FILES,
    RUNS,
    SUMMARY,
    clear_output,
    foreign_entries,
    owned_name,
    prepare_output,
    read_marker,
    write_marker,
)
from hardneg.runs.grid import RunSpec, collect, expand_grid, has_beta, load_compare_config, run_config, run_dir
from hardneg.runs.load import Run, load_run
from hardneg.runs.metrics import metrics_problem, read_metrics, repair_metrics

__all__ = [
    "CHECKPOINT",
    "COMPARE_FILES",
    "COMPARE_PATTERNS",
    "CONFIG",
    "EMBEDDINGS",
    "KINDS",
    "MARKER",
    "METRICS",
    "MODEL",
    "REPORT",
    "RESULTS",
    "RUNS",
    "RUN_FILES",
    "SUMMARY",
    "CompareConfig",
    "Run",
    "RunConfig",
    "RunSpec",
    "apply_overrides",
    "check_path_name",
    "clear_output",
    "collect",
    "dump_config",
    "expand_grid",
    "foreign_entries",
    "has_beta",
    "load_compare_config",
    "load_config",
    "load_raw",
    "load_run",
    "metrics_problem",
    "owned_name",
    "prepare_output",
    "read_marker",
    "read_metrics",
    "repair_metrics",
    "run_config",
    "run_dir",
    "validate_config",
    "write_marker",
]
