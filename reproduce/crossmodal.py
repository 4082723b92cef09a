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

The output folder is a hardneg compare folder (`hardneg.runs`): the ``.hardneg`` marker, the
experiment's ``config.yaml`` and one run folder per (strategy, seed), ``runs/<strategy>_s<seed>/``
(`hardneg.runs.RunSpec` names it) with the run's own ``config.yaml`` and, once it finished, its
``summary.json``. Running the same config again into the same folder resumes it
(`hardneg.runs.prepare_output` with ``resume``): finished runs are reused, the others trained, so an
interrupted full experiment resumes where it stopped; another config is refused (``--overwrite``
replaces the folder). Tables report mean ± sample std over seeds (`hardneg.report.stats`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml  # type: ignore[import-untyped]  # the environment has no PyYAML stubs
from pydantic import BaseModel, ConfigDict, Field

from hardneg.data.scenes import (
    COLOURS,
    COUNTS,
    SHAPES,
    SIZES,
    WORDS,
    SceneObject,
    Scenes,
    caption_true,
    holds_parsed,
    make_scenes,
    object_set_label,
    parse_caption,
    reflect,
    relation_gap,
    reverse_relations,
    tokenize,
    truth_matrix,
    with_relation_twins,
)
from hardneg.integrations.open_clip import ClipLoss
from hardneg.io import atomic_open, atomic_write_text
from hardneg.models.towers import FrozenTextTower, GRUTextTower, ImageTower, TextTower
from hardneg.negatives.caption_edits import EDIT_KINDS, EditVocabulary, one_edit_swaps
from hardneg.negatives.context import StepContext
from hardneg.negatives.cross_modal import LogitScale, pair_ids
from hardneg.negatives.filters import Filter
from hardneg.report.stats import format_mean_std
from hardneg.runs import CONFIG, SUMMARY, RunSpec, check_path_name, prepare_output, read_marker, read_summary, run_dir
from hardneg.runs.config import OptimConfig
from hardneg.seed import seed_everything
from hardneg.train.step import lr_lambda

SCENE_VOCAB = EditVocabulary(colours=tuple(COLOURS), shapes=SHAPES, sizes=tuple(SIZES), counts=COUNTS)
EVAL_SPLITS = ("test", "compositional")
RECALL_AT = (1, 5, 10)
MAX_LEN = 12
#: the strategies' per-step diagnostics (`Strategy.last_diagnostics`) a run averages over its steps
TRAIN_DIAGNOSTICS = ("fn_weight_share", "hardest_fn_share", "ess", "skipped_share")
READING_MARK = "<!-- reading: kept when the tables are regenerated -->"


class CrossModalConfig(BaseModel):
    """One experiment: data sizes, towers, optimisation (`hardneg.runs.config.OptimConfig`: AdamW,
    learning-rate schedule and warmup as in ``hardneg train``), seeds and the strategies to compare."""

    model_config = ConfigDict(extra="forbid")

    n_train: int = Field(1500, ge=16)
    n_test: int = Field(400, ge=10)
    n_compositional: int = Field(400, ge=10)
    captions_per_image: int = Field(5, ge=1)
    data_seed: int = Field(0, ge=0)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(128, ge=4)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    dim: int = Field(64, ge=2)
    width: int = Field(16, ge=1)
    image_stages: int = Field(4, ge=1, le=5)
    image_norm: bool = True
    image_pre_pool: bool = False
    image_coords: bool = False
    # each batch: batch_size / 2 training scenes and their relation twins (`with_relation_twins`)
    relation_twins: bool = False
    # trainable: `TextTower` (position-wise MLP); gru: `GRUTextTower`; minilm: `FrozenTextTower`
    text_tower: str = Field("trainable", pattern="^(trainable|gru|minilm)$")
    temperature: float = Field(0.07, gt=0)  # the initial temperature of the learnable logit scale
    threads: int = Field(2, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    strategies: dict[str, dict[str, Any]] = Field(default_factory=dict)


def experiment_text(cfg: CrossModalConfig) -> str:
    """The experiment's ``config.yaml``: the settings every run shares. A run's strategy and seed are
    in its own ``config.yaml`` (`run_text`), so adding a strategy or a seed reuses the finished runs;
    ``threads`` changes no result, so a resumed experiment may use another count."""
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude={"threads", "strategies", "seeds"}), sort_keys=True)


