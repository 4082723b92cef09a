r"""The cross-modal experiment: two towers on captioned scenes, one run per (strategy, seed).

Each run trains an image tower and a text tower with `ClipLoss`
and a learnable temperature (`LogitScale`), then measures on the test and
the compositional split:

- image→text and text→image Recall@1/5/10 — the image–text retrieval convention (CLIP, Karpathy &
  Fei-Fei): a query counts as a hit when *any* relevant item is among the top k. The gallery is
  every caption of the split, and a caption is relevant to every image it is true of
  (`hardneg.data.scenes.truth_matrix`), not only to the image it was written for;
- the swap test per edit kind: the share of (image, caption) pairs where the image scores its
  caption above every one-edit swap of that kind that is false of the image
  (`hardneg.negatives.caption_edits`, `hardneg.data.scenes.caption_true`).

Strategies are config mappings for `cross_modal_strategy`
(preset names and components by ``kind``), plus ``edits: r``: r one-edit false swaps of each
image's caption, encoded by the text tower, as negatives owned by that image.

Runs are written as ``<out>/runs/<strategy>_seed<seed>.json``; a run whose file exists with the same
configuration is not repeated, so an interrupted full experiment resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field

from hardneg.data.scenes import (
    COLOURS,
    COUNTS,
    SHAPES,
    SIZES,
    WORDS,
    Scenes,
    caption_true,
    make_scenes,
    tokenize,
    truth_matrix,
)
from hardneg.integrations.open_clip import ClipLoss
from hardneg.io import atomic_open, atomic_write_text, read_json_object
from hardneg.models.towers import FrozenTextTower, ImageTower, TextTower
from hardneg.negatives.caption_edits import EDIT_KINDS, EditVocabulary, one_edit_swaps
from hardneg.negatives.cross_modal import LogitScale, pair_ids
from hardneg.seed import seed_everything

SCENE_VOCAB = EditVocabulary(colours=tuple(COLOURS), shapes=SHAPES, sizes=tuple(SIZES), counts=COUNTS)
EVAL_SPLITS = ("test", "compositional")
RECALL_AT = (1, 5, 10)
MAX_LEN = 12
READING_MARK = "<!-- reading: kept when the tables are regenerated -->"


class CrossModalConfig(BaseModel):
    """One experiment: data sizes, towers, optimisation, seeds and the strategies to compare."""

    model_config = ConfigDict(extra="forbid")

    n_train: int = Field(1500, ge=16)
    n_test: int = Field(400, ge=10)
    n_compositional: int = Field(400, ge=10)
    captions_per_image: int = Field(5, ge=1)
    data_seed: int = Field(0, ge=0)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(128, ge=4)
    lr: float = Field(2e-3, gt=0)
    dim: int = Field(64, ge=2)
    width: int = Field(16, ge=1)
    text_tower: str = Field("trainable", pattern="^(trainable|minilm)$")
    temperature: float = Field(0.07, gt=0)  # the initial temperature of the learnable logit scale
    threads: int = Field(2, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    strategies: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def fingerprint(self, strategy: str) -> str:
        """Hash of everything that defines one strategy's runs (for resuming)."""
        d = self.model_dump(mode="json")
        d["strategies"] = {strategy: d["strategies"][strategy]}
        d.pop("seeds")
        d.pop("threads")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def load_crossmodal_config(path: str | Path, overrides: list[str] | None = None) -> CrossModalConfig:
    """Read a YAML config, apply ``key=value`` overrides (`hardneg.runs.apply_overrides`) and
    validate it; errors name the file."""
    from hardneg.runs.config import apply_overrides, load_raw

    p = Path(path)
    if not p.is_file():  # a file only: the shipped configs load_raw also knows are training configs
        raise FileNotFoundError(f"config file not found: {p}")
    raw = apply_overrides(load_raw(p), overrides)
    try:
        cfg = CrossModalConfig.model_validate(raw)
    except Exception as e:  # pydantic's ValidationError: one line naming the file
        first = str(e).splitlines()
        raise ValueError(f"{p}: invalid crossmodal config: {' '.join(first[1:3]) if len(first) > 2 else e}") from None
    if not cfg.strategies:
        raise ValueError(f"{p}: 'strategies' is empty")
    from hardneg.runs import check_path_name

    for name in cfg.strategies:  # each names its run files under the output folder
        check_path_name(name, f"{p}: strategy name")
    return cfg


