"""Fine-tune all-MiniLM-L6-v2 on WordNet (example → definition) with different negatives; evaluate on
the held-out dev and test splits.

Runs:
  untuned              the model as shipped
  mnrl                 (1) in-batch negatives only: sentence-transformers' MultipleNegativesRankingLoss
  st_mined             (2) + negatives mined by sentence-transformers' ``mine_hard_negatives`` (top-k, its
                       defaults), MNRL
  hardneg_mined        (3) + negatives mined by ``hardneg mine``: window [0, 30), WordNet false negatives
                       (hypernym / hyponym definitions) and duplicate texts filtered, top-k, MNRL
  hardneg_tilted       hardneg mining with β-tilted sampling (π ∝ e^{β s/t}) over the filtered window [0, 30),
                       trained with `HardNegativeRankingLoss` (β-tilted in-batch + mined negatives)
  hardneg_margin       NV-Retriever's TopK-PercPos: negatives scoring ≥ 5 % below the positive
                       (relative margin 0.05), window [0, 300), false negatives filtered, top-k, MNRL
  hardneg_margin_wide  the same over the window [0, 3000), so that queries whose positive ranks low still
                       get negatives
  hardneg_mid          uniform sampling from the mid-rank window [10, 100), false negatives filtered, MNRL
  hardneg_unambiguous  as hardneg_mined, but the WordNet *ambiguous* negatives are filtered too: definitions
                       of another noun that occurs in the example sentence (`hardneg.data.wordnet`)

The tables mark two choices, both made on the **dev** split (highest dev MRR@10) and reported on the test
split, so no choice ever sees the test queries:
  (3) "+ negatives mined by hardneg mine": the best of the hardneg mining settings trained with plain MNRL
      (hardneg_mined, hardneg_margin, hardneg_margin_wide, hardneg_mid, hardneg_unambiguous) — mining alone;
  (4) "hardneg's best strategy": the best of all hardneg runs (mining and loss).

Every trained run makes the same number of optimizer steps (``--max-steps``; default one epoch of the
training pairs at ``--batch-size``): mined sets that dropped queries without enough negatives cycle
through their rows a little more often instead of training for fewer steps.

Data: pairs of the train split (``--train-pairs`` caps them, seeded shuffle); mining corpus = the
definitions of train-split synsets (no dev or test definition is ever a training negative); evaluation:
dev (test) queries against the definitions of all dev (test) synsets (``--eval-corpus`` caps the
distractors). Metrics: Recall@1/10, MRR@10, nDCG@10 (`hardneg.eval.retrieval`).

Both mining methods use the same (bf16, cached) embeddings; sentence-transformers reads them from
its ``cache_folder`` (`hardneg.mining.st_compat`). Each run also stops after ``--max-minutes``.

    python -m reproduce retrieval-compare --out runs/wordnet_finetune                    # all runs, all train pairs
    python -m reproduce retrieval-compare --out runs/wn_small --train-pairs 2000 --runs untuned,mnrl
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from hardneg._optional import require

RUNS = ("untuned", "mnrl", "st_mined", "hardneg_mined", "hardneg_tilted", "hardneg_margin", "hardneg_margin_wide",
        "hardneg_mid", "hardneg_unambiguous")
DEFAULT_RUNS = RUNS[:-1]  # hardneg_unambiguous differs from hardneg_mined in ~2 % of the window (on request)
MINED_RUNS = RUNS[2:]
RUN_LABELS = {"mnrl": "(1) mnrl", "st_mined": "(2) st_mined"}
HARDNEG_LOSS_RUNS = ("hardneg_tilted",)  # trained with HardNegativeRankingLoss; the other hardneg runs use MNRL


def dev_choices(dev_mrr: dict[str, float]) -> dict[str, str]:
    """{run: "(3)" / "(4)" / "(3) and (4)"} for the dev-best MNRL-trained hardneg run and the dev-best hardneg run."""
    hn = [r for r in dev_mrr if r.startswith("hardneg_")]
    mined = [r for r in hn if r not in HARDNEG_LOSS_RUNS]
    out: dict[str, str] = {}
    if mined:
        out[max(mined, key=dev_mrr.get)] = "(3)"
    if hn:
        b = max(hn, key=dev_mrr.get)
        out[b] = "(3) and (4)" if out.get(b) else "(4)"
    return out


def _run_name(run: str, choice: dict[str, str]) -> str:
    return RUN_LABELS.get(run, run) + (f" — {choice[run]}, chosen on dev" if run in choice else "")


def _eval_set(synsets, split: str, eval_queries: int | None, eval_corpus: int | None, rng: random.Random):
    from hardneg.data.wordnet import build_corpus, build_pairs, split_of

    syn = [s for s in synsets if split_of(s.key) == split]
    rows = build_pairs(syn)
    rng.shuffle(rows)
    if eval_queries:
        rows = rows[:eval_queries]
    corpus, _ = build_corpus(syn)
    relevant_texts = {r["positive"] for r in rows}
    if eval_corpus and eval_corpus < len(corpus):
        others = [t for t in corpus if t not in relevant_texts]
        rng.shuffle(others)
        corpus = sorted(relevant_texts) + others[: max(0, eval_corpus - len(relevant_texts))]
    row = {t: i for i, t in enumerate(corpus)}
    return {"queries": [r["query"] for r in rows], "corpus": corpus, "relevant": [[row[r["positive"]]] for r in rows]}


def build_data(train_pairs: int | None, eval_queries: int | None, eval_corpus: int | None, seed: int):
    from hardneg.data.wordnet import build_corpus, build_pairs, load_synsets, split_of

    syn = load_synsets("noun")
    train = build_pairs(syn, split="train", ambiguous=True)
    rng = random.Random(seed)
    rng.shuffle(train)
    if train_pairs:
        train = train[:train_pairs]
    mine_corpus, amb_labels = build_corpus([s for s in syn if split_of(s.key) == "train"], ambiguous=True)

    def plain(labels):  # hypernym / hyponym false-negative labels only
        return [x for x in labels if not x.startswith("w:")]

    for r in train:
        r["labels_ambiguous"], r["labels"] = r["labels"], plain(r["labels"])
    return {"train": train, "mine_corpus": mine_corpus, "mine_labels": [plain(x) for x in amb_labels],
            "mine_labels_ambiguous": amb_labels,
            "test": _eval_set(syn, "test", eval_queries, eval_corpus, rng),
            "dev": _eval_set(syn, "dev", eval_queries, eval_corpus, rng)}


def mine_sets(data, model, num_negatives: int, cache_dir: str, seed: int, runs=RUNS):
    """(st_rows, hardneg_rows, hardneg_tilted_rows) as lists of n-tuple dicts, plus their summaries."""
    datasets = require("datasets", "text")
    require("sentence_transformers", "text")
    from sentence_transformers.util import mine_hard_negatives

    from hardneg.mining.encode import encode_texts
    from hardneg.mining.mine import MineConfig
    from hardneg.mining.pipeline import mine_texts
    from hardneg.mining.st_compat import inject_st_cache

    tr = data["train"]
    queries = [r["query"] for r in tr]
    positives = [r["positive"] for r in tr]
    labels = [r["labels"] for r in tr]
    out = {}
    st_cache = tempfile.mkdtemp(prefix="st_cache")

    def emb(texts):
        return encode_texts(model, texts, precision="bf16", cache_dir=cache_dir, show_progress=True)

    if "st_mined" in runs:
        inject_st_cache(st_cache, model, queries, positives, data["mine_corpus"], emb, emb)
        ds = datasets.Dataset.from_dict({"anchor": queries, "positive": positives})
        st = mine_hard_negatives(ds, model, corpus=data["mine_corpus"], num_negatives=num_negatives,
                                 sampling_strategy="top", output_format="n-tuple", use_faiss=True, verbose=True,
                                 cache_folder=st_cache)
        out["st_mined"] = (st.to_list(), {"rows": len(st)})
    common = dict(model=model, q_labels=labels, corpus_labels=data["mine_labels"], cache_dir=cache_dir,
                  show_progress=True)
    # the measured configs count their windows in retrieval ranks (a fixed mid-rank window [10, 100))
    fn = dict(num_negatives=num_negatives, filter_labels=True, seed=seed, window="retrieval", format="n-tuple",
              precision="bf16")
    configs = {
        "hardneg_mined": MineConfig(range_max=30, **fn),
        "hardneg_tilted": MineConfig(range_max=30, sampling="tilted", beta=1.0, t=0.05, **fn),
        "hardneg_margin": MineConfig(range_max=300, relative_margin=0.05, **fn),
        "hardneg_margin_wide": MineConfig(range_max=3000, relative_margin=0.05, **fn),
        "hardneg_mid": MineConfig(range_min=10, range_max=100, sampling="uniform", **fn),
    }
    configs["hardneg_unambiguous"] = configs["hardneg_mined"]  # same knobs, ambiguity labels filtered too
    amb_labels = dict(q_labels=[r["labels_ambiguous"] for r in tr], corpus_labels=data["mine_labels_ambiguous"])
    for name, cfg in configs.items():
        if name in runs:
            kw = {**common, **amb_labels} if name == "hardneg_unambiguous" else common
            r = mine_texts(queries, positives, data["mine_corpus"], config=cfg, **kw)
            out[name] = (r.rows, r.summary)
    import shutil

    shutil.rmtree(st_cache, ignore_errors=True)
    return out


def train_one(run: str, rows: list[dict], args, out_dir: Path):
    import torch

    datasets = require("datasets", "text")
    require("sentence_transformers", "text", min_version="5.7")
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from hardneg.integrations.sentence_transformers import HardNegativeRankingLoss
    from hardneg.mining.encode import load_sentence_model

    torch.manual_seed(args.seed)
    model = load_sentence_model(None)
    cols: dict[str, list] = {}
    for r in rows:
        for k, v in r.items():
            if k != "scores":
                cols.setdefault(k, []).append(v)
    ds = datasets.Dataset.from_dict(cols)
    if run == "hardneg_tilted":
        loss = HardNegativeRankingLoss(model, logit_scale=20.0, beta=args.beta)
    else:
        loss = MultipleNegativesRankingLoss(model, scale=20.0)
    budget = args.max_minutes * 60

    class Budget(TrainerCallback):
        def __init__(self):
            self.t0 = time.time()
            self.stopped_at = None

        def on_step_end(self, a, state, control, **kw):
            if time.time() - self.t0 > budget:
                control.should_training_stop = True
                self.stopped_at = state.global_step
            return control

    cb = Budget()
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(out_dir / f"trainer-{run}"), num_train_epochs=1000,  # max_steps decides
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=0.1,
        batch_sampler="no_duplicates", report_to=[], save_strategy="no", logging_steps=10, use_cpu=True,
        seed=args.seed, bf16=args.bf16, disable_tqdm=False, dataloader_num_workers=0,
        max_steps=args.max_steps)
    t0 = time.time()
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=ds, loss=loss, callbacks=[cb])
    trainer.train()
    return model, {"train_s": time.time() - t0, "train_rows": len(ds), "steps": trainer.state.global_step,
                   "stopped_by_budget": cb.stopped_at is not None, "columns": list(cols)}


def run(args: Any) -> dict:
    """Run the comparison. ``args`` holds the options of ``python -m reproduce retrieval-compare`` as attributes
    (``out``, ``summarize``, ``runs``, ``train_pairs``, ``eval_queries``, ``eval_corpus``, ``batch_size``,
    ``lr``, ``num_negatives``, ``beta``, ``max_minutes``, ``max_steps``, ``bf16``, ``cache_dir``, ``seed``,
    ``threads``; strings and numbers: they are recorded in ``results.json``)."""
    from hardneg.io import atomic_write_text, check_writable

    check_writable(args.out, "--out", folder=True)  # before hours of training, not after

    if args.summarize:
        table = seeds_table(args.summarize)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out) / "seeds.md", table + "\n")
        print(table)
        return {"table": table}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from hardneg.eval.retrieval import evaluate_model
    from hardneg.mining.encode import load_sentence_model
    from hardneg.seed import seed_everything

    seed_everything(args.seed)
    runs = [r.strip() for r in args.runs.split(",")]
    bad = [r for r in runs if r not in RUNS]
    if bad:
        raise ValueError(f"--runs: unknown {bad}; choose from {RUNS}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = build_data(args.train_pairs, args.eval_queries, args.eval_corpus, args.seed)
    if not args.max_steps:
        args.max_steps = -(-len(data["train"]) // args.batch_size)
    print(f"train pairs {len(data['train'])}, mining corpus {len(data['mine_corpus'])}, "
          f"{args.max_steps} steps per run, test queries {len(data['test']['queries'])} / corpus "
          f"{len(data['test']['corpus'])}, dev queries {len(data['dev']['queries'])} / corpus "
          f"{len(data['dev']['corpus'])}", flush=True)
    results: dict = {"config": vars(args), "data": {
        "train_pairs": len(data["train"]), "mine_corpus": len(data["mine_corpus"]),
        **{f"{sp}_{k}": len(data[sp][k]) for sp in ("test", "dev") for k in ("queries", "corpus")}}, "runs": {}}
    res_path = out_dir / "results.json"

    def evaluate(model):
        t0 = time.time()
        m = {sp: evaluate_model(model, data[sp]["queries"], data[sp]["corpus"], data[sp]["relevant"],
                                precision="bf16", show_progress=False) for sp in ("test", "dev")}
        out = dict(m["test"])
        out["dev"] = m["dev"]
        out["eval_s"] = time.time() - t0
        return out

    def save():
        atomic_write_text(res_path, json.dumps(results, indent=2) + "\n")

    if "untuned" in runs:
        results["runs"]["untuned"] = evaluate(load_sentence_model(None))
        print("untuned", results["runs"]["untuned"], flush=True)
        save()
    mined = {}
    if any(r in runs for r in MINED_RUNS):
        t0 = time.time()
        mined = mine_sets(data, load_sentence_model(None), args.num_negatives, args.cache_dir, args.seed, runs)
        results["mining_s"] = time.time() - t0
        results["mining"] = {k: (v[1] if k == "st_mined" else
                                 {kk: v[1][kk] for kk in ("rows_written", "queries_with_too_few",
                                                          "false_negative_rate", "removed_by_filter")})
                             for k, v in mined.items()}
    for run in runs:
        if run == "untuned":
            continue
        rows = ([{"anchor": r["query"], "positive": r["positive"]} for r in data["train"]] if run == "mnrl"
                else mined[run][0])
        model, info = train_one(run, rows, args, out_dir)
        m = evaluate(model)
        m.update(info)
        results["runs"][run] = m
        print(run, m, flush=True)
        save()
    results["dev_choices"] = dev_choices({r: m["dev"]["mrr@10"] for r, m in results["runs"].items()})
    save()
    table = results_table(results)
    atomic_write_text(out_dir / "results.md", table + "\n")
    print(table)
    return results


def _read_results(p: Path) -> dict:
    """A ``results.json`` of one seed; a missing, damaged or foreign file is one error naming it."""
    from hardneg.io import read_json

    res = read_json(p, "--summarize results.json", "pass the results.json of a retrieval-compare run")
    if not isinstance(res, dict) or not isinstance(res.get("runs"), dict) or "seed" not in res.get("config", {}):
        raise ValueError(f"--summarize {p}: not a results.json of retrieval-compare (no 'runs' and 'config.seed')")
    return res


def seeds_table(paths: list[str]) -> str:
    """Markdown table over several ``results.json`` (one per seed): test MRR@10 per seed, mean, and the
    dev MRR@10 mean; runs present in every file only. (3) and (4) are chosen on the mean dev MRR@10."""
    res = [_read_results(Path(p)) for p in paths]
    runs = [r for r in res[0]["runs"] if all(r in x["runs"] for x in res)]
    seeds = [x["config"]["seed"] for x in res]

    def mean(v):
        return sum(v) / len(v)

    dev = {r: mean([x["runs"][r]["dev"]["mrr@10"] for x in res]) for r in runs}
    choice = dev_choices(dev)
    head = " | ".join(f"test MRR@10 seed {s}" for s in seeds)
    lines = [f"| run | {head} | test MRR@10 mean | test Recall@10 mean | dev MRR@10 mean |",
             "|---|" + "---|" * (len(seeds) + 3)]
    for r in runs:
        t = [x["runs"][r]["mrr@10"] for x in res]
        r10 = mean([x["runs"][r]["recall@10"] for x in res])
        name = _run_name(r, choice)
        per_seed = " | ".join(f"{v:.4f}" for v in t)
        lines.append(f"| {name} | {per_seed} | {mean(t):.4f} | {r10:.4f} | {dev[r]:.4f} |")
    return "\n".join(lines)


def results_table(results: dict) -> str:
    """Markdown table of a results.json: test metrics, dev MRR@10, rows, steps; (3)/(4) mark the dev choices."""
    choice = dev_choices({r: m["dev"]["mrr@10"] for r, m in results["runs"].items()})
    lines = ["| run | test Recall@1 | test Recall@10 | test MRR@10 | test nDCG@10 | dev MRR@10 | train rows | steps "
             "| train s |", "|---|---|---|---|---|---|---|---|---|"]
    for run, m in results["runs"].items():
        name = _run_name(run, choice)
        lines.append(f"| {name} | {m['recall@1']:.4f} | {m['recall@10']:.4f} | {m['mrr@10']:.4f} | "
                     f"{m['ndcg@10']:.4f} | {m['dev']['mrr@10']:.4f} | {m.get('train_rows', '-')} | "
                     f"{m.get('steps', '-')} | {m.get('train_s', 0):.0f} |")
    return "\n".join(lines)

