"""hardneg.mine_hard_negatives against sentence-transformers' mine_hard_negatives (the oracle), with the real
all-MiniLM-L6-v2: same arguments, exact search -> the same dataset, in every output format."""

import json
import re

import pytest

from tests.retrieval_fixtures import CORPUS, POSITIVES, QUERIES, minilm

datasets = pytest.importorskip("datasets")
st_util = pytest.importorskip("sentence_transformers.util")

# one anchor with two positives and one repeated (anchor, positive) row: the grouping and margin rules
# for several positives per anchor are part of what is compared
Q = [*QUERIES, QUERIES[0], QUERIES[2]]
P = [*POSITIVES, CORPUS[7], POSITIVES[2]]
# (format, output_scores): triplet and n-tuple only add a scores column with output_scores (compared
# here); the labeled formats swap their last column, so both variants are compared
CASES = [("triplet", True), ("n-tuple", True), ("labeled-pair", False), ("labeled-pair", True),
         ("labeled-list", False), ("labeled-list", True)]


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    # both functions cache embeddings, so the 8 calls per case encode once
    return str(tmp_path_factory.mktemp("st-cache")), str(tmp_path_factory.mktemp("hn-cache"))


def _ds():
    return datasets.Dataset.from_dict({"query": Q, "answer": P})


def _both(caches, **kw):
    import hardneg

    m = minilm()
    common = dict(corpus=CORPUS, num_negatives=2, use_faiss=True, verbose=False, batch_size=8, **kw)
    st = st_util.mine_hard_negatives(_ds(), m, cache_folder=caches[0], **common)
    ours = hardneg.mine_hard_negatives(_ds(), m, cache_folder=caches[1], **common)
    return st, ours


def _split(rows):
    """(text part, score part) of each row."""
    text = [{k: v for k, v in r.items() if k not in ("score", "scores")} for r in rows]
    score = []
    for r in rows:
        v = r.get("score", r.get("scores"))
        score.extend(v if isinstance(v, list) else [v])
    return text, score


@pytest.mark.parametrize("kw", [
    {},
    {"relative_margin": 0.05},
    {"absolute_margin": 0.0},
    {"max_score": 0.45},
    {"range_min": 2, "range_max": 8},
    {"query_prompt": "query: ", "corpus_prompt": "passage: "},
], ids=["default", "relative_margin", "absolute_margin", "max_score", "window", "prompts"])
def test_same_dataset_as_sentence_transformers(caches, kw):
    for fmt, scores in CASES:
        st, ours = _both(caches, output_format=fmt, output_scores=scores, **kw)
        assert ours.column_names == st.column_names, (fmt, scores)
        st_text, st_score = _split(st.to_list())
        our_text, our_score = _split(ours.to_list())
        assert our_text == st_text, (fmt, scores)
        if scores:
            assert our_score == pytest.approx(st_score, abs=2e-5)


def test_filters_change_the_negatives_on_this_fixture(caches):
    # so the comparisons above exercise the margin and score filters, not only the defaults
    base = {r["negative"] for r in _both(caches)[1]}
    # every positive scores > 0, where s_p − |s_p|·r and s_p·(1 − r) are the same relative-margin threshold
    assert min(r["scores"][0] for r in _both(caches, output_format="n-tuple", output_scores=True)[1]) > 0
    for kw in ({"relative_margin": 0.05}, {"absolute_margin": 0.0}, {"max_score": 0.45}):
        assert {r["negative"] for r in _both(caches, **kw)[1]} != base, kw


def test_hardneg_knobs_label_filter_and_summary(tmp_path):
    import hardneg

    m = minilm()
    labels = [[f"sense{i}"] for i in range(len(QUERIES))]
    ds = datasets.Dataset.from_dict({"anchor": QUERIES, "positive": POSITIVES, "labels": labels})
    base = hardneg.mine_hard_negatives(ds, m, corpus=CORPUS, num_negatives=2, verbose=False)
    pilot = [r["negative"] for r in base if r["anchor"] == QUERIES[0]]
    assert CORPUS[0] in pilot  # "the act of terminating a life" is a top negative of the pilot query
    corpus_labels = [["sense0"] if c == CORPUS[0] else [] for c in CORPUS]
    out, summary = hardneg.mine_hard_negatives(
        ds, m, corpus=CORPUS, num_negatives=2, verbose=False, label_column="labels", corpus_labels=corpus_labels,
        filter_labels=True, range_max=10, summary_path=tmp_path / "s.json", return_summary=True)
    pilot = [r["negative"] for r in out if r["anchor"] == QUERIES[0]]
    assert CORPUS[0] not in pilot and len(pilot) == 2
    assert summary["removed_by_filter"]["false_negative_label"] >= 1
    assert summary["rows_written"] == len(out) == 12
    assert json.loads((tmp_path / "s.json").read_text())["rows_written"] == 12