# ---------------------------------------------------------------------------------------------
# data: splits, the text table and the false swaps
# ---------------------------------------------------------------------------------------------


class TextTable:
    """Every string a run encodes (captions and swaps), each once, with its token ids."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def id(self, s: str) -> int:
        return self.index.setdefault(s, len(self.index))

    def strings(self) -> list[str]:
        return list(self.index)


class SplitData:
    """A split with its caption ids and, per (image, caption), the false one-edit swaps by kind."""

    def __init__(self, scenes: Scenes, table: TextTable) -> None:
        self.scenes = scenes
        self.caption_ids = [[table.id(c) for c in caps] for caps in scenes.captions]
        self.swaps: list[list[dict[str, list[int]]]] = []
        for objs, caps in zip(scenes.objects, scenes.captions, strict=True):
            per_cap = []
            for c in caps:
                sw = one_edit_swaps(c, EDIT_KINDS, SCENE_VOCAB)
                per_cap.append({k: [table.id(v) for v in vs if not caption_true(objs, v)] for k, vs in sw.items()})
            self.swaps.append(per_cap)
        self.gallery = sorted({c for caps in self.caption_ids for c in caps})
        self._truth: torch.Tensor | None = None

    def truth(self, table: TextTable) -> torch.Tensor:
        """(n_images × gallery) bool: which gallery captions are true of which image."""
        if self._truth is None:
            strings = table.strings()
            self._truth = truth_matrix(self.scenes.objects, [strings[c] for c in self.gallery])
        return self._truth


def build_data(cfg: CrossModalConfig) -> tuple[dict[str, SplitData], TextTable]:
    table = TextTable()
    data = {
        "train": SplitData(make_scenes("train", cfg.n_train, cfg.data_seed, cfg.captions_per_image), table),
        "test": SplitData(make_scenes("test", cfg.n_test, cfg.data_seed, cfg.captions_per_image), table),
        "compositional": SplitData(
            make_scenes("compositional", cfg.n_compositional, cfg.data_seed, cfg.captions_per_image), table
        ),
    }
    return data, table


def minilm_table(strings: list[str], cache_dir: Path) -> torch.Tensor:
    """all-MiniLM-L6-v2 embeddings of ``strings`` (cached in ``cache_dir`` by content hash)."""
    from hardneg.mining.encode import load_sentence_model

    key = hashlib.sha256("\n".join(strings).encode()).hexdigest()[:16]
    path = cache_dir / f"minilm_{key}.npy"
    if path.is_file():
        from hardneg.arrays import check_real, load_array_file

        return torch.from_numpy(check_real(load_array_file(path, "MiniLM cache"), str(path)))
    model = load_sentence_model()
    emb = model.encode(strings, batch_size=256, convert_to_numpy=True, normalize_embeddings=True)
    with atomic_open(path, "wb") as f:  # a killed run leaves no half-written cache that the next one reads
        np.save(f, emb.astype(np.float32))
    return torch.from_numpy(emb.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------


class Towers(torch.nn.Module):
    """The image tower, the text tower (over text-table ids) and CLIP's learnable logit scale."""

    def __init__(self, cfg: CrossModalConfig, table: TextTable, frozen: torch.Tensor | None = None) -> None:
        super().__init__()
        self.image = ImageTower(cfg.dim, cfg.width)
        if cfg.text_tower == "minilm":
            if frozen is None:
                raise ValueError("text_tower 'minilm' needs the frozen embedding table")
            self.text_model: torch.nn.Module = FrozenTextTower(frozen, cfg.dim)
            self.register_buffer("tokens", torch.zeros(0, dtype=torch.long), persistent=False)
        else:
            self.text_model = TextTower(len(WORDS), MAX_LEN, cfg.dim)
            self.register_buffer("tokens", tokenize(table.strings(), MAX_LEN), persistent=False)
        self.logit_scale = LogitScale(cfg.temperature)

    def text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_model(self.tokens[ids] if self.tokens.numel() else ids)


