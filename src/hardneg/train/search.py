"""``hardneg compare --search``: successive halving (or Hyperband) over the strategies of a compare config
and their knobs, scheduled by Optuna, instead of training the whole grid.

Every trial is a strategy with values for its knobs (β, k, queue size, ...), trained as an ordinary run
of the compare folder (``<out>/runs/<name>/``: the same marker, config, checkpoint and ``metrics.jsonl``
as a grid run) at the training seed ``search.seed``. It trains one evaluated epoch at a time; after each
the kNN accuracy the trainer reports is handed to the pruner, which stops the trial when it falls out of
the best 1/``reduction_factor`` of the trials that reached the same rung (rungs at ``min_epochs`` ×
``reduction_factor``^k epochs). Survivors train to ``train.epochs`` and finish like a grid run, so
``hardneg report`` reads the folder as it reads a grid (``search.json`` lists the trials' runs).

Files beside the runs: ``search.journal``, Optuna's journal storage (JSON lines, nothing executable), and
``search.json``, the summary: every trial, its knobs, the epochs and rung it reached, the training steps
spent and the grid's. Resumable: Ctrl-C / SIGTERM checkpoint the run in flight and stop; ``--resume``
reloads the journal and continues the interrupted trial from its checkpoint. Deterministic given the
seed: the sampler of trial n is seeded with (seed, n), so a resumed search samples what an
uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardneg import runs
from hardneg._optional import require
from hardneg.io import atomic_write_text
from hardneg.runs import CompareConfig, RunSpec, SearchConfig, SearchKnob, expand_grid, has_beta, run_config
from hardneg.runs.config import GridLoss, set_dotted
from hardneg.runs.metrics import mean_std
from hardneg.train.compare import load_data
from hardneg.train.losses_from_config import build_objective
from hardneg.train.plateau import knn_curve
from hardneg.train.trainer import STOP_SIGNALS, NonFiniteLossError, RunInterrupted, Trainer

STUDY = "hardneg-search"
#: knobs searched by default, per preset (β of tilted entries is added by `default_knobs`)
DEFAULT_KNOBS: dict[str, dict[str, SearchKnob]] = {
    "topk": {"k": SearchKnob(choices=[4, 8, 16, 32, 64])},
    "moco_queue": {"size": SearchKnob(choices=[1024, 2048, 4096])},
    "mochi": {"size": SearchKnob(choices=[1024, 2048, 4096])},
}
#: the range of β searched for a tilted entry (η(s) = e^{βs/t}; β = 0 is its untilted base)
BETA_RANGE = SearchKnob(low=0.0, high=2.0)


@dataclass(frozen=True)
class Arm:
    """One strategy of the search space: its grid entry and its knobs."""

    entry: GridLoss
    knobs: dict[str, SearchKnob]


def default_knobs(entry: GridLoss) -> dict[str, SearchKnob]:
    """β in [0, 2] for a tilted entry, plus `DEFAULT_KNOBS` of its preset."""
    opts = entry.strategy if entry.strategy is not None else entry.params
    knobs = {"beta": BETA_RANGE} if has_beta(entry.loss_name, opts) else {}
    return {**knobs, **DEFAULT_KNOBS.get(entry.loss_name, {})}


def search_space(cfg: CompareConfig) -> dict[str, Arm]:
    """Grid label -> `Arm` of the strategies ``cfg.search`` considers (every grid entry with its
    default knobs when it names none)."""
    sc = cfg.search or SearchConfig()
    entries = {g.title: g for g in cfg.grid.losses}
    if sc.strategies is None:
        return {label: Arm(g, default_knobs(g)) for label, g in entries.items()}
    return {s.label: Arm(entries[s.label], default_knobs(entries[s.label]) if s.knobs is None else dict(s.knobs))
            for s in sc.strategies}


def _get_dotted(opts: dict[str, Any], path: str) -> Any:
    cur: Any = opts
    for k in path.split("."):
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    return cur


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def trial_spec(cfg: CompareConfig, arm: Arm, values: dict[str, Any], number: int) -> RunSpec:
    """The run of trial ``number``: the arm's grid entry with the knob values set, at the search's seed.

    Its label is ``t<number>_<grid label>`` plus the knobs other than β (β is the run's own column); a
    tilted entry whose β is not searched runs at the grid's first β, as the grid's first run of it does."""
    g = arm.entry
    opts = copy.deepcopy(g.strategy if g.strategy is not None else g.params)
    for k, v in values.items():
        set_dotted(opts, k, v, f"search.strategies: knob of {g.title!r}")
    beta = None
    if has_beta(g.loss_name, opts):
        opts.setdefault("beta", float(cfg.grid.betas[0]))
        beta = float(opts["beta"])
    label = f"t{number:03d}_{g.title}" + "".join(
        f"_{k.rsplit('.', 1)[-1]}{_fmt(v)}" for k, v in sorted(values.items()) if k != "beta")
    seed = (cfg.search or SearchConfig()).seed
    if g.strategy is not None:
        return RunSpec(label, None, {}, beta, seed, strategy=opts)
    return RunSpec(label, g.name, opts, beta, seed)


def knob_default(cfg: CompareConfig, arm: Arm, knob: str) -> Any:
    """The value the grid runs ``knob`` at (its mapping, the grid's first β, the preset's default), or None
    when unknown or outside the knob's range: the first trial of each strategy starts there."""
    from hardneg.negatives.registry import PRESETS

    g, spec = arm.entry, arm.knobs[knob]
    v = _get_dotted(g.strategy if g.strategy is not None else g.params, knob)
    if v is None and knob == "beta":
        v = float(cfg.grid.betas[0])
    if v is None and g.loss_name in PRESETS:
        v = PRESETS[g.loss_name].knobs().get(knob)
    if spec.choices is not None:
        return v if v in spec.choices else None
    low, high = _range(spec)
    if isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high:
        return int(v) if spec.integer else float(v)
    return None


def _range(spec: SearchKnob) -> tuple[float, float]:
    """``(low, high)`` of a knob that is a range (`SearchKnob` holds both when it has no choices)."""
    if spec.low is None or spec.high is None:
        raise ValueError(f"a knob without choices needs low and high, got {spec}")
    return spec.low, spec.high


def _end(spec: SearchKnob, end: int) -> Any:
    """The first (``end`` 0) or last (-1) value a knob takes."""
    if spec.choices is not None:
        return spec.choices[end]
    v = _range(spec)[end]
    return int(v) if spec.integer else v


def check_space(cfg: CompareConfig, space: dict[str, Arm]) -> None:
    """Build every arm's objective at both ends of its knobs before anything is written; an unknown
    option or a value the strategy refuses is a ValueError naming the strategy."""
    for label, arm in space.items():
        for end in (0, -1):
            values = {k: _end(s, end) for k, s in arm.knobs.items()}
            try:
                build_objective(run_config(cfg, trial_spec(cfg, arm, values, 0)))
            except (ValueError, TypeError) as e:
                raise ValueError(f"search.strategies: {label!r} with knobs {values}: {e}") from None


def rung_epochs(sc: SearchConfig, epochs: int) -> list[int]:
    """The successive-halving rungs: ``min_epochs`` × ``reduction_factor``^k below ``epochs``, then
    ``epochs`` (a trial reaching the last one finished)."""
    out, r = [], sc.min_epochs
    while r < epochs:
        out.append(r)
        r *= sc.reduction_factor
    return [*out, epochs]


def _suggest(trial: Any, name: str, spec: SearchKnob) -> Any:
    if spec.choices is not None:
        return trial.suggest_categorical(name, spec.choices)
    low, high = _range(spec)
    if spec.integer:
        return trial.suggest_int(name, int(low), int(high), log=spec.log)
    return trial.suggest_float(name, low, high, log=spec.log)


def trial_values(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The strategy label and knob values of a trial's Optuna params (``strategy``, ``<label>.<knob>``)."""
    label = params["strategy"]
    return label, {k[len(label) + 1:]: v for k, v in params.items() if k.startswith(label + ".")}


@dataclass
class _Search:
    """What the trial loop needs: the config, folder, data, study and how to print."""

    cfg: CompareConfig
    out: Path
    space: dict[str, Arm]
    data: tuple[Any, Any]
    optuna: Any
    study: Any
    echo: Any
    stop: int = 0

    @property
    def sc(self) -> SearchConfig:
        return self.cfg.search or SearchConfig()

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data[0][0]) // self.cfg.train.batch_size

    def check_stop(self) -> None:
        if self.stop:
            name = signal.Signals(self.stop).name
            raise RunInterrupted(f"interrupted ({name}) between epochs of the search in {self.out}; "
                                 "continue with --resume", self.stop)


@contextlib.contextmanager
def _stop_flag(s: _Search) -> Iterator[None]:
    """Between trainings, Ctrl-C / SIGTERM only set a flag the loop checks, so a journal line being
    appended is never cut; inside training the Trainer's own handlers checkpoint and stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: Any) -> None:
        s.stop = signum

    old = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _open_study(optuna: Any, out: Path, cfg: CompareConfig, space: dict[str, Arm]) -> Any:
    """The study in the folder's journal; a fresh one starts with each strategy at the grid's values."""
    storages = optuna.storages
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the journal classes are marked experimental in some releases
        path = str(out / runs.SEARCH_JOURNAL)
        if hasattr(storages, "journal") and hasattr(storages.journal, "JournalFileBackend"):
            j = storages.journal
            backend = j.JournalFileBackend(path, lock_obj=j.JournalFileOpenLock(path))
            storage = j.JournalStorage(backend)
        else:  # optuna < 4
            storage = storages.JournalStorage(
                storages.JournalFileStorage(path, lock_obj=storages.JournalFileOpenLock(path)))
    sc = cfg.search or SearchConfig()
    if sc.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=sc.min_epochs, max_resource=cfg.train.epochs,
                                                reduction_factor=sc.reduction_factor)
    else:
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=sc.min_epochs,
                                                        reduction_factor=sc.reduction_factor)
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize", pruner=pruner,
                                load_if_exists=True)
    queued = [t.system_attrs.get("fixed_params") for t in study.get_trials(deepcopy=False)]
    for label, arm in list(space.items())[: _n_trials(cfg, space)]:  # those a stop cut short too
        fixed = {"strategy": label, **{f"{label}.{k}": v for k in arm.knobs
                                       if (v := knob_default(cfg, arm, k)) is not None}}
        if fixed not in queued:
            study.enqueue_trial(fixed)
    return study


def _n_trials(cfg: CompareConfig, space: dict[str, Arm]) -> int:
    sc = cfg.search or SearchConfig()
    return sc.trials if sc.trials is not None else 2 * len(space)


def _sampler(s: _Search, n: int) -> Any:
    """Trial ``n``'s sampler: TPE seeded with (seed, n), so what it samples does not depend on whether
    the process sampled the trials before it (a resumed search samples as an uninterrupted one)."""
    return s.optuna.samplers.TPESampler(seed=(s.sc.seed * 1_000_003 + n) % 2**32)


def _next_trial(s: _Search) -> Any | None:
    """The interrupted trial to continue, else a new one, or None when the search is done."""
    trials = s.study.get_trials(deepcopy=False)
    running = [t for t in trials if t.state == s.optuna.trial.TrialState.RUNNING]
    done = sum(t.state.is_finished() for t in trials)
    s.study.sampler = _sampler(s, done)  # also for a resumed trial stopped before it sampled its knobs
    if running:
        return s.optuna.trial.Trial(s.study, running[0]._trial_id)
    if done >= _n_trials(s.cfg, s.space):
        return None
    return s.study.ask()


def _same_as_before(s: _Search, trial: Any) -> Any | None:
    """An earlier finished trial with the same strategy and knobs: its result is reused, not retrained."""
    TS = s.optuna.trial.TrialState
    for t in s.study.get_trials(deepcopy=False, states=(TS.COMPLETE, TS.PRUNED)):
        if t.number != trial.number and t.params == trial.params:
            return t
    return None


def _reported(s: _Search, trial: Any) -> dict[int, float]:
    """The kNN accuracies trial ``trial`` has reported, by epoch (a resumed trial's too)."""
    return dict(s.study.get_trials(deepcopy=False)[trial.number].intermediate_values)


def _run_trial(s: _Search, trial: Any, n_trials: int) -> None:
    """Train one trial an evaluated epoch at a time, reporting kNN to the pruner; tell the study."""
    TS = s.optuna.trial.TrialState
    label = trial.suggest_categorical("strategy", list(s.space))
    arm = s.space[label]
    values = {k: _suggest(trial, f"{label}.{k}", spec) for k, spec in arm.knobs.items()}
    spec = trial_spec(s.cfg, arm, values, trial.number)
    head = f"[trial {trial.number + 1}/{n_trials}] {spec.name}"
    twin = _same_as_before(s, trial)
    if twin is not None:
        for ep, v in sorted(twin.intermediate_values.items()):
            trial.report(v, ep)
        trial.set_user_attr("same_as", twin.number)
        s.study.tell(trial, twin.value if twin.state == TS.COMPLETE else None, state=twin.state)
        s.echo(f"{head}: same knobs as trial {twin.number + 1}, its result reused")
        return
    rc, rd = run_config(s.cfg, spec), runs.run_dir(s.out, spec)
    every, epochs = s.cfg.eval.every_epochs, s.cfg.train.epochs
    if _reported(s, trial) and trial.should_prune():  # stopped between a report and its decision
        s.study.tell(trial, state=TS.PRUNED)
        return
    while True:
        s.check_stop()
        tr = Trainer(rc, rd, train_data=s.data[0], test_data=s.data[1], resume=True)
        target = min(epochs, (tr.epoch // every + 1) * every)
        if s.stop:
            tr.close()
            s.check_stop()
        try:
            res = tr.fit(until_epoch=target)
        except NonFiniteLossError as e:  # a diverging configuration is a result, not the end of the search
            trial.set_user_attr("error", str(e))
            s.study.tell(trial, state=TS.FAIL)
            s.echo(f"{head}: failed: {e}")
            return
        before = _reported(s, trial)
        for ep, acc in knn_curve(runs.read_metrics(rd)):
            if ep not in before:
                trial.report(acc, ep)
        ep, acc = max(_reported(s, trial).items())
        if res.get("finished"):
            s.study.tell(trial, res["knn_acc"])
            s.echo(f"{head}: finished, kNN {res['knn_acc']:.4f} after {epochs} epochs")
            return
        if trial.should_prune():
            s.study.tell(trial, state=TS.PRUNED)
            s.echo(f"{head}: pruned at epoch {ep} (kNN {acc:.4f})")
            return
        s.echo(f"{head}: epoch {ep} kNN {acc:.4f}, continues")


def finalists(s: _Search) -> list[tuple[str, dict[str, Any], int]]:
    """The ``search.confirm`` finalists as (strategy label, knob values, trial number): the best distinct
    strategies at the deepest rung below the full budget that at least that many strategies reached,
    ranked by their kNN accuracy at that rung's epoch (a strategy by its best trial there). Not the last
    rung: the trials that started first pass every rung unpruned (nothing to compare with yet), so the
    finished trials are those, not the best; a rung below it compares every trial that reached it at
    one epoch."""
    n = s.sc.confirm
    if not n:
        return []
    TS = s.optuna.trial.TrialState
    trials = [t for t in s.study.get_trials(deepcopy=False, states=(TS.COMPLETE, TS.PRUNED))
              if "same_as" not in t.user_attrs]
    best: dict[str, tuple[float, Any]] = {}
    rungs = rung_epochs(s.sc, s.cfg.train.epochs)
    for rung in reversed(rungs[:-1] or rungs):
        best = {}
        for t in trials:
            v = t.intermediate_values.get(rung)
            label = t.params["strategy"]
            if v is not None and (label not in best or v > best[label][0]):
                best[label] = (v, t)
        if len(best) >= n:
            break
    ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:n]
    return [(label, trial_values(t.params)[1], t.number) for label, (_, t) in ranked]


def _confirm_specs(s: _Search) -> list[tuple[str, dict[str, Any], int, list[RunSpec]]]:
    """Each finalist with its runs at every seed of ``grid.seeds`` (the one at the search's seed is the
    trial's own run, which continues from where the pruner stopped it)."""
    out = []
    for label, values, number in finalists(s):
        base = trial_spec(s.cfg, s.space[label], values, number)
        out.append((label, values, number, [dataclasses.replace(base, seed=sd) for sd in s.cfg.grid.seeds]))
    return out


def _trained_epochs(rd: Path) -> int:
    recs = runs.read_metrics(rd) if (rd / runs.METRICS).is_file() else []
    return max((r["epoch"] for r in recs if r.get("type") == "epoch"), default=0)


def _confirm(s: _Search) -> None:
    """Train every finalist to the end at every seed of ``grid.seeds`` (finished runs are kept)."""
    for label, _, _, specs in _confirm_specs(s):
        for spec in specs:
            rd = runs.run_dir(s.out, spec)
            if runs.read_summary(rd / runs.SUMMARY).get("finished"):
                continue
            s.check_stop()
            tr = Trainer(run_config(s.cfg, spec), rd, train_data=s.data[0], test_data=s.data[1], resume=True)
            try:
                res = tr.fit()
            except NonFiniteLossError as e:
                s.echo(f"[confirm] {spec.name}: failed: {e}")
                continue
            s.echo(f"[confirm] {label} {spec.name}: kNN {res['knn_acc']:.4f} after {s.cfg.train.epochs} epochs")


def confirmed(s: _Search, reached: dict[int, int]) -> list[dict[str, Any]]:
    """The finalists' rows, best mean kNN over seeds first: knobs, kNN per seed, mean and sample std, and
    the training steps their confirmation added (``reached``: trial number -> epochs its trial trained)."""
    rows = []
    for label, values, number, specs in _confirm_specs(s):
        accs, steps = {}, 0
        for spec in specs:
            rd = runs.run_dir(s.out, spec)
            summ = runs.read_summary(rd / runs.SUMMARY)
            if summ.get("finished"):
                accs[spec.seed] = summ["knn_acc"]
            own = reached.get(number, 0) if spec.seed == s.sc.seed else 0
            steps += max(_trained_epochs(rd) - own, 0) * s.steps_per_epoch
        vals = list(accs.values())
        mean, std = mean_std(vals) if vals else (None, None)
        rows.append({"strategy": label, "trial": number, "knobs": values,
                     "knn_by_seed": {str(k): v for k, v in accs.items()},
                     "knn_mean": mean, "knn_std": std if len(vals) > 1 else None,
                     "complete": len(vals) == len(specs), "steps": steps})
    return sorted(rows, key=lambda r: -(r["knn_mean"] if r["knn_mean"] is not None else -1.0))


def summarize(s: _Search) -> dict[str, Any]:
    """The summary ``search.json`` holds: every trial (knobs, state, epochs and rung reached, steps, kNN
    per evaluated epoch), the ranking of the finished ones, the steps spent and the grid's."""
    TS = s.optuna.trial.TrialState
    spe, epochs = s.steps_per_epoch, s.cfg.train.epochs
    rungs = rung_epochs(s.sc, epochs)
    rows = []
    for t in s.study.get_trials(deepcopy=False):
        if t.state not in (TS.COMPLETE, TS.PRUNED, TS.RUNNING, TS.FAIL) or "strategy" not in t.params:
            continue
        label, values = trial_values(t.params)
        spec = trial_spec(s.cfg, s.space[label], values, t.number)
        reused = "same_as" in t.user_attrs
        reached = max(t.intermediate_values, default=0)
        rows.append({
            "number": t.number, "strategy": label, "knobs": values, "state": t.state.name.lower(),
            "label": spec.label, "beta": spec.beta, "seed": spec.seed, "run": None if reused else spec.name,
            "same_as": t.user_attrs.get("same_as"), "epochs": reached,
            "rung": sum(r <= reached for r in rungs) - 1, "steps": 0 if reused else reached * spe,
            "knn_by_epoch": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            "knn_acc": t.value if t.state == TS.COMPLETE else None,
            **({"error": t.user_attrs["error"]} if "error" in t.user_attrs else {}),
        })
    done = sorted((r for r in rows if r["state"] == "complete" and r["run"]), key=lambda r: -r["knn_acc"])
    best: dict[str, dict[str, Any]] = {}
    for r in done:
        best.setdefault(r["strategy"], r)
    grid_steps = len(expand_grid(s.cfg)) * epochs * spe
    trials_done = len(rows) >= _n_trials(s.cfg, s.space) and all(r["state"] != "running" for r in rows)
    confirm = confirmed(s, {r["number"]: r["epochs"] for r in rows if r["run"]}) if trials_done else []
    return {
        "search": s.sc.model_dump(mode="json"), "epochs": epochs, "steps_per_epoch": spe, "rungs": rungs,
        "trials": rows, "finished": trials_done and all(r["complete"] for r in confirm),
        "confirmed": confirm,
        "ranking": [{"trial": r["number"], "run": r["run"], "strategy": r["strategy"], "knobs": r["knobs"],
                     "knn_acc": r["knn_acc"]} for r in done],
        "strategy_ranking": [{"strategy": k, "trial": r["number"], "knobs": r["knobs"], "knn_acc": r["knn_acc"]}
                             for k, r in best.items()],
        "steps_spent": sum(r["steps"] for r in rows) + sum(r["steps"] for r in confirm), "grid_steps": grid_steps,
        "grid_runs": len(expand_grid(s.cfg)),
    }


def _write_summary(s: _Search) -> dict[str, Any]:
    summary = summarize(s)
    atomic_write_text(s.out / runs.SEARCH, json.dumps(summary, indent=1) + "\n")
    return summary


def run_search(
    cfg: CompareConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False, echo: Any = print,
    finish: Callable[[Path], Any] | None = None,
) -> dict[str, Any]:
    """Run (or with ``resume`` continue) the search of ``cfg`` (its ``search`` section, or the defaults)
    in the compare folder ``out_dir``; return the summary, also written to ``search.json``. ``finish``
    (e.g. the report) is called with the folder when a trial finished, while the folder is still locked.

    The search space is checked (every strategy built at both ends of its knobs) and the data loaded
    before the folder is touched."""
    optuna = require("optuna", "search", feature="hardneg compare --search")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if resume and overwrite:
        raise ValueError("pass at most one of --resume and --overwrite")
    out = Path(out_dir)
    space = search_space(cfg)
    check_space(cfg, space)
    data = load_data(cfg)
    if not overwrite and (out / runs.RUNS).is_dir() and not (out / runs.SEARCH_JOURNAL).is_file():
        raise FileExistsError(f"output folder {out} holds a grid's runs (hardneg compare), not a search; "
                              "choose another folder")
    _, lock = runs.prepare_output(out, "compare", runs.dump_config(cfg), resume=resume, overwrite=overwrite)
    with lock:
        study = _open_study(optuna, out, cfg, space)
        s = _Search(cfg, out, space, data, optuna, study, echo)
        n = _n_trials(cfg, space)
        with _stop_flag(s):
            try:
                while (trial := _next_trial(s)) is not None:
                    _run_trial(s, trial, n)
                    _write_summary(s)
                _confirm(s)
            finally:
                summary = _write_summary(s)
        if finish is not None and summary["ranking"]:
            finish(out)
    return summary


def ranking_table(summary: dict[str, Any], top: int = 10) -> str:
    """Markdown: the best finished trials (strategy, knobs, kNN) and the steps spent against the grid's."""
    lines = ["| rank | trial | strategy | knobs | kNN % |", "|---|---|---|---|---|"]
    for i, r in enumerate(summary["ranking"][:top], 1):
        knobs = ", ".join(f"{k}={_fmt(v)}" for k, v in r["knobs"].items()) or "–"
        lines.append(f"| {i} | {r['trial'] + 1} | {r['strategy']} | {knobs} | {100 * r['knn_acc']:.2f} |")
    spent, grid = summary["steps_spent"], summary["grid_steps"]
    lines += ["", f"training steps: {spent:,} of the full grid's {grid:,} ({spent / grid:.1%}); "
              f"{len(summary['trials'])} trials, {len(summary['ranking'])} trained to the end"]
    return "\n".join(lines)


__all__ = ["BETA_RANGE", "DEFAULT_KNOBS", "Arm", "check_space", "default_knobs", "knob_default", "ranking_table",
           "rung_epochs", "run_search", "search_space", "summarize", "trial_spec", "trial_values"]
