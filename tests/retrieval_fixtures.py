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
