"""Shared helpers for the retrieval tests: the real all-MiniLM-L6-v2 model and a tiny text corpus."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUERIES = [
    "the pilot reported two kills during the mission",
    "he drank a glass of cold milk",
    "the violinist tuned her instrument",
    "we planted roses in the garden",
    "the court ruled in favour of the plaintiff",
    "she sent the letter by airmail",
]
POSITIVES = [
    "the destruction of an enemy plane or ship or tank or missile",
    "a white nutritious liquid secreted by mammals and used as food by human beings",
    "bowed stringed instrument that is the highest member of the violin family",
    "any of many shrubs of the genus Rosa that bear roses",
    "an assembly (including one or more judges) to conduct judicial business",
    "letters and packages that are transported by aircraft",
]
CORPUS = [
    "the act of terminating a life",
    "a dairy product made from curdled milk",
    "a large bowed stringed instrument with a deep tone",
    "a plot of ground where plants are cultivated",
    "a legal document codifying the result of deliberations",
    "the system whereby messages are transmitted via the post office",
    "a flowering plant with fragrant blossoms",
    "an aircraft that has a fixed wing and is powered by propellers or jets",
    "a beverage made by steeping tea leaves in water",
    "a musical instrument with strings that are plucked",
    "the person who brings a suit in a court of law",
    "a hot drink made from roasted coffee beans",
    "a vehicle that carries people on rails",
    "a keyboard instrument with hammers that strike strings",
]


@functools.lru_cache(maxsize=1)
def minilm():
    import torch

    torch.set_num_threads(1)
    from hardneg.mining.encode import load_sentence_model

    return load_sentence_model(None)


def recipe_fixture() -> tuple[list[str], list[str], list[str]]:
    """64 (query, positive) pairs and 192 further documents built from one small vocabulary, so that
    every query has dozens of close candidates: enough for sentence-transformers' documented recipe
    (range_min=10, range_max=50, max_score=0.8, relative_margin=0.05, num_negatives=5)."""
    animals = ["cat", "dog", "horse", "rabbit", "parrot", "goat", "mouse", "fox"]
    colours = ["black", "white", "brown", "grey"]
    actions = ["sleeps on the sofa", "runs across the field", "eats fresh vegetables", "hides under the bed",
               "plays in the garden", "drinks from the river"]
    queries, positives, corpus = [], [], []
    for k in range(64):
        a, c, act = animals[k % 8], colours[(k // 8) % 4], actions[(k * 5) % 6]
        queries.append(f"which {c} {a} {act}?")
        positives.append(f"the {c} {a} that {act}")
    for k in range(192):
        a, c, act = animals[k % 8], colours[(k // 8) % 4], actions[(k // 32) % 6]
        corpus.append(f"a {c} {a} who often {act} in the {['morning', 'evening', 'night'][k % 3]}")
    return queries, positives, corpus
