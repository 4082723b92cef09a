r"""Meaning-changing rewrites of a sentence, used as its hard negatives (text only).

A sentence-embedding model should place "The cat is on the mat" far from "The cat is not on the
mat", although the two share almost every token. Such rewrites are cheap hard negatives (the
"negation / antonym / word-order" negatives of e.g. SimCSE's NLI hard negatives and of
compositionality benchmarks). Each function returns the rewritten sentence, or ``None`` when the
rule does not apply (so nothing that keeps the meaning is ever returned as a negative):

- `negate` — insert or remove a negation after the first auxiliary/modal verb
  ("is" → "is not", "can't" → "can"); sentences without one get "do not"/"does not" before the
  first verb-like token only when an auxiliary is absent and a pronoun subject is found; else None;
- `swap_antonym` — replace the first word that has an antonym in a built-in list;
- `swap_entities` — swap the first two capitalised non-initial tokens or numbers
  ("Paris is larger than Lyon" → "Lyon is larger than Paris"); with a single entity, replace it
  with another entity from ``entity_pool`` when given;
- `shuffle_words` — a seeded permutation of the words (never the identity).

`TextNegatives` applies a chosen list of rules; encode its outputs and pass them to
``Strategy.forward(..., negatives=...)``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

__all__ = ["TextNegatives", "negate", "swap_antonym", "swap_entities", "shuffle_words"]

_AUX = (
    "is",
    "are",
    "was",
    "were",
    "am",
    "can",
    "could",
    "will",
    "would",
    "should",
    "must",
    "may",
    "might",
    "do",
    "does",
    "did",
    "has",
    "have",
    "had",
    "shall",
)
_NEG_CONTRACTIONS = {
    "isn't": "is",
    "aren't": "are",
    "wasn't": "was",
    "weren't": "were",
    "can't": "can",
    "cannot": "can",
    "couldn't": "could",
    "won't": "will",
    "wouldn't": "would",
    "shouldn't": "should",
    "mustn't": "must",
    "don't": "do",
    "doesn't": "does",
    "didn't": "did",
    "hasn't": "has",
    "haven't": "have",
    "hadn't": "had",
}

_ANTONYM_PAIRS = [
    ("good", "bad"),
    ("big", "small"),
    ("large", "small"),
    ("hot", "cold"),
    ("up", "down"),
    ("open", "closed"),
    ("fast", "slow"),
    ("high", "low"),
    ("happy", "sad"),
    ("old", "new"),
    ("young", "old"),
    ("long", "short"),
    ("tall", "short"),
    ("early", "late"),
    ("light", "dark"),
    ("heavy", "light"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("easy", "difficult"),
    ("hard", "easy"),
    ("true", "false"),
    ("win", "lose"),
    ("won", "lost"),
    ("wins", "loses"),
    ("increase", "decrease"),
    ("increases", "decreases"),
    ("increased", "decreased"),
    ("above", "below"),
    ("before", "after"),
    ("inside", "outside"),
    ("always", "never"),
    ("everyone", "no one"),
    ("all", "none"),
    ("more", "less"),
    ("most", "least"),
    ("best", "worst"),
    ("better", "worse"),
    ("love", "hate"),
    ("loves", "hates"),
    ("loved", "hated"),
    ("accept", "reject"),
    ("accepted", "rejected"),
    ("safe", "dangerous"),
    ("clean", "dirty"),
    ("wet", "dry"),
    ("full", "empty"),
    ("cheap", "expensive"),
    ("friend", "enemy"),
    ("left", "right"),
    ("north", "south"),
    ("east", "west"),
    ("buy", "sell"),
    ("bought", "sold"),
    ("start", "end"),
    ("started", "ended"),
    ("first", "last"),
    ("positive", "negative"),
    ("alive", "dead"),
    ("present", "absent"),
    ("male", "female"),
    ("man", "woman"),
    ("men", "women"),
    ("boy", "girl"),
    ("day", "night"),
    ("white", "black"),
    ("push", "pull"),
    ("arrive", "leave"),
    ("arrived", "left"),
    ("enter", "exit"),
]
ANTONYMS: dict[str, str] = {}
for _a, _b in _ANTONYM_PAIRS:
    ANTONYMS.setdefault(_a, _b)
    ANTONYMS.setdefault(_b, _a)

_STOP = {
    "the",
    "a",
    "an",
    "i",
    "it",
    "he",
    "she",
    "they",
    "we",
    "you",
    "this",
    "that",
    "there",
    "these",
    "those",
    "his",
    "her",
    "their",
    "our",
    "my",
    "in",
    "on",
    "at",
    "when",
    "if",
    "after",
    "before",
}
_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def _words(sentence: str) -> list[str]:
    return sentence.split()


def _match_case(src: str, word: str) -> str:
    if src[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _strip(w: str) -> tuple[str, str, str]:
    m = re.fullmatch(r"(\W*)(.*?)(\W*)", w, re.S)
    assert m is not None  # every string matches: each group may be empty
    return m.group(1), m.group(2), m.group(3)


def negate(sentence: str) -> str | None:
    """Add or remove a negation at the first auxiliary / modal verb; None if there is none."""
    ws = _words(sentence)
    for i, w in enumerate(ws):
        pre, core, post = _strip(w)
        low = core.lower()
        if low in _NEG_CONTRACTIONS:
            ws[i] = pre + _match_case(core, _NEG_CONTRACTIONS[low]) + post
            return " ".join(ws)
        if low in _AUX:
            if i + 1 < len(ws) and _strip(ws[i + 1])[1].lower() in ("not", "never"):
                del ws[i + 1]
                return " ".join(ws)
            ws[i] = pre + core + post.rstrip() if post else w
            ws.insert(i + 1, "not" + (post if post else ""))
            if post:
                ws[i] = pre + core
            return " ".join(ws)
        if low in ("not", "never") and i > 0:
            del ws[i]
            return " ".join(ws)
    return None


def swap_antonym(sentence: str) -> str | None:
    """Replace the first word with a known antonym (built-in list); None if no word has one."""
    ws = _words(sentence)
    for i, w in enumerate(ws):
        pre, core, post = _strip(w)
        low = core.lower()
        if low in ANTONYMS:
            ws[i] = pre + _match_case(core, ANTONYMS[low]) + post
            return " ".join(ws)
    return None


def _is_entity(core: str, position: int) -> bool:
    if not core:
        return False
    if re.fullmatch(r"\d+(?:[.,]\d+)?", core):
        return True
    return position > 0 and core[:1].isupper()


def swap_entities(sentence: str, entity_pool: Sequence[str] | None = None, seed: int = 0) -> str | None:
    """Swap the first two entities (capitalised non-initial tokens or numbers); with one entity,
    replace it by a different one drawn from ``entity_pool``; None otherwise."""
    ws = _words(sentence)
    pos = [i for i, w in enumerate(ws) if _is_entity(_strip(w)[1], i)]
    names = [i for i in pos if not re.fullmatch(r"\d+(?:[.,]\d+)?", _strip(ws[i])[1])]
    first = _strip(ws[0])[1] if ws else ""
    if names and first[:1].isupper() and first.lower() not in _STOP:
        pos = [0] + names  # a capitalised first word is a name when other names follow ("Paris … Lyon")
    if len(pos) >= 2:
        i = pos[0]
        j = next((p for p in pos[1:] if _strip(ws[p])[1] != _strip(ws[i])[1]), None)
        if j is not None:
            pi, ci, qi = _strip(ws[i])
            pj, cj, qj = _strip(ws[j])
            ws[i], ws[j] = pi + cj + qi, pj + ci + qj
            return " ".join(ws)
    if pos and entity_pool:
        i = pos[0]
        pre, core, post = _strip(ws[i])
        choices = [e for e in entity_pool if e != core]
        if choices:
            ws[i] = pre + random.Random(seed).choice(choices) + post
            return " ".join(ws)
    return None


def shuffle_words(sentence: str, seed: int = 0) -> str | None:
    """A seeded permutation of the words that differs from the original; None if impossible."""
    ws = _words(sentence)
    if len(set(ws)) < 2:
        return None
    rng = random.Random(seed)
    for _ in range(100):
        perm = ws[:]
        rng.shuffle(perm)
        if perm != ws:
            return " ".join(perm)
    return " ".join(ws[1:] + ws[:1])


RULES = ("negation", "antonym", "entity", "shuffle")


class TextNegatives:
    """Apply meaning-changing rules to sentences.

    Args:
        rules: subset of ``("negation", "antonym", "entity", "shuffle")`` (default: all).
        entity_pool: replacement entities for sentences with a single entity.
        seed: seed for shuffles and entity draws (sentence-specific offsets keep it deterministic).
    """

    def __init__(self, rules: Sequence[str] = RULES, entity_pool: Sequence[str] | None = None, seed: int = 0) -> None:
        bad = [r for r in rules if r not in RULES]
        if bad or not rules:
            raise ValueError(f"rules must be a non-empty subset of {RULES}, got {list(rules)!r}")
        self.rules, self.entity_pool, self.seed = tuple(rules), entity_pool, seed

    def __call__(self, sentence: str) -> list[str]:
        """Distinct rewrites of ``sentence`` (those that apply), in rule order."""
        if not isinstance(sentence, str):
            raise TypeError(f"sentence must be a str, got {type(sentence).__name__}")
        s0 = self.seed + sum(map(ord, sentence))
        out: list[str] = []
        for r in self.rules:
            if r == "negation":
                v = negate(sentence)
            elif r == "antonym":
                v = swap_antonym(sentence)
            elif r == "entity":
                v = swap_entities(sentence, self.entity_pool, s0)
            else:
                v = shuffle_words(sentence, s0)
            if v is not None and v != sentence and v not in out:
                out.append(v)
        return out

    def batch(self, sentences: Sequence[str]) -> list[list[str]]:
        return [self(s) for s in sentences]
