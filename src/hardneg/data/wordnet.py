"""WordNet as a text-retrieval task: example sentence (or lemma) → its synset's definition.

Reads the Princeton WordNet 3.0 database files as installed by Debian's ``wordnet-base``
(``/usr/share/wordnet/data.noun``, ``data.verb``, ``data.adj``, ``data.adv``). Each synset line is

    offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] p_cnt [ptr...] [frames] | gloss

(see ``wndb(5WN)``). The gloss is split into its *definition* and its double-quoted *examples*.

The retrieval task: the query is a usage example (or, with ``query="lemma"``, a lemma of the
synset), the relevant document is the synset's definition, and the corpus is every definition of
the selected parts of speech (deduplicated). Siblings (synsets sharing a hypernym) are natural hard
negatives; the glosses of a synset's direct hypernyms and hyponyms describe the query too and are
natural false negatives. `fn_labels_for_query` and `fn_labels_for_doc` encode that
relation as label sets whose intersection marks a known false negative (used by ``hardneg mine``).

A second kind, *ambiguous* negatives (``ambiguous=True``): an example sentence does not say which of
its words it illustrates, so the definition of *another* noun that occurs in it ("peeling potatoes is
a drag" → "mashed potato: potato that has been peeled ...") answers the query as well as the gold one
for a reader who cannot see the target word. `ambiguity_labels_for_query` /
`ambiguity_labels_for_doc` mark them: ``w:<lemma>`` for every word n-gram of the query (n ≤ 3,
last word also in simple singular / base forms, function words skipped) that is not a lemma of the
query's own synset, and ``w:<lemma>`` for every lemma of a document's synsets. Other senses of the
target word itself stay negatives (they are what the sentence's context disambiguates).

The split is deterministic by synset: ``sha1("pos:offset")`` mapped to [0, 1) against the split
fractions, so every example of a synset lands in the same split.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATA_DIR = Path("/usr/share/wordnet")
POS_FILES: dict[str, str] = {"noun": "data.noun", "verb": "data.verb", "adj": "data.adj", "adv": "data.adv"}
_POS_CHAR = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}
_QUOTED = re.compile(r'"([^"]*)"')
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Synset:
    """One WordNet synset: ``key`` is ``"pos:offset"`` (unique across the four data files)."""

    key: str
    pos: str
    lemmas: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]
    hypernyms: tuple[str, ...] = field(default=())  # keys of @ and @i targets


def split_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
    """Split a WordNet gloss into (definition, examples): examples are the double-quoted parts."""
    examples = tuple(e.strip() for e in _QUOTED.findall(gloss) if e.strip())
    definition = _QUOTED.sub("", gloss)
    # drop the separators and attributions left behind by removed examples ('; ; - Shakespeare')
    parts = [p.strip() for p in definition.split(";")]
    parts = [p for p in parts if p and not p.startswith("-")]
    return "; ".join(parts).strip(), examples


def parse_data_file(path: str | os.PathLike[str]) -> list[Synset]:
    """Parse one ``data.<pos>`` file (format in ``wndb(5WN)``); license-header lines are skipped."""
    path = Path(path)
    out: list[Synset] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("  ") or not line.strip():
                continue
            head, sep, gloss = line.partition(" | ")
            if not sep:
                raise ValueError(f"{path} line {lineno}: malformed WordNet data line (no ' | ' before the gloss)")
            tok = head.split()
            try:
                offset, ss_type, w_cnt = tok[0], tok[2], int(tok[3], 16)
                lemmas = tuple(tok[4 + 2 * i].replace("_", " ") for i in range(w_cnt))
                i = 4 + 2 * w_cnt
                p_cnt = int(tok[i])
                i += 1
                hypers = []
                for _ in range(p_cnt):
                    sym, target, pos_c = tok[i], tok[i + 1], tok[i + 2]
                    if sym in ("@", "@i"):
                        hypers.append(f"{_POS_CHAR[pos_c]}:{target}")
                    i += 4
            except (IndexError, ValueError, KeyError) as e:
                raise ValueError(f"{path} line {lineno}: malformed WordNet data line ({e})") from e
            pos = _POS_CHAR[ss_type]
            definition, examples = split_gloss(gloss.strip())
            out.append(Synset(f"{pos}:{offset}", pos, lemmas, definition, examples, tuple(hypers)))
    return out


def load_synsets(
    pos: str | Sequence[str] = "noun", data_dir: str | os.PathLike[str] | None = None
) -> list[Synset]:
    """Load the synsets of the given parts of speech (``noun``, ``verb``, ``adj``, ``adv``)."""
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    pos_list = [pos] if isinstance(pos, str) else list(pos)
    if not pos_list:
        raise ValueError("pos must name at least one of noun, verb, adj, adv")
    synsets: list[Synset] = []
    for p in pos_list:
        if p not in POS_FILES:
            raise ValueError(f"pos must be one of {sorted(POS_FILES)}, got {p!r}")
        path = data_dir / POS_FILES[p]
        if not path.is_file():
            raise FileNotFoundError(
                f"WordNet file {path} not found: install Debian's 'wordnet-base' (apt-get install "
                f"wordnet-base) or pass --data-dir to the folder holding data.noun, data.verb, ..."
            )
        synsets.extend(parse_data_file(path))
    return synsets


def split_of(key: str, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """Deterministic split of a synset: ``sha1(key)`` as a number in [0, 1) against the fractions."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    u = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2.0**64
    if u < fractions[0]:
        return "train"
    return "dev" if u < fractions[0] + fractions[1] else "test"


