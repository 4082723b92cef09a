"""The cross-modal experiment's metrics against hand computations, its docs, and (slow) a tiny
end-to-end run of `python -m reproduce crossmodal-compare` with resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from hardneg.data.scenes import caption_true, make_scenes
from hardneg.models.towers import ImageTower, TextTower
from reproduce.crossmodal import (
    CrossModalConfig,
    SplitData,
    TextTable,
    Towers,
    evaluate,
    hits_at_k,
    results_tables,
    swap_chance,
)

ROOT = Path(__file__).resolve().parents[1]


def test_hits_at_k_by_hand():
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    # query 0 ranks 0, 2, 1; query 1 ranks 1, 0, 2
    out = hits_at_k(sim, [{2}, {2}], ks=(1, 2, 3))
    assert out == {1: 0.0, 2: 0.5, 3: 1.0}


def test_swap_test_and_recall_follow_the_towers_scores():
    cfg = CrossModalConfig(n_train=16, n_test=12, n_compositional=12, dim=8, strategies={"u": {"name": "ucl"}})
    table = TextTable()
    split = SplitData(make_scenes("test", 12, seed=1), table)
    towers = Towers(cfg, table).eval()
    m = evaluate(towers, split, table)
    # recompute the colour swap test and image->text R@1 literally from the towers' embeddings
    with torch.no_grad():
        zi = torch.nn.functional.normalize(towers.image(split.scenes.float_images()), dim=1)
        strings = table.strings()
        zt = torch.nn.functional.normalize(towers.text(torch.arange(len(strings))), dim=1)
    wins = []
    for i, caps in enumerate(split.scenes.captions):
        for p, c in enumerate(caps):
            false = [v for v in split.swaps[i][p]["colour"]]
            assert all(not caption_true(split.scenes.objects[i], strings[v]) for v in false)
            if false:
                s_true = float(zi[i] @ zt[table.index[c]])
                wins.append(all(s_true > float(zi[i] @ zt[v]) for v in false))
    assert m["swap_colour"] == pytest.approx(sum(wins) / len(wins))
    gallery = sorted({table.index[c] for caps in split.scenes.captions for c in caps})
    hits = []
    for i in range(12):
        best = max(gallery, key=lambda g: float(zi[i] @ zt[g]))
        hits.append(caption_true(split.scenes.objects[i], strings[best]))
    assert m["i2t_R@1"] == pytest.approx(sum(hits) / 12)


def test_towers_shapes():
    assert ImageTower(dim=8, width=4)(torch.zeros(3, 3, 64, 64)).shape == (3, 8)
    tt = TextTower(vocab_size=10, max_len=5, dim=6)
    assert tt(torch.tensor([[1, 2, 0, 0, 0]])).shape == (1, 6)
    with pytest.raises(ValueError, match="divisible by 16"):
        ImageTower(image_size=40)


def test_crossmodal_doc_snippets_run():
    text = (ROOT / "docs" / "crossmodal.md").read_text(encoding="utf-8")
    ns: dict = {}
    for i, code in enumerate(re.findall(r"```python\n(.*?)```", text, flags=re.S)):
        exec(compile(code, f"crossmodal.md[block {i}]", "exec"), ns)
    assert ns["image_z"].grad is not None and 0.0 <= ns["d"]["fn_weight_share"] <= 1.0


@pytest.mark.slow
def test_crossmodal_compare_runs_and_resumes(tmp_path):
    from reproduce.cli import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "n_train: 64\nn_test: 16\nn_compositional: 16\nepochs: 1\nbatch_size: 32\nseeds: [0, 1]\n"
        "strategies:\n  uniform: {name: ucl}\n  edits: {name: ucl, edits: 2}\n",
        encoding="utf-8",
    )
    out, doc = tmp_path / "out", tmp_path / "results.md"
    with pytest.raises(SystemExit) as e:
        main(["crossmodal-compare", "--config", str(cfg), "--out", str(out), "--docs", str(doc)])
    assert e.value.code == 0
    runs_dir = out / "tiny" / "runs"
    runs = sorted(p.name for p in runs_dir.iterdir())
    assert runs == ["edits_seed0.json", "edits_seed1.json", "uniform_seed0.json", "uniform_seed1.json"]
    rec = json.loads((runs_dir / "uniform_seed0.json").read_text())
    assert rec["steps"] == 2 and 0.0 <= rec["metrics"]["test"]["i2t_R@1"] <= 1.0
    doc.write_text(doc.read_text() + "My reading.\n")
    before = {p.name: p.stat().st_mtime_ns for p in runs_dir.iterdir()}
    with pytest.raises(SystemExit):
        main(["crossmodal-compare", "--config", str(cfg), "--out", str(out), "--docs", str(doc)])
    assert {p.name: p.stat().st_mtime_ns for p in runs_dir.iterdir()} == before  # resumed, not retrained
    text = doc.read_text()
    assert text.endswith("My reading.\n") and "| uniform | 2 |" in text
    (runs_dir / "edits_seed1.json").unlink()
    with pytest.raises(SystemExit):  # tabulate what is finished, train nothing
        main(["crossmodal-compare", "--config", str(cfg), "--out", str(out), "--docs", str(doc), "--summarize"])
    assert not (runs_dir / "edits_seed1.json").exists() and "| edits | 1 |" in doc.read_text()
    assert results_tables([rec]).count("| uniform |") == 5


def test_swap_chance_is_the_mean_of_one_over_one_plus_swaps():
    cfg = CrossModalConfig(n_train=16, n_test=10, n_compositional=10, strategies={"u": {"name": "ucl"}})
    table = TextTable()
    split = SplitData(make_scenes("test", 10, seed=cfg.data_seed), table)
    vals = [1 / (1 + len(k["relation"])) for caps in split.swaps for k in caps if k["relation"]]
    assert swap_chance(cfg)["test"]["relation"] == pytest.approx(sum(vals) / len(vals))
    assert all(v == 0.5 for v in vals)  # a relation has exactly one opposite


@pytest.mark.slow
def test_minilm_table_matches_the_model_and_is_cached(tmp_path):
    from hardneg.mining.encode import load_sentence_model
    from reproduce.crossmodal import minilm_table

    strings = ["a red circle", "a small blue square left of a green triangle"]
    table = minilm_table(strings, tmp_path)
    ref = load_sentence_model().encode(strings, convert_to_tensor=True, normalize_embeddings=True)
    assert table.shape == (2, 384) and torch.allclose(table, ref.cpu(), atol=1e-5)
    (cached,) = list(tmp_path.glob("minilm_*.npy"))
    assert torch.equal(minilm_table(strings, tmp_path), table) and cached.exists()
