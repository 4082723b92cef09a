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
    assert ImageTower(dim=8, width=4, stages=3, norm=False, pre_pool=True)(torch.zeros(2, 3, 64, 64)).shape == (2, 8)
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
    assert runs == ["edits_s0", "edits_s1", "uniform_s0", "uniform_s1"]
    rec = json.loads((runs_dir / "uniform_s0" / "summary.json").read_text())
    assert rec["steps"] == 2 and 0.0 <= rec["metrics"]["test"]["i2t_R@1"] <= 1.0
    doc.write_text(doc.read_text() + "My reading.\n")
    before = {p: p.stat().st_mtime_ns for p in runs_dir.glob("*/summary.json")}
    with pytest.raises(SystemExit):
        main(["crossmodal-compare", "--config", str(cfg), "--out", str(out), "--docs", str(doc)])
    assert {p: p.stat().st_mtime_ns for p in runs_dir.glob("*/summary.json")} == before  # reused, not retrained
    text = doc.read_text()
    assert text.endswith("My reading.\n") and "| uniform | 2 |" in text
    (runs_dir / "edits_s1" / "summary.json").unlink()
    with pytest.raises(SystemExit):  # tabulate what is finished, train nothing
        main(["crossmodal-compare", "--config", str(cfg), "--out", str(out), "--docs", str(doc), "--summarize"])
    assert not (runs_dir / "edits_s1" / "summary.json").exists() and "| edits | 1 |" in doc.read_text()
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


def _hand_batch():
    """Five (image, caption) pairs whose captions are true of an image exactly when the two pairs
    share an image (pair group) or an object set (label): rows 0 and 4 show one small red circle
    (the same image), row 1 another small red circle elsewhere, rows 2 and 3 other objects."""
    from hardneg.data.scenes import SceneObject, object_set_label

    red0 = (SceneObject("red", "circle", "small", 20.0, 20.0),)
    red1 = (SceneObject("red", "circle", "small", 44.0, 40.0),)
    blue = (SceneObject("blue", "square", "large", 30.0, 30.0),)
    yellow = (SceneObject("yellow", "diamond", "small", 12.0, 50.0),)
    images = [0, 1, 2, 3, 0]
    objects = [red0, red1, blue, yellow, red0]
    captions = ["a red circle", "one red circle", "a blue square", "a yellow diamond", "a small red circle"]
    labels = torch.tensor([object_set_label(o) for o in objects])
    return images, objects, captions, labels


def _literal_clip_without(true: torch.Tensor, zi: torch.Tensor, zt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss whose denominators leave out every (image, caption) pair ``true`` marks,
    the anchor's own positive kept."""
    s = scale * torch.nn.functional.normalize(zi, dim=1) @ torch.nn.functional.normalize(zt, dim=1).T
    terms = []
    for a in range(len(zi)):
        for sim, keep in ((s[a], ~true[a]), (s[:, a], ~true[:, a])):  # image→text, text→image
            keep = keep.clone()
            keep[a] = True
            terms.append(-(sim[a] - torch.logsumexp(sim[keep], 0)))
    return torch.stack(terms).mean()


def test_the_false_negative_filter_removes_exactly_the_captions_true_of_the_image():
    """CLIP's loss with the ``id`` and ``label`` filters equals the literal CLIP loss whose
    denominators leave out every caption true of the anchor image (and, text→image, every image the
    anchor caption is true of), computed with `caption_true`."""
    from hardneg.integrations.open_clip import ClipLoss
    from hardneg.negatives.cross_modal import pair_ids

    images, objects, captions, labels = _hand_batch()
    true = torch.tensor([[caption_true(objects[a], captions[b]) for b in range(5)] for a in range(5)])
    ids = pair_ids(images, captions)
    # the batch is built so that "true of" is "same group or same object set"
    assert torch.equal(true, (ids[:, None] == ids[None, :]) | (labels[:, None] == labels[None, :]))
    assert int(true.sum()) == 9 + 2  # the three red-circle rows among themselves, and rows 2, 3 alone
    g = torch.Generator().manual_seed(0)
    zi, zt = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    scale = torch.tensor(10.0)
    filtered = ClipLoss({"name": "ucl", "filters": [{"kind": "id"}, {"kind": "label"}]})
    got = filtered(zi, zt, scale, labels=labels, ids=ids)
    assert float(got) == pytest.approx(float(_literal_clip_without(true, zi, zt, scale)), rel=1e-5)
    plain = ClipLoss({"name": "ucl"})(zi, zt, scale, labels=labels, ids=ids)
    assert abs(float(plain) - float(got)) > 1e-3  # the id rule alone keeps row 1's caption for row 0


def test_the_caption_truth_filter_removes_the_true_captions_that_groups_and_labels_miss():
    """A scene with a red circle and a blue square: "a red circle", written for another scene, is
    true of it, with another group and another object set. `CaptionTruthFilter` removes it (the
    literal loss without every `caption_true` pair); the id + label filter keeps it."""
    from hardneg.data.scenes import SceneObject, object_set_label
    from hardneg.integrations.open_clip import ClipLoss
    from hardneg.negatives.cross_modal import pair_ids
    from reproduce.crossmodal import CaptionTruthFilter

    a = (SceneObject("red", "circle", "small", 16.0, 16.0), SceneObject("blue", "square", "large", 44.0, 44.0))
    b = (SceneObject("red", "circle", "small", 40.0, 20.0),)
    c = (SceneObject("yellow", "diamond", "small", 30.0, 30.0),)
    objects, captions = [a, b, c], ["a blue square", "a red circle", "a yellow diamond"]
    true = torch.tensor([[caption_true(o, cap) for cap in captions] for o in objects])
    assert true.tolist() == [[True, True, False], [False, True, False], [False, False, True]]
    ids, labels = pair_ids([0, 1, 2], captions), torch.tensor([object_set_label(o) for o in objects])
    g = torch.Generator().manual_seed(1)
    zi, zt, scale = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g), torch.tensor(10.0)
    f = CaptionTruthFilter()
    f.truth = true
    got = ClipLoss({"name": "ucl", "filters": [f]})(zi, zt, scale, labels=labels, ids=ids)
    assert float(got) == pytest.approx(float(_literal_clip_without(true, zi, zt, scale)), rel=1e-5)
    by_label = ClipLoss({"name": "ucl", "filters": [{"kind": "id"}, {"kind": "label"}]})(
        zi, zt, scale, labels=labels, ids=ids
    )
    assert float(by_label) == pytest.approx(float(_literal_clip_without(torch.eye(3, dtype=torch.bool), zi, zt, scale)))
    f.truth = None
    with pytest.raises(ValueError, match="truth matrix"):
        ClipLoss({"name": "ucl", "filters": [f]})(zi, zt, scale, ids=ids)