def test_errors_name_the_argument():
    import hardneg

    m = minilm()
    ds = datasets.Dataset.from_dict({"query": QUERIES, "answer": POSITIVES})
    with pytest.raises(ValueError, match="output_format"):
        hardneg.mine_hard_negatives(ds, m, output_format="quadruplet", verbose=False)
    with pytest.raises(ValueError, match="sampling_strategy"):
        hardneg.mine_hard_negatives(ds, m, sampling_strategy="hardest", verbose=False)
    with pytest.raises(ValueError, match="cross_encoder"):
        hardneg.mine_hard_negatives(ds, m, cross_encoder=m, verbose=False)
    with pytest.raises(ValueError, match="label_column 'nope'"):
        hardneg.mine_hard_negatives(ds, m, label_column="nope", verbose=False)
    with pytest.raises(ValueError, match="empty"):
        hardneg.mine_hard_negatives(ds.select([]), m, verbose=False)
    with pytest.raises(ValueError, match="query_prompt_name 'x'"):
        hardneg.mine_hard_negatives(ds, m, query_prompt_name="x", verbose=False)


def test_unwritable_cache_folder_or_summary_path_is_refused_before_any_model_loads(tmp_path):
    import hardneg

    ds = datasets.Dataset.from_dict({"query": QUERIES, "answer": POSITIVES})
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    # model=None would load the default model: the refusal comes first, in this function's argument names
    with pytest.raises(NotADirectoryError, match=re.escape(f"cache_folder {a_file / 'cache'}: {a_file} is a file")):
        hardneg.mine_hard_negatives(ds, None, cache_folder=a_file / "cache", verbose=False)
    with pytest.raises(NotADirectoryError, match=re.escape(f"summary_path {a_file / 's.json'}: {a_file} is a file")):
        hardneg.mine_hard_negatives(ds, None, summary_path=a_file / "s.json", verbose=False)


@pytest.mark.parametrize("kw", [{}, {"relative_margin": 0.05}], ids=["default", "relative_margin"])
def test_hardneg_mine_gives_the_same_rows_as_mine_hard_negatives(caches, kw):
    """``hardneg mine`` (mine_texts) and ``hardneg.mine_hard_negatives`` group an anchor's positives by the
    one rule (hardneg.mining.pairs): on pairs with a two-positive anchor and a repeated pair, the same rows
    and scores — and sentence-transformers' own rows."""
    from hardneg.mining.mine import MineConfig
    from hardneg.mining.pipeline import mine_texts

    st, ours = _both(caches, output_format="triplet", output_scores=True, range_max=8, **kw)
    cfg = MineConfig(num_negatives=2, range_max=8, format="triplet", scores=True, precision="fp32", batch_size=8,
                     **kw)
    cli = mine_texts(Q, P, CORPUS, cfg, model=minilm(), cache_dir=caches[1], show_progress=False)
    got = [{"query": r["anchor"], "answer": r["positive"], "negative": r["negative"], "scores": r["scores"]}
           for r in cli.rows]
    for want in (ours.to_list(), st.to_list()):
        assert _split(got)[0] == _split(want)[0]
        assert _split(got)[1] == pytest.approx(_split(want)[1], abs=2e-5)
    assert cli.summary["queries"] == len(set(Q))  # each distinct anchor mined once


