"""Experiment configuration: pydantic models that reject unknown keys and wrong types.

A YAML file maps onto `RunConfig` (``hardneg train``) or `CompareConfig`
(``hardneg compare``); ``--set section.key=value`` overrides are applied before validation.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from hardneg._optional import missing

try:
    import yaml
    from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
except ImportError as e:
    raise missing("yaml" if e.name == "yaml" else "pydantic", extra="train", feature="experiment configs") from e


#: option names a config may still carry, with the option that holds that meaning: one meaning per
#: name (docs/design.md §2, Names), so such a key is refused with the name to use instead of being
#: reported as merely unknown
RENAMED_OPTIONS: dict[str, str] = {
    "beta_max": "query_mix_max",  # MoCHi's β_max (mixing), not the tilt beta
    "init_temperature": "temperature",  # the initial temperature of the learnable logit scale
    "max_scale": "max_logit_scale",  # LogitScale's clamp
    "t_neg": "bank_temperature",  # AdCo's bank temperature, not the encoder's t
}


def check_renamed_options(raw: Any, source: str, path: str = "") -> None:
    """Refuse any key of `RENAMED_OPTIONS` anywhere in a config mapping: one ``ValueError`` naming the
    file, the key's place and the option to use."""
    if isinstance(raw, dict):
        for k, v in raw.items():
            where = f"{path}.{k}" if path else str(k)
            if k in RENAMED_OPTIONS:
                new = RENAMED_OPTIONS[k]
                raise ValueError(f"config {source}: {where}: unknown option {k!r}; the option is {new!r}")
            check_renamed_options(v, source, where)
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            check_renamed_options(v, source, f"{path}[{i}]")