def test_run_grid_writes_hardneg_run_folders_and_resumes(tmp_path):
    """`run_grid` writes a compare folder of run folders (`hardneg.runs` markers, configs, summaries);
    a second call reuses the finished runs, and another config into the folder is refused unless
    ``overwrite``."""
    from hardneg.runs import read_marker
    from reproduce.crossmodal import run_grid

    cfg = CrossModalConfig(n_train=16, n_test=10, n_compositional=10, epochs=1, batch_size=8, dim=8, width=4,
                           threads=1, seeds=[0], strategies={"uniform": {"name": "ucl"}})
    out = tmp_path / "exp"
    recs = run_grid(cfg, out, log=None)
    run = out / "runs" / "uniform_s0"
    assert read_marker(out) == "compare" and read_marker(run) == "run"
    assert sorted(p.name for p in run.iterdir()) == [".hardneg", "config.yaml", "summary.json"]
    assert recs[0]["steps"] == 2 and json.loads((run / "summary.json").read_text())["seed"] == 0
    mtime = (run / "summary.json").stat().st_mtime_ns
    again = run_grid(cfg, out, log=None)
    assert again == recs and (run / "summary.json").stat().st_mtime_ns == mtime  # reused, not retrained
    assert run_grid(cfg, out, log=None, train=False) == recs
    more = cfg.model_copy(update={"strategies": {**cfg.strategies, "topk": {"name": "topk", "k": 2}}})
    both = run_grid(more, out, log=None)  # a strategy added: the finished run is reused
    assert both[0] == recs[0] and both[1]["strategy"] == "topk"
    assert (run / "summary.json").stat().st_mtime_ns == mtime
    other = cfg.model_copy(update={"epochs": 2})
    with pytest.raises(FileExistsError, match="differs"):
        run_grid(other, out, log=None)
    assert run_grid(other, out, log=None, overwrite=True)[0]["steps"] == 4


def test_hardest_true_share_counts_anchors_whose_top_other_group_caption_is_true():
    from hardneg.data.scenes import parse_caption
    from hardneg.negatives.cross_modal import pair_ids
    from reproduce.crossmodal import hardest_true_share

    images, objects, captions, _ = _hand_batch()
    ids = pair_ids(images, captions)
    g = torch.Generator().manual_seed(3)
    zi, zt = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    zt[1] = zi[0] * 5 + 0.01 * zt[1]  # image 0's nearest caption of another group: "one red circle", true of it
    zt[0] = zi[2] * 5 + 0.01 * zt[0]  # image 2's (the blue square): "a red circle", false of it
    got = hardest_true_share(zi, zt, ids, objects, [parse_caption(c) for c in captions])
    n = torch.nn.functional.normalize
    sim = n(zi, dim=1) @ n(zt, dim=1).T
    hits = []
    for a in range(5):
        others = [b for b in range(5) if int(ids[b]) != int(ids[a])]
        best = max(others, key=lambda b: float(sim[a, b]))
        hits.append(caption_true(objects[a], captions[best]))
    assert hits[0] and not hits[2]
    assert got == pytest.approx(sum(hits) / 5)


