r"""One-edit caption swaps: hard text negatives that change one attribute or relation.

"a small red circle left of a blue square" → "a small **green** circle left of a blue square"
(colour), "… red **triangle** …" (shape), "a **large** red circle …" (size), "… **right of** …"
(relation); "two red shapes" → "**three** red shapes" (count). A model that scores an image's true
caption above every such swap binds attributes to objects and reads relations (the swap test of
compositional benchmarks such as ARO and SugarCrepe). Next to the sentence-level rewrites of
`hardneg.negatives.text_negatives` (negation, antonym, entity swap), these are the
attribute-level edits of captions.

Each function returns **every** one-edit variant of its kind (one word or one relation phrase
replaced, nothing else changed), in sentence order then vocabulary order; whether a variant is
false for a given image is for the caller to decide (a scene generator knows; see
`hardneg.data.scenes.caption_true`). Encode the kept ones and pass them to
``Strategy.forward(..., negatives=(B×r×d), negatives_per_anchor=True)`` so each image owns the
edits of its own caption.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["EDIT_KINDS", "EditVocabulary", "one_edit_swaps", "swap_colour", "swap_shape", "swap_size", "swap_count",
           "swap_relation"]

EDIT_KINDS = ("colour", "shape", "size", "count", "relation")


@dataclass(frozen=True)
class EditVocabulary:
    """The words an edit may replace, by kind. ``shapes`` are nouns (plural: + ``"s"``), ``counts``
    number words in order (``counts[0]`` takes a singular noun), ``relations`` pairs of phrases
    swapped for each other (both directions)."""

    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white")
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
    sizes: tuple[str, ...] = ("small", "large")
    counts: tuple[str, ...] = ("one", "two", "three")
    relations: tuple[tuple[str, str], ...] = (("left of", "right of"), ("above", "below"))
    generic_noun: str = "shape"


_WORD = re.compile(r"[A-Za-z]+")


def _replace_word(sentence: str, start: int, end: int, new: str) -> str:
    return sentence[:start] + new + sentence[end:]


def _word_spans(sentence: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), m.group(0).lower()) for m in _WORD.finditer(sentence)]


def _swap_words(sentence: str, options: Sequence[str]) -> list[str]:
    out: list[str] = []
    for s, e, w in _word_spans(sentence):
        if w in options:
            out += [_replace_word(sentence, s, e, o) for o in options if o != w]
    return out


def swap_colour(sentence: str, vocab: EditVocabulary = EditVocabulary()) -> list[str]:
    """Every variant with one colour word replaced by another colour."""
    return _swap_words(sentence, vocab.colours)


def swap_size(sentence: str, vocab: EditVocabulary = EditVocabulary()) -> list[str]:
    """Every variant with one size word replaced by another size."""
    return _swap_words(sentence, vocab.sizes)


def swap_shape(sentence: str, vocab: EditVocabulary = EditVocabulary()) -> list[str]:
    """Every variant with one shape noun (singular or plural) replaced by another shape."""
    out: list[str] = []
    for s, e, w in _word_spans(sentence):
        plural = w.endswith("s") and w[:-1] in vocab.shapes
        base = w[:-1] if plural else w
        if base in vocab.shapes:
            out += [_replace_word(sentence, s, e, o + ("s" if plural else "")) for o in vocab.shapes if o != base]
    return out


def swap_count(sentence: str, vocab: EditVocabulary = EditVocabulary()) -> list[str]:
    """Every variant with the count word replaced by another count; the noun after it follows the
    number (``counts[0]`` takes the singular)."""
    nouns = {*vocab.shapes, vocab.generic_noun}
    spans = _word_spans(sentence)
    out: list[str] = []
    for idx, (s, e, w) in enumerate(spans):
        if w not in vocab.counts:
            continue
        # the noun the count governs: the first noun after it
        noun = next(((ns, ne, nw) for ns, ne, nw in spans[idx + 1 :] if nw in nouns or nw[:-1] in nouns), None)
        for o in vocab.counts:
            if o == w:
                continue
            new = sentence
            if noun is not None:
                ns, ne, nw = noun
                base = nw[:-1] if nw[:-1] in nouns and nw not in nouns else nw
                new = _replace_word(new, ns, ne, base if o == vocab.counts[0] else base + "s")
            out.append(_replace_word(new, s, e, o))
    return out


def swap_relation(sentence: str, vocab: EditVocabulary = EditVocabulary()) -> list[str]:
    """Every variant with one relation phrase replaced by its opposite ("left of" ↔ "right of")."""
    out: list[str] = []
    low = sentence.lower()
    for a, b in vocab.relations:
        for x, y in ((a, b), (b, a)):
            for m in re.finditer(rf"\b{re.escape(x)}\b", low):
                out.append(sentence[: m.start()] + y + sentence[m.end() :])
    return out


_FUNCS = {
    "colour": swap_colour,
    "shape": swap_shape,
    "size": swap_size,
    "count": swap_count,
    "relation": swap_relation,
}


def one_edit_swaps(
    sentence: str, kinds: Sequence[str] = EDIT_KINDS, vocab: EditVocabulary = EditVocabulary()
) -> dict[str, list[str]]:
    """``{kind: [variants]}`` of every one-edit swap of ``sentence`` (kinds that do not apply map
    to an empty list; duplicates and the sentence itself are dropped)."""
    if not isinstance(sentence, str):
        raise TypeError(f"sentence must be a str, got {type(sentence).__name__}")
    bad = [k for k in kinds if k not in _FUNCS]
    if bad:
        raise ValueError(f"unknown edit kinds {bad}; choose from {EDIT_KINDS}")
    out: dict[str, list[str]] = {}
    for k in kinds:
        seen: list[str] = []
        for v in _FUNCS[k](sentence, vocab):
            if v != sentence and v not in seen:
                seen.append(v)
        out[k] = seen
    return out