def _strategy_spec(spec: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    s = dict(spec)
    edits = int(s.pop("edits", 0))
    return s, edits


class Run:
    """One (strategy, seed): the towers, the loss, the optimiser and the sampling generator.
    `step` trains on one batch of training images; ``loss_fn`` may be any callable with
    ClipLoss's signature (the benchmark passes a literal CLIP loss)."""

    def __init__(
        self,
        cfg: CrossModalConfig,
        strategy: str,
        seed: int,
        data: dict[str, SplitData],
        table: TextTable,
        frozen: torch.Tensor | None = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        spec, self.n_edits = _strategy_spec(cfg.strategies[strategy]) if strategy in cfg.strategies else ({}, 0)
        self.gen = seed_everything(seed)
        self.towers = Towers(cfg, table, frozen)
        self.loss_fn = loss_fn if loss_fn is not None else ClipLoss(spec)
        params = [*self.towers.parameters()]
        if isinstance(self.loss_fn, torch.nn.Module):
            params += list(self.loss_fn.parameters())
        self.opt = torch.optim.Adam(params, lr=cfg.lr)
        self.train = data["train"]
        self.X = self.train.scenes.float_images()
        self.step_count = 0
        self.diag_sum: dict[str, float] = {}
        self.diag_n: dict[str, int] = {}

    def batch_order(self, batch_size: int) -> list[torch.Tensor]:
        """One epoch of batches of training-image indices (the last partial batch dropped)."""
        n = len(self.train.scenes)
        perm = torch.randperm(n, generator=self.gen)
        return [perm[b0 : b0 + batch_size] for b0 in range(0, n - batch_size + 1, batch_size)]

    def step(self, idx: torch.Tensor) -> float:
        """One optimiser step on training images ``idx``, each with one caption drawn at random."""
        tr, gen, towers = self.train, self.gen, self.towers
        il = idx.tolist()
        pick = [int(torch.randint(len(tr.caption_ids[i]), (1,), generator=gen)) for i in il]
        cap_ids = torch.tensor([tr.caption_ids[i][p] for i, p in zip(il, pick, strict=True)])
        ids = pair_ids(idx, [tr.scenes.captions[i][p] for i, p in zip(il, pick, strict=True)])
        zi = towers.image(self.X[idx])
        zt = towers.text(cap_ids)
        negatives = None
        if self.n_edits:
            rows = []
            for i, p in zip(il, pick, strict=True):
                pool = [v for vs in tr.swaps[i][p].values() for v in vs]
                if not pool:
                    raise ValueError(f"caption {tr.scenes.captions[i][p]!r} has no false one-edit swap")
                sel = torch.randint(len(pool), (self.n_edits,), generator=gen)
                rows.append([pool[int(j)] for j in sel])
            negatives = towers.text(torch.tensor(rows).flatten()).reshape(len(il), self.n_edits, -1)
        labels = tr.scenes.labels[idx]
        loss = self.loss_fn(
            zi, zt, towers.logit_scale(), labels=labels, ids=ids, negatives=negatives, step=self.step_count
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        for k, v in getattr(self.loss_fn, "last_diagnostics", {}).items():
            if k in ("fn_weight_share", "hardest_fn_share", "ess", "skipped_share") and v == v:  # not NaN
                self.diag_sum[k] = self.diag_sum.get(k, 0.0) + float(v)
                self.diag_n[k] = self.diag_n.get(k, 0) + 1
        self.step_count += 1
        return float(loss.detach())


def train_run(
    cfg: CrossModalConfig,
    strategy: str,
    seed: int,
    data: dict[str, SplitData],
    table: TextTable,
    frozen: torch.Tensor | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train one (strategy, seed) and evaluate it; returns the run's record."""
    run = Run(cfg, strategy, seed, data, table, frozen)
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        for idx in run.batch_order(cfg.batch_size):
            loss = run.step(idx)
        if log:
            t = 1 / float(run.towers.logit_scale().detach())
            log(f"  {strategy} seed {seed} epoch {epoch + 1}/{cfg.epochs} loss {loss:.3f} t {t:.4f}")
    train_s = time.perf_counter() - t0
    run.towers.eval()
    metrics = {split: evaluate(run.towers, data[split], table) for split in EVAL_SPLITS}
    return {
        "strategy": strategy,
        "seed": seed,
        "fingerprint": cfg.fingerprint(strategy),
        "steps": run.step_count,
        "final_temperature": 1 / float(run.towers.logit_scale().detach()),
        "diagnostics": {k: run.diag_sum[k] / run.diag_n[k] for k in run.diag_sum},
        "metrics": metrics,
        "train_seconds": train_s,
    }


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------


def hits_at_k(sim: torch.Tensor, relevant: list[set[int]], ks: tuple[int, ...] = RECALL_AT) -> dict[int, float]:
    """Share of queries (rows of ``sim``) with a relevant column among their top k, for each k."""
    kmax = min(max(ks), sim.shape[1])
    top = sim.topk(kmax, dim=1).indices.tolist()
    out = {}
    for k in ks:
        out[k] = float(np.mean([any(j in rel for j in row[:k]) for row, rel in zip(top, relevant, strict=True)]))
    return out


@torch.no_grad()
def evaluate(towers: Towers, split: SplitData, table: TextTable) -> dict[str, float]:
    """Recall@k both directions and the swap test per edit kind on one split. The gallery is every
    caption of the split; a caption is relevant to every image it is true of."""
    sc = split.scenes
    zi = torch.cat([towers.image(sc.float_images(slice(i, i + 256))) for i in range(0, len(sc), 256)])
    zi = torch.nn.functional.normalize(zi, dim=1)
    col = {c: j for j, c in enumerate(split.gallery)}
    zt = torch.nn.functional.normalize(towers.text(torch.tensor(split.gallery)), dim=1)
    sim = zi @ zt.T
    truth = split.truth(table)
    out: dict[str, float] = {}
    i2t = hits_at_k(sim, [set(torch.nonzero(r).flatten().tolist()) for r in truth])
    t2i = hits_at_k(sim.T.contiguous(), [set(torch.nonzero(r).flatten().tolist()) for r in truth.T])
    for k in RECALL_AT:
        out[f"i2t_R@{k}"] = i2t[k]
        out[f"t2i_R@{k}"] = t2i[k]
    wins: dict[str, list[bool]] = {k: [] for k in EDIT_KINDS}
    needed = sorted({v for per_cap in split.swaps for kinds in per_cap for vs in kinds.values() for v in vs})
    row = {v: j for j, v in enumerate(needed)}
    zs = torch.nn.functional.normalize(towers.text(torch.tensor(needed)), dim=1)
    for i, per_cap in enumerate(split.swaps):
        for p, kinds in enumerate(per_cap):
            s_true = float(sim[i, col[split.caption_ids[i][p]]])
            for kind, vs in kinds.items():
                if vs:
                    s_swap = zs[[row[v] for v in vs]] @ zi[i]
                    wins[kind].append(s_true > float(s_swap.max()))
    for kind, w in wins.items():
        out[f"swap_{kind}"] = float(np.mean(w)) if w else float("nan")
        out[f"swap_{kind}_n"] = float(len(w))
    return out


# ---------------------------------------------------------------------------------------------
# the grid, resuming, the results page
# ---------------------------------------------------------------------------------------------


def _read_record(path: Path) -> dict[str, Any]:
    """A finished run's record; a damaged one is one ``ValueError`` naming it (delete it to rerun)."""
    return read_json_object(path, "run record", "delete it to train that run again")


def run_grid(
    cfg: CrossModalConfig,
    out: Path,
    strategies: list[str] | None = None,
    log: Callable[[str], None] | None = print,
    train: bool = True,
) -> list[dict[str, Any]]:
    """Every (strategy, seed) of ``cfg`` not already in ``out/runs``; returns all records.
    ``train=False`` only collects the finished runs (a partial table while an experiment runs)."""
    torch.set_num_threads(cfg.threads)
    names = strategies or list(cfg.strategies)
    unknown = [s for s in names if s not in cfg.strategies]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; the config defines {list(cfg.strategies)}")
    runs_dir = out / "runs"
    if train:
        runs_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    data = table = frozen = None
    records = []
    finished = {p: _read_record(p) for p in sorted(runs_dir.glob("*_seed*.json"))}  # a damaged one: refused now
    # seed-major order: every strategy gets its first seed before any gets its second, so an
    # interrupted experiment still compares all of them
    for seed in cfg.seeds:
        for name in names:
            path = runs_dir / f"{name}_seed{seed}.json"
            if path in finished:
                rec = finished[path]
                if rec.get("fingerprint") == cfg.fingerprint(name):
                    records.append(rec)
                    continue
            if not train:
                continue
            if data is None:
                data, table = build_data(cfg)
                if cfg.text_tower == "minilm":
                    frozen = minilm_table(table.strings(), out / "cache")
            rec = train_run(cfg, name, seed, data, table, frozen, log)
            atomic_write_text(path, json.dumps(rec, indent=1))
            if log:
                m = rec["metrics"]["test"]
                log(f"{name} seed {seed}: test i2t R@1 {m['i2t_R@1']:.3f} t2i R@1 {m['t2i_R@1']:.3f} "
                    f"({rec['train_seconds']:.0f} s)")
            records.append(rec)
    return records


def _mean_std(vals: list[float]) -> str:
    v = [x for x in vals if x == x]
    if not v:
        return "–"
    m = float(np.mean(v))
    if len(v) == 1:  # one seed: no spread to report
        return f"{100 * m:.1f}"
    return f"{100 * m:.1f} ± {100 * float(np.std(v, ddof=1)):.1f}"


def swap_chance(cfg: CrossModalConfig) -> dict[str, dict[str, float]]:
    """``{split: {kind: chance}}``: the swap test of a model that scores at random — the mean over
    (image, caption) pairs of 1 / (1 + number of false swaps of that kind)."""
    data, _ = build_data(cfg)
    out: dict[str, dict[str, float]] = {}
    for split in EVAL_SPLITS:
        per = {k: [1.0 / (1 + len(kinds[k])) for caps in data[split].swaps for kinds in caps if kinds[k]]
               for k in EDIT_KINDS}
        out[split] = {k: float(np.mean(v)) if v else float("nan") for k, v in per.items()}
    return out


def results_tables(records: list[dict[str, Any]], chance: dict[str, dict[str, float]] | None = None) -> str:
    """Markdown tables (percent, mean ± sample std over seeds) of every split and the diagnostics;
    ``chance`` (`swap_chance`) adds the swap test's chance row."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault(r["strategy"], []).append(r)
    lines: list[str] = []
    for split in EVAL_SPLITS:
        lines.append(f"### {split} split: retrieval (Recall@k, %)\n")
        cols = [f"{d}_R@{k}" for d in ("i2t", "t2i") for k in RECALL_AT]
        lines.append("| strategy | seeds | " + " | ".join(c.replace("_", " ") for c in cols) + " |")
        lines.append("|" + " --- |" * (len(cols) + 2))
        for name, rs in by.items():
            cells = [_mean_std([r["metrics"][split][c] for r in rs]) for c in cols]
            lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(f"### {split} split: swap test (% of captions scored above every false one-edit swap)\n")
        lines.append("| strategy | " + " | ".join(EDIT_KINDS) + " |")
        lines.append("|" + " --- |" * (len(EDIT_KINDS) + 1))
        for name, rs in by.items():
            cells = [_mean_std([r["metrics"][split][f"swap_{k}"] for r in rs]) for k in EDIT_KINDS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if chance is not None:
            lines.append("| *chance* | " + " | ".join(f"{100 * chance[split][k]:.1f}" for k in EDIT_KINDS) + " |")
        n_cases = {k: int(by[next(iter(by))][0]["metrics"][split][f"swap_{k}_n"]) for k in EDIT_KINDS}
        lines.append("")
        lines.append("Captions with at least one false swap of each kind: "
                     + ", ".join(f"{k} {v}" for k, v in n_cases.items()) + ".\n")
    lines.append("### Training diagnostics (mean over steps)\n")
    lines.append("`fn_weight_share`: share of the negative weight π on candidates whose scene has the anchor's object "
                 "set (same colours and shapes); `hardest_fn_share`: share of anchors whose most similar negative "
                 "has it; `ess`: effective number of negatives; final t: the learned temperature.\n")
    lines.append("| strategy | fn_weight_share (%) | hardest_fn_share (%) | ess | final t |")
    lines.append("| --- | --- | --- | --- | --- |")
    for name, rs in by.items():
        fw = _mean_std([r["diagnostics"].get("fn_weight_share", math.nan) for r in rs])
        hf = _mean_std([r["diagnostics"].get("hardest_fn_share", math.nan) for r in rs])
        ess = [r["diagnostics"].get("ess", math.nan) for r in rs]
        t = [r["final_temperature"] for r in rs]
        lines.append(f"| {name} | {fw} | {hf} | {np.nanmean(ess):.1f} | {np.mean(t):.4f} |")
    return "\n".join(lines) + "\n"


def write_results_page(
    sections: list[tuple[str, CrossModalConfig, list[dict[str, Any]]]], doc: Path, command: str
) -> None:
    """Write ``doc``: one section per (config name, config, records), regenerated; the hand-written
    reading below `READING_MARK` is kept."""
    reading = ""
    if doc.is_file():
        text = doc.read_text(encoding="utf-8")
        if READING_MARK in text:
            reading = text.split(READING_MARK, 1)[1].lstrip("\n")
    lines = [
        "# Cross-modal negatives on captioned scenes",
        "",
        f"Regenerate with `{command}` (runs already in the output folder are reused).",
        "",
    ]
    for name, cfg, records in sections:
        lines += [
            f"## {name}: {cfg.text_tower} text tower",
            "",
            f"Data: {cfg.n_train} training scenes, {cfg.n_test} test and {cfg.n_compositional} compositional "
            f"scenes, {cfg.captions_per_image} captions per image (`hardneg.data.scenes`). Towers: "
            f"`ImageTower(dim={cfg.dim}, width={cfg.width})` and the {cfg.text_tower} text tower; "
            f"{cfg.epochs} epochs, batch {cfg.batch_size}, Adam lr {cfg.lr}, learnable temperature from "
            f"{cfg.temperature}. Seeds {cfg.seeds}; mean ± sample std over seeds.",
            "",
            "Strategies (config mappings, `hardneg.integrations.open_clip.cross_modal_strategy`):",
            "",
        ]
        for sname, spec in cfg.strategies.items():
            lines.append(f"- **{sname}**: `{json.dumps(spec, sort_keys=True)}`")
        tables = results_tables(records, swap_chance(cfg))
        lines += ["", tables.replace("\n### ", "\n#### ").replace("### ", "#### ", 1)]
    body = "\n".join(lines) + "\n" + READING_MARK + "\n\n" + reading
    atomic_write_text(doc, body.rstrip("\n") + "\n")