@pytest.mark.parametrize("kind", ["mlp", "gru"])
def test_the_text_towers_read_word_order(kind):
    """The relation swap test needs captions with the same words in another order told apart ("a red
    circle left of a blue square" against "a blue square left of a red circle"): a mean of the word
    embeddings (bag of words) gives both one vector, `TextTower` (position embeddings, concatenated)
    and `GRUTextTower` (a recurrence over the words) two different ones."""
    from hardneg.data.scenes import WORDS, tokenize
    from hardneg.models.towers import GRUTextTower

    torch.manual_seed(0)
    tower = (TextTower if kind == "mlp" else GRUTextTower)(len(WORDS), max_len=12, dim=16).eval()
    tokens = tokenize(["a red circle left of a blue square", "a blue square left of a red circle"], 12)
    bag = tower.words(tokens).sum(1) / (tokens > 0).sum(1, keepdim=True)
    assert torch.allclose(bag[0], bag[1])  # the same words: bag-of-words pooling cannot tell them apart
    with torch.no_grad():
        z = torch.nn.functional.normalize(tower(tokens), dim=1)
    assert float(z[0] @ z[1]) < 0.99


def test_gru_text_tower_ignores_padding_and_coord_channels_hold_the_pixel_coordinates():
    """A caption's embedding does not depend on the padding after it (the backward direction starts
    at its last word), and `CoordChannels` appends column and row scaled to [−1, 1]."""
    from hardneg.models.towers import CoordChannels, GRUTextTower

    torch.manual_seed(1)
    tower = GRUTextTower(20, max_len=6, dim=8).eval()
    short = torch.tensor([[3, 4, 5, 0, 0, 0]])
    with torch.no_grad():
        alone = tower(short)
        in_batch = tower(torch.cat([short, torch.tensor([[1, 2, 3, 4, 5, 6]])]))[:1]
        # the literal recurrence over the three words, both directions, from PyTorch's GRU cells
        x = tower.words(short[:, :3])
        _, hf = tower.gru(x)
    assert torch.allclose(alone, in_batch, atol=1e-6)
    assert torch.allclose(alone, tower.out(torch.cat([hf[0], hf[1]], dim=1)), atol=1e-6)
    x = torch.zeros(2, 3, 4, 5)
    c = CoordChannels()(x)
    assert c.shape == (2, 5, 4, 5) and torch.equal(c[:, :3], x)
    assert torch.allclose(c[0, 3, 2], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))  # column, every row
    assert torch.allclose(c[1, 4, :, 0], torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))  # row, every column
    assert ImageTower(dim=8, width=4, stages=3, pre_pool=True, coords=True)(torch.zeros(2, 3, 64, 64)).shape == (2, 8)


def test_relation_twin_batches_pair_each_scene_with_its_twin_and_reversed_caption():
    """With ``relation_twins`` a batch is ``batch_size / 2`` scenes then their twins (row i + n), an
    epoch passes once over the scenes, and the twin's caption is its scene's caption with relations
    reversed; `batch_false_negatives` counts, for each relation caption, whether the batch holds a
    caption false of the image only through its relation — literally, with `caption_true`."""
    from hardneg.data.scenes import parse_caption, reflect, reverse_relations
    from hardneg.negatives.cross_modal import pair_ids
    from reproduce.crossmodal import Run, batch_false_negatives, build_data

    cfg = CrossModalConfig(n_train=32, n_test=10, n_compositional=10, epochs=1, batch_size=8, dim=8, width=4,
                           relation_twins=True, strategies={"u": {"name": "ucl"}})
    data, table = build_data(cfg)
    run = Run(cfg, "u", 0, data, table)
    order = run.batch_order(cfg.batch_size)
    assert len(order) == 32 // 4 and all(torch.equal(b[4:], b[:4] + 32) for b in order)
    assert sorted(torch.cat([b[:4] for b in order]).tolist()) == list(range(32))
    tr = data["train"].scenes
    assert all(tr.captions[32 + i] == [reverse_relations(c) for c in tr.captions[i]] for i in range(32))
    run.step(order[0])
    assert run.step_count == 1
    # the diagnostic by hand: 8 batches of 4 scenes + twins, the captions drawn as the function draws them
    rng = __import__("numpy").random.default_rng(cfg.data_seed)
    n_rel = n_conf = 0
    for b0 in range(0, 32, 4):
        rows = list(range(b0, b0 + 4))
        caps = [tr.captions[i][int(rng.integers(len(tr.captions[i])))] for i in rows]
        objs = [tr.objects[i] for i in rows] + [reflect(tr.objects[i]) for i in rows]
        caps = caps + [reverse_relations(c) for c in caps]
        ids = pair_ids(list(range(8)), caps)
        for a in range(8):
            if parse_caption(caps[a])[0] != "relation":
                continue
            n_rel += 1
            n_conf += any(
                int(ids[b]) != int(ids[a]) and not caption_true(objs[a], caps[b])
                and caption_true(objs[a], reverse_relations(caps[b]))
                for b in range(8)
            )
    got = batch_false_negatives(cfg)
    assert n_rel > 0 and got["relation_confuser_share"] == pytest.approx(n_conf / n_rel)
    plain = batch_false_negatives(cfg.model_copy(update={"relation_twins": False}))
    assert got["relation_confuser_share"] >= 0.75 > plain["relation_confuser_share"]  # most meet their twin's