def run_specs(cfg: CrossModalConfig, names: list[str]) -> list[RunSpec]:
    """The grid: one `RunSpec` per (strategy, seed), seed-major — every strategy gets its first
    seed before any gets its second, so an interrupted experiment still compares all of them."""
    return [RunSpec(n, None, {}, None, seed, strategy=dict(cfg.strategies[n])) for seed in cfg.seeds for n in names]


def run_text(cfg: CrossModalConfig, spec: RunSpec) -> str:
    """One run's ``config.yaml``: the experiment with only that strategy and seed."""
    d = cfg.model_dump(mode="json", exclude={"threads"})
    d["strategies"], d["seeds"] = {spec.label: d["strategies"][spec.label]}, [spec.seed]
    return yaml.safe_dump(d, sort_keys=True)


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
    if cfg.relation_twins and cfg.batch_size % 2:
        raise ValueError(f"{p}: relation_twins needs an even batch_size (half scenes, half their twins), "
                         f"got {cfg.batch_size}")
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
    train = make_scenes("train", cfg.n_train, cfg.data_seed, cfg.captions_per_image)
    data = {
        "train": SplitData(with_relation_twins(train, cfg.data_seed) if cfg.relation_twins else train, table),
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

    tokens: torch.Tensor

    def __init__(self, cfg: CrossModalConfig, table: TextTable, frozen: torch.Tensor | None = None) -> None:
        super().__init__()
        self.image = ImageTower(
            cfg.dim, cfg.width, stages=cfg.image_stages, norm=cfg.image_norm, pre_pool=cfg.image_pre_pool,
            coords=cfg.image_coords,
        )
        if cfg.text_tower == "minilm":
            if frozen is None:
                raise ValueError("text_tower 'minilm' needs the frozen embedding table")
            self.text_model: torch.nn.Module = FrozenTextTower(frozen, cfg.dim)
            self.register_buffer("tokens", torch.zeros(0, dtype=torch.long), persistent=False)
        else:
            tower = GRUTextTower if cfg.text_tower == "gru" else TextTower
            self.text_model = tower(len(WORDS), MAX_LEN, cfg.dim)
            self.register_buffer("tokens", tokenize(table.strings(), MAX_LEN), persistent=False)
        self.logit_scale = LogitScale(cfg.temperature)

    def text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_model(self.tokens[ids] if self.tokens.numel() else ids)


def _strategy_spec(spec: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    s = dict(spec)
    edits = int(s.pop("edits", 0))
    return s, edits


def hardest_true_share(
    zi: torch.Tensor, zt: torch.Tensor, ids: torch.Tensor, objects: list[tuple[SceneObject, ...]], meanings: list[tuple]
) -> float:
    """Share of image anchors (rows of ``zi``, showing ``objects``) whose most similar caption (rows
    of ``zt``, parsed: ``meanings``) of another pair group (``ids``) is true of the image: a false
    negative at the top of the ranking, where top-k puts its weight. Labels (the object set) miss
    many of these; the scenes' semantics (`holds_parsed`) find them all."""
    sim = torch.nn.functional.normalize(zi, dim=1) @ torch.nn.functional.normalize(zt, dim=1).T
    sim = sim.masked_fill(ids[:, None] == ids[None, :], float("-inf"))
    hits, n = 0, 0
    for a, j in enumerate(sim.argmax(dim=1).tolist()):
        if sim[a, j] > float("-inf"):
            hits += holds_parsed(objects[a], meanings[j])
            n += 1
    return hits / n if n else float("nan")


class CaptionTruthFilter(Filter):
    """False-negative filter of a two-tower batch by the scenes' semantics: drop, for an image
    anchor, every batch caption true of the image and, for a caption anchor, every batch image the
    caption is true of. ``truth`` (B × B bool, image i × caption j, `truth_matrix`) is set for each
    step before the loss is called (`Run.step` does); candidates past the batch (edit swaps, false
    by construction) are kept. Pair groups (the id rule) and object-set labels (the ``label``
    filter) name only a small part of these captions; this filter names all of them.

    It has no registered ``kind``: it works only where each step hands it the batch's truth, so configs
    name it by import path (``kind: "reproduce.crossmodal:CaptionTruthFilter"``) and the registry-driven
    conformance suite, which builds every registered kind on generic batches, does not pick it up."""

    def __init__(self) -> None:
        super().__init__()
        self.truth: torch.Tensor | None = None

    def drop(self, S: torch.Tensor, rows: slice, ctx: StepContext) -> torch.Tensor:
        if self.truth is None:
            raise ValueError("filter CaptionTruthFilter needs the batch's truth matrix: set .truth before the loss")
        b = self.truth.shape[0]
        if ctx.m < 2 * b:
            raise ValueError(f"filter CaptionTruthFilter: {ctx.m} candidates, fewer than the batch's 2 × {b}")
        full = torch.zeros(2 * b, ctx.m, dtype=torch.bool, device=S.device)
        t = self.truth.to(S.device)
        full[:b, b : 2 * b] = t  # image anchor i: captions true of image i
        full[b:, :b] = t.T  # caption anchor j: images caption j is true of
        own = ctx.self_index[rows].to(S.device)
        return torch.where((own >= 0)[:, None], full[own.clamp(min=0)], torch.zeros_like(full[:1]))


class Run:
    """One (strategy, seed): the towers, the loss, the optimiser and the sampling generator.
    `step` trains on one batch of training images; ``loss_fn`` may be any callable with
    ClipLoss's signature (the benchmark passes a literal CLIP loss); ``track_truth=False`` leaves
    out the per-step ``hardest_true_share`` (a step time then measures training alone)."""

    def __init__(
        self,
        cfg: CrossModalConfig,
        strategy: str,
        seed: int,
        data: dict[str, SplitData],
        table: TextTable,
        frozen: torch.Tensor | None = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        track_truth: bool = True,
    ) -> None:
        spec, self.n_edits = _strategy_spec(cfg.strategies[strategy]) if strategy in cfg.strategies else ({}, 0)
        self.gen = seed_everything(seed)
        self.towers = Towers(cfg, table, frozen)
        self.loss_fn = loss_fn if loss_fn is not None else ClipLoss(spec)
        params = [*self.towers.parameters()]
        if isinstance(self.loss_fn, torch.nn.Module):
            params += list(self.loss_fn.parameters())
        self.params, self.optim = params, cfg.optim
        o = cfg.optim
        self.opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        self.train = data["train"]
        self.twins = cfg.relation_twins
        total = cfg.epochs * len(self.batch_order(cfg.batch_size, draw=False))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(o, total))
        strings = table.strings()
        self.meanings = {c: parse_caption(strings[c]) for caps in self.train.caption_ids for c in caps}
        self.track_truth = track_truth
        loss_strategy = getattr(self.loss_fn, "strategy", None)
        self.truth_filters = [f for f in getattr(loss_strategy, "filters", []) if isinstance(f, CaptionTruthFilter)]
        self.step_count = 0
        self.diag_sum: dict[str, float] = {}
        self.diag_n: dict[str, int] = {}

    def batch_order(self, batch_size: int, draw: bool = True) -> list[torch.Tensor]:
        """One epoch of batches of training-image indices (the last partial batch dropped). With
        relation twins an epoch passes over the scenes, each batch ``batch_size / 2`` of them followed
        by their twins (row ``i + n``). ``draw=False``: the epoch's shape, without drawing from the
        run's generator."""
        n = len(self.train.scenes) // 2 if self.twins else len(self.train.scenes)
        half = batch_size // 2 if self.twins else batch_size
        perm = torch.randperm(n, generator=self.gen) if draw else torch.arange(n)
        chunks = [perm[b0 : b0 + half] for b0 in range(0, n - half + 1, half)]
        return [torch.cat([c, c + n]) for c in chunks] if self.twins else chunks

    def step(self, idx: torch.Tensor) -> float:
        """One optimiser step on training images ``idx``, each with one caption drawn at random."""
        tr, gen, towers = self.train, self.gen, self.towers
        il = idx.tolist()
        drawn = il[: len(il) // 2] if self.twins else il
        pick = [int(torch.randint(len(tr.caption_ids[i]), (1,), generator=gen)) for i in drawn]
        if self.twins:  # a twin takes its scene's caption, relations reversed: the same text where it names none
            pick = pick + pick
        cap_ids = torch.tensor([tr.caption_ids[i][p] for i, p in zip(il, pick, strict=True)])
        ids = pair_ids(idx, [tr.scenes.captions[i][p] for i, p in zip(il, pick, strict=True)])
        zi = towers.image(tr.scenes.float_images(idx))
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
        if self.truth_filters:
            objs = tr.scenes.objects
            truth = torch.tensor([[holds_parsed(objs[i], self.meanings[int(c)]) for c in cap_ids] for i in il])
            for f in self.truth_filters:
                f.truth = truth
        loss = self.loss_fn(
            zi, zt, towers.logit_scale(), labels=labels, ids=ids, negatives=negatives, step=self.step_count
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.optim.grad_clip)
        self.opt.step()
        self.sched.step()
        diags = {k: v for k, v in getattr(self.loss_fn, "last_diagnostics", {}).items() if k in TRAIN_DIAGNOSTICS}
        if self.track_truth:
            objs = self.train.scenes.objects
            diags["hardest_true_share"] = hardest_true_share(
                zi.detach(), zt.detach(), ids, [objs[i] for i in il], [self.meanings[int(c)] for c in cap_ids]
            )
        for k, v in diags.items():
            if v == v:  # not NaN
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
        "finished": True,
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


def _finished(d: Path, text: str) -> dict[str, Any] | None:
    """The record of the finished run in folder ``d`` when its config is ``text``, else None; a
    damaged ``summary.json`` is one ``ValueError`` naming it (`hardneg.runs.read_summary`)."""
    rec = read_summary(d / SUMMARY)
    cfg_p = d / CONFIG
    if read_marker(d) != "run" or not rec.get("finished") or not cfg_p.is_file():
        return None
    if cfg_p.read_text(encoding="utf-8") != text:
        return None
    return rec


def _train_one(
    cfg: CrossModalConfig, spec: RunSpec, d: Path, built: dict[str, Any], log: Callable[[str], None] | None
) -> dict[str, Any]:
    """Train one grid point into its run folder (locked while it writes) unless it finished there."""
    text = run_text(cfg, spec)
    _, lock = prepare_output(d, "run", text, resume=True)
    try:
        rec = _finished(d, text)
        if rec is not None:
            return rec
        if not built:
            built["data"], built["table"] = build_data(cfg)
            if cfg.text_tower == "minilm":
                built["frozen"] = minilm_table(built["table"].strings(), d.parent.parent / "cache")
        rec = train_run(cfg, spec.label, spec.seed, built["data"], built["table"], built.get("frozen"), log)
        atomic_write_text(d / SUMMARY, json.dumps(rec, indent=1))
    finally:
        lock.release()
    if log:
        m = rec["metrics"]["test"]
        log(f"{spec.label} seed {spec.seed}: test i2t R@1 {m['i2t_R@1']:.3f} t2i R@1 {m['t2i_R@1']:.3f} "
            f"({rec['train_seconds']:.0f} s)")
    return rec


def run_grid(
    cfg: CrossModalConfig,
    out: Path,
    strategies: list[str] | None = None,
    log: Callable[[str], None] | None = print,
    train: bool = True,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Every (strategy, seed) of ``cfg`` not already finished in the compare folder ``out``; returns
    all records in grid order. ``out`` is prepared as a hardneg compare folder (a new one, or the same
    config resumed; ``overwrite`` replaces one of another config). ``train=False`` writes nothing and
    only collects the finished runs (a partial table while an experiment runs). A run another process
    is training is refused (`hardneg.io.WriterLock`), naming its folder and that process."""
    names = strategies or list(cfg.strategies)
    unknown = [s for s in names if s not in cfg.strategies]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; the config defines {list(cfg.strategies)}")
    specs = run_specs(cfg, names)
    if not train:
        found = [_finished(run_dir(out, s), run_text(cfg, s)) for s in specs]
        return [r for r in found if r is not None]
    torch.set_num_threads(cfg.threads)
    # the compare folder's own files are written here only; each run folder has its own lock, so
    # processes given disjoint --strategies share one experiment folder
    _, lock = prepare_output(out, "compare", experiment_text(cfg), resume=not overwrite, overwrite=overwrite)
    lock.release()
    built: dict[str, Any] = {}
    return [_train_one(cfg, s, run_dir(out, s), built, log) for s in specs]


def _pct(vals: list[float]) -> str:
    """Percent, mean ± sample std over seeds (`hardneg.report.stats.format_mean_std`), NaNs left out."""
    return format_mean_std([x for x in vals if x == x], scale=100.0, fmt=".1f")


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
            cells = [_pct([r["metrics"][split][c] for r in rs]) for c in cols]
            lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(f"### {split} split: swap test (% of captions scored above every false one-edit swap)\n")
        lines.append("| strategy | " + " | ".join(EDIT_KINDS) + " |")
        lines.append("|" + " --- |" * (len(EDIT_KINDS) + 1))
        for name, rs in by.items():
            cells = [_pct([r["metrics"][split][f"swap_{k}"] for r in rs]) for k in EDIT_KINDS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if chance is not None:
            lines.append("| *chance* | " + " | ".join(f"{100 * chance[split][k]:.1f}" for k in EDIT_KINDS) + " |")
        n_cases = {k: int(by[next(iter(by))][0]["metrics"][split][f"swap_{k}_n"]) for k in EDIT_KINDS}
        lines.append("")
        lines.append("Captions with at least one false swap of each kind: "
                     + ", ".join(f"{k} {v}" for k, v in n_cases.items()) + ".\n")
    lines += diagnostics_table(by)
    return "\n".join(lines) + "\n"


def diagnostics_table(by: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The training diagnostics' table (mean over steps, then mean ± sample std over seeds)."""
    lines = [
        "### Training diagnostics (mean over steps)\n",
        "`fn_weight_share`: share of the negative weight π on candidates whose scene has the anchor's object "
        "set (same colours and shapes: the label); `hardest_fn_share`: share of anchors whose most similar "
        "kept candidate has it; `hardest_true_share`: share of image anchors whose most similar caption of "
        "another pair group is *true of the image* (a false negative by the scenes' semantics, whatever "
        "the label); `ess`: effective number of negatives 1/Σπ²; `skipped`: anchors left without a "
        "candidate; final t: the learned temperature; train s: seconds of training per run (`train_seconds`, "
        "evaluation excluded; wall-clock, so as comparable as the runs' machine was quiet).\n",
        "| strategy | fn_weight_share (%) | hardest_fn_share (%) | hardest_true_share (%) | ess | skipped (%) "
        "| final t | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, rs in by.items():
        def d(key: str) -> list[float]:
            return [r["diagnostics"].get(key, float("nan")) for r in rs]  # noqa: B023 - used at once

        ess = format_mean_std([x for x in d("ess") if x == x], fmt=".1f")
        t = format_mean_std([r["final_temperature"] for r in rs], fmt=".3f")
        secs = format_mean_std([r["train_seconds"] for r in rs], fmt=".0f")
        lines.append(f"| {name} | {_pct(d('fn_weight_share'))} | {_pct(d('hardest_fn_share'))} | "
                     f"{_pct(d('hardest_true_share'))} | {ess} | {_pct(d('skipped_share'))} | {t} | {secs} |")
    return lines


def batch_false_negatives(cfg: CrossModalConfig, batches: int = 8) -> dict[str, float]:
    """What a training batch holds, over ``batches`` batches of ``batch_size`` consecutive training
    images (with relation twins: ``batch_size / 2`` scenes and their twins), each image with one of
    its captions drawn at random as training draws it (a seeded draw; a twin takes its scene's):

    - ``true_share``: the share of (image, caption of another pair group) pairs where the caption is
      true of the image;
    - ``same_label_share``: the share of those true pairs whose scenes have one object set (the ones
      the ``label`` filter removes);
    - ``relation_confuser_share``: the share of images with a relation caption for which the batch
      holds a caption of another pair group that is false of the image but true with its relations
      reversed (`reverse_relations`): a negative that only reading the relation tells apart, the one
      the relation swap test asks about;
    - ``relation_caption_share``: the share of the drawn captions that are relations."""
    per = cfg.batch_size // 2 if cfg.relation_twins else cfg.batch_size
    n = min(batches * per, cfg.n_train)
    base = make_scenes("train", n, cfg.data_seed, cfg.captions_per_image)
    rng = np.random.default_rng(cfg.data_seed)
    n_other = n_true = n_same = n_rel = n_confused = n_images = 0
    for b0 in range(0, n - per + 1, per):
        rows = list(range(b0, b0 + per))
        pick = [int(rng.integers(len(base.captions[i]))) for i in rows]
        objs = [base.objects[i] for i in rows]
        caps = [base.captions[i][p] for i, p in zip(rows, pick, strict=True)]
        if cfg.relation_twins:
            objs, caps = objs + [reflect(o) for o in objs], caps + [reverse_relations(c) for c in caps]
        labels = torch.tensor([object_set_label(o) for o in objs])
        ids = pair_ids(list(range(len(caps))), caps)
        truth = truth_matrix(objs, caps)
        reversed_truth = truth_matrix(objs, [reverse_relations(c) for c in caps])
        other = ids[:, None] != ids[None, :]
        true_other = truth & other
        has_relation = torch.tensor([parse_caption(c)[0] == "relation" for c in caps])
        n_other += int(other.sum())
        n_true += int(true_other.sum())
        n_same += int((true_other & (labels[:, None] == labels[None, :])).sum())
        n_rel += int(has_relation.sum())
        n_images += len(caps)
        n_confused += int((other & ~truth & reversed_truth).any(dim=1)[has_relation].sum())
    return {
        "true_share": n_true / max(1, n_other),
        "same_label_share": n_same / n_true if n_true else float("nan"),
        "relation_confuser_share": n_confused / n_rel if n_rel else float("nan"),
        "relation_caption_share": n_rel / max(1, n_images),
    }


def caption_composition(cfg: CrossModalConfig) -> dict[str, float]:
    """What the captions ask, from the generator alone (no training): ``relation_share``, the share of
    the training captions that are relations; ``multi_object_share``, the share of training scenes
    with two or more objects (only they have relation captions); over the test split's relation
    captions, ``gap_median`` (pixels) and ``gap_under_12`` (share) of `relation_gap`, how far apart
    the related objects are drawn."""
    train = make_scenes("train", cfg.n_train, cfg.data_seed, cfg.captions_per_image)
    caps = [c for cs in train.captions for c in cs]
    n_rel = sum(parse_caption(c)[0] == "relation" for c in caps)
    test = make_scenes("test", cfg.n_test, cfg.data_seed, cfg.captions_per_image)
    gaps = [relation_gap(objs, m) for objs, cs in zip(test.objects, test.captions, strict=True)
            for m in map(parse_caption, cs) if m[0] == "relation"]
    return {
        "relation_share": n_rel / max(1, len(caps)),
        "multi_object_share": sum(len(o) >= 2 for o in train.objects) / max(1, len(train.objects)),
        "gap_median": float(np.median(gaps)) if gaps else float("nan"),
        "gap_under_12": float(np.mean([g < 12 for g in gaps])) if gaps else float("nan"),
    }


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
        o, fn, cc = cfg.optim, batch_false_negatives(cfg), caption_composition(cfg)
        lines += [
            f"## {name}: {cfg.text_tower} text tower",
            "",
            f"Data: {cfg.n_train} training scenes, {cfg.n_test} test and {cfg.n_compositional} compositional "
            f"scenes, {cfg.captions_per_image} captions per image (`hardneg.data.scenes`). Towers: "
            f"`ImageTower(dim={cfg.dim}, width={cfg.width}, stages={cfg.image_stages}, norm={cfg.image_norm}, "
            f"pre_pool={cfg.image_pre_pool}{', coords=True' if cfg.image_coords else ''})` and the "
            f"{cfg.text_tower} text tower; {cfg.epochs} epochs, batch "
            f"{cfg.batch_size}, AdamW lr {o.lr} (weight decay {o.weight_decay}, {o.schedule} schedule, "
            f"{o.warmup_steps} warmup steps), learnable temperature from {cfg.temperature}. Seeds "
            f"{cfg.seeds}; mean ± sample std over seeds."
            + (f" Each batch holds {cfg.batch_size // 2} training scenes and their relation twins "
               "(`with_relation_twins`: the objects reflected through the image centre, the captions' "
               "relations reversed)." if cfg.relation_twins else ""),
            "",
            "What a batch holds (`batch_false_negatives`: 8 batches of training images, one caption each, "
            f"drawn as training draws it): {100 * fn['true_share']:.1f} % of the (image, caption of another "
            f"pair group) pairs are true of the image; {100 * fn['same_label_share']:.1f} % of those true pairs share "
            "the image's object set, which is what the `label` filter removes. Of the images with a relation "
            f"caption, {100 * fn['relation_confuser_share']:.1f} % have in the batch a caption that is false "
            "of them only through its relation (true with the relation reversed). "
            f"{100 * fn['relation_caption_share']:.1f} % of the drawn captions are relations.",
            "",
            "What the captions ask (`caption_composition`, from the generator): "
            f"{100 * cc['relation_share']:.1f} % of the training captions are relations, all of them from the "
            f"{100 * cc['multi_object_share']:.1f} % of training scenes with two or more objects; the objects a "
            f"test relation caption relates are drawn a median {cc['gap_median']:.0f} pixels apart on the "
            f"relation's axis (`relation_gap`), {100 * cc['gap_under_12']:.0f} % of them under 12 pixels.",
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
