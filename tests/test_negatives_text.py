"""Meaning-changing text rewrites."""

from __future__ import annotations

import pytest

from hardneg.negatives.text_negatives import TextNegatives, negate, shuffle_words, swap_antonym, swap_entities


def test_negation_inserts_and_removes():
    assert negate("The cat is on the mat.") == "The cat is not on the mat."
    assert negate("The cat is not on the mat.") == "The cat is on the mat."
    assert negate("She can't swim.") == "She can swim."
    assert negate("Dogs bark loudly.") is None  # no auxiliary: the rule does not apply


def test_antonym_and_entity_swaps():
    assert swap_antonym("A small house with a big garden.") == "A big house with a big garden."
    assert swap_antonym("Prices increased in May.") == "Prices decreased in May."
    assert swap_antonym("Nothing to flip here.") is None
    assert swap_entities("Paris is larger than Lyon.") == "Lyon is larger than Paris."
    assert swap_entities("Alice met Bob in London.") == "Bob met Alice in London."
    assert swap_entities("The cat sleeps.") is None
    one = swap_entities("The train leaves for Berlin.", entity_pool=["Berlin", "Madrid"])
    assert one == "The train leaves for Madrid."


def test_shuffle_is_a_different_permutation_and_seeded():
    s = "the quick brown fox jumps"
    a, b = shuffle_words(s, seed=1), shuffle_words(s, seed=1)
    assert a == b and a != s and sorted(a.split()) == sorted(s.split())
    assert shuffle_words("same same", seed=0) is None


def test_text_negatives_returns_only_changed_distinct_sentences():
    tn = TextNegatives()
    out = tn("The old man is happy.")
    assert "The old man is not happy." in out
    assert "The new man is happy." in out  # first word with an antonym
    assert "The old man is happy." not in out and len(out) == len(set(out))
    assert tn("The old man is happy.") == out  # deterministic
    with pytest.raises(ValueError, match="rules"):
        TextNegatives(rules=["synonym"])
