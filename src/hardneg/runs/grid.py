"""The experiment grid of a compare folder: losses × β × seeds of one `CompareConfig`, each grid
point a run folder ``<out>/runs/<name>/``, and the rows of the finished ones."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardneg.io import read_json_object
from hardneg.runs.config import CompareConfig, RunConfig, load_config
from hardneg.runs.folders import CONFIG, RUNS, SEARCH, SUMMARY
from hardneg.runs.load import read_summary


def has_beta(name: str, params: dict[str, Any] | None = None) -> bool:
    """True for the losses whose negatives are tilted by η(s) = e^{βs/t} (H-UCL, H-SCL), or any loss
    given a ``beta``: the grid runs those once per β."""
    return name in ("hucl", "hscl") or (params is not None and "beta" in params)


@dataclass(frozen=True)
class RunSpec:
    """One grid point: a named loss (``loss``, ``params``) or a strategy mapping (``strategy``)."""

    label: str
    loss: str | None
    params: dict[str, Any]
    beta: float | None
    seed: int
    strategy: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        b = "" if self.beta is None else f"_b{self.beta:g}"
        return f"{self.label}{b}_s{self.seed}"


def expand_grid(cfg: CompareConfig) -> list[RunSpec]:
    """Every grid point in a fixed order (loss, β, seed): tilted losses once per β, others once.

    A strategy entry is tilted when its preset is (``hucl``, ``hscl``) or its mapping sets ``beta``;
    β is then set in a copy of the mapping."""
    out = []
    for gl in cfg.grid.losses:
        opts = dict(gl.strategy) if gl.strategy is not None else dict(gl.params)
        betas: list[float | None] = list(cfg.grid.betas) if has_beta(gl.loss_name, opts) else [None]
        for b in betas:
            o = dict(opts)
            if b is not None:
                o["beta"] = float(b)
            for s in cfg.grid.seeds:
                if gl.strategy is None:
                    out.append(RunSpec(gl.title, gl.name, o, b, s))
                else:
                    out.append(RunSpec(gl.title, None, {}, b, s, strategy=o))
    return out


def run_config(cfg: CompareConfig, spec: RunSpec) -> RunConfig:
    """The RunConfig of one grid point: the base sections with the loss (or strategy) and seed replaced."""
    base = cfg.model_dump(exclude={"name", "grid", "report", "search"})
    if spec.strategy is not None:
        base["loss"], base["strategy"] = None, spec.strategy
    else:
        base["loss"], base["strategy"] = {"name": spec.loss, "params": spec.params}, None
    base["train"]["seed"] = spec.seed
    return RunConfig.model_validate(base)


def run_dir(out_dir: str | Path, spec: RunSpec) -> Path:
    """The run folder of a grid point inside a compare folder."""
    return Path(out_dir) / RUNS / spec.name


def load_compare_config(out_dir: str | Path) -> CompareConfig:
    """The validated config of a compare folder (FileNotFoundError when it has none)."""
    out = Path(out_dir)
    cfg_p = out / CONFIG
    if not cfg_p.is_file():
        raise FileNotFoundError(f"{cfg_p} not found; is {out} a compare output folder?")
    return load_config(cfg_p, cls=CompareConfig)


def collect(out_dir: str | Path) -> list[dict[str, Any]]:
    """One row per finished run of a compare folder (its summary plus label/β/seed): the grid's runs, or
    in a folder of ``hardneg compare --search`` the trials its ``search.json`` lists."""
    cfg = load_compare_config(out_dir)
    sp = Path(out_dir) / SEARCH
    if sp.is_file():
        trials = read_json_object(sp, "search summary", "rerun the search with --resume").get("trials", [])
        keys = [(t["label"], t["beta"], t["seed"], t["run"]) for t in trials if t.get("run")]
    else:
        keys = [(s.label, s.beta, s.seed, s.name) for s in expand_grid(cfg)]
    rows = []
    for label, beta, seed, name in keys:
        summ = Path(out_dir) / RUNS / name / SUMMARY
        if summ.is_file():
            s = read_summary(summ)
            rows.append({"label": label, "beta": beta, "seed": seed, "run": name, **s})
    return rows