def fn_labels_for_query(s: Synset) -> list[str]:
    """Label set of a query of synset ``s``: itself and its hypernyms (``s:``), itself as a parent (``c:``)."""
    return [f"s:{s.key}", *(f"s:{h}" for h in s.hypernyms), f"c:{s.key}"]


def fn_labels_for_doc(s: Synset) -> list[str]:
    """Label set of the definition of ``s``: itself (``s:``) and its hypernyms as parents (``c:``).

    It intersects `fn_labels_for_query` of ``q`` exactly when the document is ``q``'s own
    definition, a direct hypernym's or a direct hyponym's; siblings do not intersect.
    """
    return [f"s:{s.key}", *(f"c:{h}" for h in s.hypernyms)]


_WORD = re.compile(r"[a-z0-9][a-z0-9'-]*")
_FUNCTION_WORDS_TEXT = (
    "a an the of in on at to for by with from into onto and or but nor so is are was were be been being am it its "
    "his her hers their theirs they them he him she we us you your i me my our this that these those as not no "
    "do does did has have had will would can could shall should may might must there here who whom whose which "
    "what when where why how all any some each every one ones")
_FUNCTION_WORDS = frozenset(_FUNCTION_WORDS_TEXT.split())


def _word_forms(w: str) -> set[str]:
    """``w`` and simple singular / base forms (``-s``, ``-es``, ``-ies``, ``-ed``, ``-ing``)."""
    out = {w}
    for suf in ("s", "es", "ed", "ing", "d"):
        if w.endswith(suf) and len(w) > len(suf) + 2:
            out.add(w[: -len(suf)])
    if w.endswith("ies") and len(w) > 4:
        out.add(w[:-3] + "y")
    return out


def query_lemma_keys(text: str, max_n: int = 3) -> set[str]:
    """Lower-cased word n-grams (n ≤ ``max_n``) of ``text`` as WordNet lemma keys; the last word of each
    n-gram also in its simple singular / base forms; single function words are skipped."""
    toks = _WORD.findall(text.lower())
    out: set[str] = set()
    for n in range(1, max_n + 1):
        for i in range(len(toks) - n + 1):
            gram = toks[i : i + n]
            if n == 1 and (gram[0] in _FUNCTION_WORDS or len(gram[0]) < 3):
                continue
            for f in _word_forms(gram[-1]):
                out.add(" ".join([*gram[:-1], f]))
    return out


def ambiguity_labels_for_query(s: Synset, text: str) -> list[str]:
    """``w:<lemma>`` for each lemma key of the query text that is not a lemma of its own synset ``s``."""
    own = {lemma.lower() for lemma in s.lemmas}
    return sorted(f"w:{k}" for k in query_lemma_keys(text) - own)


def ambiguity_labels_for_doc(s: Synset) -> list[str]:
    """``w:<lemma>`` for each lemma of the synset whose definition the document is."""
    return [f"w:{lemma.lower()}" for lemma in s.lemmas]


def build_pairs(
    synsets: Iterable[Synset],
    *,
    query: str = "example",
    split: str | None = None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    ambiguous: bool = False,
) -> list[dict]:
    """Query → definition pairs: one per example sentence (``query="example"``), per lemma
    (``"lemma"``), or both. Each row: ``query``, ``positive``, ``synset``, ``split``, ``labels``
    (with ``ambiguous=True`` the labels also mark ambiguous negatives, see the module docstring)."""
    if query not in ("example", "lemma", "both"):
        raise ValueError(f"query must be 'example', 'lemma' or 'both', got {query!r}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    rows = []
    for s in synsets:
        if not s.definition:
            continue
        sp = split_of(s.key, fractions)
        if split is not None and sp != split:
            continue
        texts: list[str] = []
        if query in ("example", "both"):
            texts.extend(s.examples)
        if query in ("lemma", "both"):
            texts.extend(s.lemmas)
        labels = fn_labels_for_query(s)
        for t in dict.fromkeys(texts):
            lab = labels + ambiguity_labels_for_query(s, t) if ambiguous else labels
            rows.append({"query": t, "positive": s.definition, "synset": s.key, "split": sp, "labels": lab})
    return rows


def build_corpus(synsets: Iterable[Synset], *, ambiguous: bool = False) -> tuple[list[str], list[list[str]]]:
    """All distinct definitions (first-appearance order) and, per definition, the union of the
    false-negative label sets of the synsets that share it (plus their ambiguity labels if ``ambiguous``)."""
    texts: dict[str, list[str]] = {}
    for s in synsets:
        if s.definition:
            texts.setdefault(s.definition, []).extend(fn_labels_for_doc(s))
            if ambiguous:
                texts[s.definition].extend(ambiguity_labels_for_doc(s))
    return list(texts), [sorted(set(v)) for v in texts.values()]


def siblings(synsets: Sequence[Synset]) -> dict[str, list[str]]:
    """Map each synset key to the keys of the synsets that share one of its hypernyms (hard negatives)."""
    children: dict[str, list[str]] = {}
    for s in synsets:
        for h in s.hypernyms:
            children.setdefault(h, []).append(s.key)
    out: dict[str, list[str]] = {}
    for s in synsets:
        sib = {c for h in s.hypernyms for c in children.get(h, ()) if c != s.key}
        out[s.key] = sorted(sib)
    return out