def check_path_name(value: str, what: str) -> str:
    """``value`` when it can name a file or folder inside another: not empty, no path separator, not
    ``.`` or ``..`` (a grid label, an experiment name, a scene name become paths under the output or
    data folder and must not leave it)."""
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if not isinstance(value, str) or not value.strip() or value in (".", "..") or any(c in value for c in seps) \
            or "\0" in value:
        raise ValueError(f"{what} must be a plain name (no '/', '\\', '..'; it becomes a path), got {value!r}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    name: Literal["digits", "fashion_mnist"] = "digits"
    data_dir: str | None = None
    train_limit: int | None = Field(default=None, gt=0)
    test_limit: int | None = Field(default=None, gt=0)
    split_seed: int = Field(default=0, ge=0)
    #: null: the training set is held in memory and augmented a batch at a time in the training
    #: process; a number: batches come through a torch DataLoader with that many worker processes
    #: (0: the training process), which read samples lazily and augment each with its own seed
    workers: int | None = Field(default=None, ge=0)


class AugmentConfig(_Strict):
    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip_p: float = Field(default=0.5, ge=0, le=1)
    noise_std: float = Field(default=0.05, ge=0)
    erase_p: float = Field(default=0.25, ge=0, le=1)


class ModelConfig(_Strict):
    encoder: str = "cnn"
    width: int = Field(default=32, gt=0)
    stem_stride: Literal[1, 2] = 1
    hidden: int = Field(default=256, gt=0)
    depth: int = Field(default=2, ge=1)
    head_hidden: int = Field(default=128, gt=0)
    proj_dim: int = Field(default=64, gt=0)


class LossConfig(_Strict):
    """``name`` is ucl, scl, supcon, hucl, dcl, hscl (or a strategy preset); ``params`` its keyword args
    (``t``, ``beta``, ``tau_plus``, ...), checked against the loss's signature. A full strategy
    (sources, filters, weightings, schedules) is the top-level ``strategy:`` mapping instead."""

    name: str = "ucl"
    params: dict[str, float | int | bool | str] = Field(default_factory=dict)


class OptimConfig(_Strict):
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    schedule: Literal["cosine", "constant", "step"] = "cosine"
    warmup_steps: int = Field(default=0, ge=0)
    step_every: int = Field(default=1000, gt=0)
    step_gamma: float = Field(default=0.1, gt=0, le=1)
    grad_clip: float | None = Field(default=None, gt=0)


class GradCacheConfig(_Strict):
    """GradCache (Gao et al. 2021): the batch is embedded ``chunk`` inputs at a time, so activation
    memory is that of a chunk whatever the batch size."""

    chunk: int = Field(default=64, gt=0)


class TrainLoopConfig(_Strict):
    epochs: int = Field(default=10, gt=0)
    batch_size: int = Field(default=256, ge=4)
    seed: int = Field(default=0, ge=0)
    threads: int | None = Field(default=None, gt=0)
    checkpoint_every: int = Field(default=100, gt=0)
    log_every: int = Field(default=1, gt=0)
    progress: bool = True
    #: momentum m of the key encoder θ_k ← m θ_k + (1 − m) θ_q that encodes the second view when the
    #: strategy stores keys (a queue source; MoCo's m = 0.999); null: the model itself encodes them
    key_momentum: float | None = Field(default=0.999, ge=0, lt=1)
    #: embed the batch in chunks without a graph, back-propagate the loss to the embeddings, then
    #: re-embed chunk by chunk with a graph (same dropout); null: one forward pass
    grad_cache: GradCacheConfig | None = None


class EvalConfig(_Strict):
    every_epochs: int = Field(default=1, gt=0)
    knn_k: int = Field(default=200, gt=0)
    knn_t: float = Field(default=0.5, gt=0)
    linear_probe: bool = True
    probe_every_epochs: int | None = Field(default=None, gt=0)
    probe_max_iter: int = Field(default=200, gt=0)
    diagnostics: bool = True


class BoundsConfig(_Strict):
    """The H-SCL paper's bound check (Jiang et al. 2022, arXiv 2209.00078): evaluate L_UCL, L_SCL,
    L_H-UCL, L_H-SCL on the training batches every ``every`` steps at tilt ``beta`` and temperature ``t``
    (None: take them from the training loss, else β = 1, t = 0.5)."""

    enabled: bool = False
    every: int = Field(default=1, gt=0)
    beta: float | None = Field(default=None, ge=0)
    t: float | None = Field(default=None, gt=0)


_BOTH = (
    "give either 'loss' (a named loss or preset with flat params) or 'strategy' (the mapping of "
    "hardneg.negatives.from_config), not both"
)


def _one_objective(data: Any) -> Any:
    """A ``strategy:`` mapping replaces the default ``loss``; both at once are refused."""
    if isinstance(data, dict) and data.get("strategy") is not None:
        if data.get("loss") is not None:
            raise ValueError(_BOTH)
        data = {**data, "loss": None}
    return data


class RunConfig(_Strict):
    """One training run. The objective is ``loss`` (default ``ucl``) or ``strategy``: the full mapping
    `hardneg.negatives.from_config` takes (``name``, preset options, ``source``, ``filters``,
    ``weighting``, ``schedule``, ...), passed to it untouched."""

    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig | None = Field(default_factory=LossConfig)
    strategy: dict[str, Any] | None = None
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainLoopConfig = Field(default_factory=TrainLoopConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    bounds: BoundsConfig = Field(default_factory=BoundsConfig)

    @model_validator(mode="before")
    @classmethod
    def _objective(cls, data: Any) -> Any:
        return _one_objective(data)

    @model_validator(mode="after")
    def _has_objective(self) -> RunConfig:
        if self.loss is None and self.strategy is None:
            raise ValueError("loss: null needs a 'strategy' mapping (or leave loss out for the default ucl)")
        return self

    @field_validator("augment")
    @classmethod
    def _crop(cls, v: AugmentConfig) -> AugmentConfig:
        lo, hi = v.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {v.crop_scale}")
        return v


class GridLoss(_Strict):
    """One loss of the grid: ``name`` + ``params`` (as ``loss:``) or ``strategy`` (as ``strategy:``);
    tilted losses (those with a β) are run once per β of the grid."""

    name: str | None = None
    params: dict[str, float | int | bool | str] = Field(default_factory=dict)
    strategy: dict[str, Any] | None = None
    label: str | None = None

    @model_validator(mode="after")
    def _one(self) -> GridLoss:
        if (self.name is None) == (self.strategy is None):
            raise ValueError("each grid loss needs exactly one of 'name' (with 'params') or 'strategy'")
        if self.strategy is not None and self.params:
            raise ValueError("a grid loss with 'strategy' takes its options inside the mapping, not in 'params'")
        check_path_name(self.title, "a grid loss's label (or name)")
        return self

    @property
    def loss_name(self) -> str:
        """The named loss, or the strategy's preset (``from_config``'s default ``ucl`` when unnamed)."""
        return self.name if self.name is not None else str((self.strategy or {}).get("name", "ucl"))

    @property
    def title(self) -> str:
        """The run label: ``label``, else `loss_name`."""
        return self.label or self.loss_name


class GridConfig(_Strict):
    losses: list[GridLoss] = Field(min_length=1)
    betas: list[float] = Field(default_factory=lambda: [1.0])
    seeds: list[int] = Field(default_factory=lambda: [0])

    @model_validator(mode="after")
    def _check(self) -> GridConfig:
        if any(b < 0 for b in self.betas):
            raise ValueError(f"grid.betas must be >= 0, got {self.betas}")
        if any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"grid.seeds must be distinct non-negative ints, got {self.seeds}")
        labels = [g.title for g in self.losses]
        if len(set(labels)) != len(labels):
            raise ValueError(f"grid.losses need distinct names/labels, got {labels}")
        return self


class SearchKnob(_Strict):
    """One knob of a searched strategy: a range (``low``, ``high``; ``integer: true`` for integers, ``log: true``
    to sample on a log scale) or ``choices``, one of the two."""

    low: float | None = None
    high: float | None = None
    integer: bool = False
    log: bool = False
    choices: list[float | int | bool | str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchKnob:
        ranged = self.low is not None or self.high is not None
        if ranged == (self.choices is not None):
            raise ValueError("a knob takes either 'low' and 'high' or 'choices'")
        if ranged:
            if self.low is None or self.high is None or self.low > self.high:
                raise ValueError(f"a knob range needs low <= high, got low={self.low}, high={self.high}")
            if self.log and self.low <= 0:
                raise ValueError(f"a log-scale knob needs low > 0, got {self.low}")
            if self.integer and (self.low != round(self.low) or self.high != round(self.high)):
                raise ValueError(f"an integer knob needs whole bounds, got low={self.low}, high={self.high}")
        elif self.integer or self.log:
            raise ValueError("'integer' and 'log' apply to ranges, not to 'choices'")
        return self


class SearchStrategy(_Strict):
    """A grid entry to search (``label``, as ``grid.losses`` names it) and its knobs: option name (a dotted
    path reaches into the mapping, e.g. ``source.size``) -> range or choices; null: the default knobs."""

    label: str
    knobs: dict[str, SearchKnob] | None = None


class SearchConfig(_Strict):
    """``hardneg compare --search``: successive halving (or Hyperband) over the grid's strategies and
    their knobs, with rungs at ``min_epochs`` x ``reduction_factor``^k epochs up to ``train.epochs``."""

    #: the strategies to consider; null: every grid entry with its default knobs
    strategies: list[SearchStrategy] | None = Field(default=None, min_length=1)
    #: how many trials (configurations) to start; null: twice the number of strategies
    trials: int | None = Field(default=None, gt=0)
    min_epochs: int = Field(default=1, gt=0)
    reduction_factor: int = Field(default=3, ge=2)
    pruner: Literal["successive_halving", "hyperband"] = "successive_halving"
    #: the sampler's seed and every trial's training seed (``--search-seed``)
    seed: int = Field(default=0, ge=0)
    #: after the trials, train this many finalists (the best distinct strategies at the deepest rung that
    #: many reached) to the end at every seed of ``grid.seeds`` and rank them by their mean over seeds, as
    #: the grid ranks; 0: rank the trials by their one seed
    confirm: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _distinct(self) -> SearchConfig:
        labels = [s.label for s in self.strategies or []]
        if len(set(labels)) != len(labels):
            raise ValueError(f"search.strategies name a label twice: {labels}")
        return self


class ReportConfig(_Strict):
    embedding_map: bool = True
    map_points: int = Field(default=1000, gt=10)
    bounds_run: str | None = None
    #: the strategy leaderboard: per-group accuracy, accuracy on ``confusable_classes``, time per step
    #: relative to the reference (UCL) run of the same seed, diagnostics over training, and each
    #: strategy against its base (each preset's ``base`` in hardneg.negatives.registry, or ``bases``)
    leaderboard: bool = False
    #: grid label -> the label of its base, for entries whose preset alone does not say it
    bases: dict[str, str] = Field(default_factory=dict)
    #: classes whose mean per-class accuracy gets its own column (Fashion-MNIST: 0, 2, 4, 6)
    confusable_classes: list[int] | None = None
    #: ``--docs`` also copies the plots next to the page (a folder named after it) and shows them
    docs_plots: bool = False


class CompareConfig(RunConfig):
    """A `RunConfig` used as the base of every run, plus the grid of losses × β × seeds."""

    name: str = "compare"
    grid: GridConfig
    report: ReportConfig = Field(default_factory=ReportConfig)
    #: what ``hardneg compare --search`` searches (null: the defaults of `SearchConfig`)
    search: SearchConfig | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return check_path_name(v, "name")

    @model_validator(mode="after")
    def _bases_in_grid(self) -> CompareConfig:
        labels = [g.title for g in self.grid.losses]
        unknown = sorted({x for kv in self.report.bases.items() for x in kv} - set(labels))
        if unknown:
            raise ValueError(f"report.bases names {unknown}, which are not grid labels {labels}")
        searched = [s.label for s in (self.search.strategies or []) if s.label not in labels] if self.search else []
        if searched:
            raise ValueError(f"search.strategies names {searched}, which are not grid labels {labels}")
        return self


#: the example configs shipped inside the package (``hardneg init KIND`` writes one; ``--config KIND``
#: reads it) and the class each validates as
SHIPPED_CONFIGS: dict[str, type[RunConfig]] = {"train": RunConfig, "compare": CompareConfig,
                                               "leaderboard": CompareConfig}


def shipped_config(name: str) -> str:
    """The YAML text of the shipped example config ``name`` (a key of `SHIPPED_CONFIGS`)."""
    from importlib import resources

    if name not in SHIPPED_CONFIGS:
        raise ValueError(f"no shipped config {name!r}; the shipped configs are {', '.join(SHIPPED_CONFIGS)}")
    return resources.files("hardneg").joinpath("configs", f"{name}.yaml").read_text(encoding="utf-8")


def set_dotted(d: dict[str, Any], dotted: str, value: Any, what: str = "override") -> None:
    """Set ``d["a"]["b"]["c"] = value`` for ``dotted="a.b.c"``, making missing sections; a key on the
    way that holds no mapping is one ``ValueError`` naming ``what``."""
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        nxt = cur.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ValueError(f"{what} {dotted!r}: {k!r} is not a section")
        cur = nxt
    cur[keys[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (value parsed as YAML) to a raw config dict (copied)."""
    out = copy.deepcopy(raw)
    for o in overrides or []:
        if "=" not in o:
            raise ValueError(f"override {o!r} must look like section.key=value")
        k, _, v = o.partition("=")
        try:
            value = yaml.safe_load(v)
        except yaml.YAMLError as e:
            first = str(e).strip().splitlines()[0]
            raise ValueError(f"override {o!r}: the value is not valid YAML ({first})") from None
        set_dotted(out, k.strip(), value)
        check_renamed_options({k.strip().split(".")[-1]: value}, f"override {o!r}")
    return out


def _format_error(e: ValidationError, source: str) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg}")
    return f"invalid config {source}: " + "; ".join(parts)


#: a config class: `RunConfig` or one built on it (`CompareConfig`); the loaders return an instance of it
_C = TypeVar("_C", bound=RunConfig)


@overload
def validate_config(raw: dict[str, Any], cls: type[_C], source: str = "<dict>") -> _C: ...
@overload
def validate_config(raw: dict[str, Any], *, source: str = "<dict>") -> RunConfig: ...


def validate_config(
    raw: dict[str, Any], cls: type[RunConfig] = RunConfig, source: str = "<dict>"
) -> RunConfig:
    """Validate a raw dict; raise ``ValueError`` with one line naming every bad key."""
    if not isinstance(raw, dict):
        raise ValueError(
            f"invalid config {source}: the top level must be a mapping, got {type(raw).__name__}"
        )
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise ValueError(_format_error(e, source)) from None


def load_raw(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The YAML mapping of a config file, or of a shipped config named by ``path`` (``train``,
    ``compare``, ``leaderboard``) when no such file exists."""
    p = Path(path)
    if not p.is_file() and str(path) not in SHIPPED_CONFIGS:
        raise FileNotFoundError(f"config file {p} not found (a shipped config is named by one of "
                                f"{', '.join(SHIPPED_CONFIGS)}; hardneg init KIND writes a copy to edit)")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8") if p.is_file() else shipped_config(str(path)))
    except yaml.YAMLError as e:
        raise ValueError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {p} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    check_renamed_options(raw, str(p))
    return raw if raw is not None else {}


@overload
def load_config(path: str | os.PathLike[str], overrides: list[str] | None, cls: type[_C]) -> _C: ...
@overload
def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None, *, cls: type[_C]) -> _C: ...
@overload
def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> RunConfig: ...


def load_config(
    path: str | os.PathLike[str], overrides: list[str] | None = None, cls: type[RunConfig] = RunConfig
) -> RunConfig:
    """Read YAML, apply overrides, validate as ``cls``."""
    return validate_config(apply_overrides(load_raw(path), overrides), cls, str(path))


def dump_config(cfg: BaseModel) -> str:
    """The config as YAML (sorted keys); an absent ``search`` section is left out, so a compare config
    without one writes the same text whether or not the section exists."""
    d = cfg.model_dump(mode="json")
    if "search" in d and d["search"] is None:
        del d["search"]
    return yaml.safe_dump(d, sort_keys=True)