def test_group_pairs_rule():
    """Distinct pairs grouped by anchor (first appearance), the lowest-scoring positive the margins'
    reference, the others excluded, each pair's own score (hand-computed on unit vectors)."""
    import numpy as np

    from hardneg.mining.pairs import anchor_positives, group_pairs

    g = group_pairs(["a", "b", "a", "b", "a"], ["p1", "q1", "p2", "q1", "p1"])
    assert (g.anchors, g.queries, g.positives, g.rows) == (["a", "b"], ["a", "a", "b"], ["p1", "p2", "q1"], [0, 2, 1])
    assert g.pair_anchor.tolist() == [0, 0, 1] and g.max_positives == 2
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    c = np.array([[0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)  # p1, p2, q1, "b"
    main, others, scores = anchor_positives(g, np.array([0, 1, 2]), q, c, ["p1", "p2", "q1", "b"])
    assert main.tolist() == [1, 2]  # "a": p2 scores 0.6 < p1's 0.8
    # never mined: the other positives, then the anchor's own text where the corpus holds it ("b" is row 3)
    assert others.tolist() == [[0, -1], [-1, 3]]
    assert scores.tolist() == pytest.approx([0.8, 0.6, 1.0])


# sentence-transformers' documented recipe: range_min with max_score and a relative margin, where the
# meaning of range_min (ranks among the filters' survivors) decides which negatives come out
RECIPE = {"range_min": 10, "range_max": 50, "max_score": 0.8, "relative_margin": 0.05, "num_negatives": 5}
RECIPE_CASES = [("triplet", False), ("triplet", True), ("n-tuple", False), ("n-tuple-scores", False),
                ("labeled-pair", False), ("labeled-pair", True), ("labeled-list", False), ("labeled-list", True)]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """The recipe fixture's dataset and corpus, and each function's embedding cache (each encodes once)."""
    from tests.retrieval_fixtures import recipe_fixture

    q, p, c = recipe_fixture()
    ds = datasets.Dataset.from_dict({"anchor": q, "positive": p})
    return ds, c, str(tmp_path_factory.mktemp("st-recipe")), str(tmp_path_factory.mktemp("hn-recipe"))


def _recipe_both(recipe, **kw):
    import hardneg

    ds, corpus, st_cache, hn_cache = recipe
    common = dict(corpus=corpus, use_faiss=True, verbose=False, batch_size=64, **{**RECIPE, **kw})
    st = st_util.mine_hard_negatives(ds, minilm(), cache_folder=st_cache, **common)
    ours = hardneg.mine_hard_negatives(ds, minilm(), cache_folder=hn_cache, **common)
    return st, ours


@pytest.mark.parametrize("fmt,scores", RECIPE_CASES)
def test_recipe_range_min_with_score_filters_same_as_sentence_transformers(recipe, fmt, scores):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sentence-transformers deprecates "n-tuple-scores"
        st, ours = _recipe_both(recipe, output_format=fmt, output_scores=scores)
    assert ours.column_names == st.column_names
    st_text, st_score = _split(st.to_list())
    our_text, our_score = _split(ours.to_list())
    assert len(our_text) >= 60  # the recipe leaves negatives for (nearly) every anchor on this fixture
    assert our_text == st_text
    assert our_score == pytest.approx(st_score, abs=2e-5)


def test_recipe_range_min_decides_on_this_fixture(recipe):
    # the recipe above compares a case where counting range_min before the filters gives other rows
    import hardneg

    ds, corpus, _, hn_cache = recipe
    st, _ = _recipe_both(recipe)
    before = hardneg.mine_hard_negatives(ds, minilm(), corpus=corpus, verbose=False, cache_folder=hn_cache,
                                         window="retrieval", **RECIPE)
    same = sum(a == b for a, b in zip(before.to_list(), st.to_list()))
    assert same < 0.5 * len(st)


def test_recipe_random_sampling_draws_from_sentence_transformers_window(recipe):
    # sentence-transformers samples with Python's unseeded `random`; the oracle is its window: every
    # negative drawn lies in it, and each anchor gets min(num_negatives, window size) negatives, as there
    width = RECIPE["range_max"] - RECIPE["range_min"]
    window_rows, _ = _recipe_both(recipe, num_negatives=width)  # "top" with N = the window: all of it
    window: dict[str, set[str]] = {}
    for r in window_rows:
        window.setdefault(r["anchor"], set()).add(r["negative"])
    st, ours = _recipe_both(recipe, sampling_strategy="random")
    for rows in (st, ours):
        drawn: dict[str, list[str]] = {}
        for r in rows:
            drawn.setdefault(r["anchor"], []).append(r["negative"])
        assert set(drawn) == set(window)
        for anchor, negs in drawn.items():
            assert set(negs) <= window[anchor] and len(set(negs)) == len(negs)
            assert len(negs) == min(RECIPE["num_negatives"], len(window[anchor]))
    assert any(len(w) > RECIPE["num_negatives"] for w in window.values())  # so the draw is a choice


def test_python_summary_names_python_arguments(recipe, capsys):
    import hardneg

    ds, corpus, _, hn_cache = recipe
    hardneg.mine_hard_negatives(ds, minilm(), corpus=corpus, cache_folder=hn_cache, verbose=True,
                                **{**RECIPE, "max_score": 0.5})
    out = capsys.readouterr().out
    warning = next(line for line in out.splitlines() if line.startswith("WARNING:"))
    assert "-> raise max_score" in warning and "--" not in warning
