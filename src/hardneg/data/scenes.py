r"""Captioned scenes: a built-in, deterministic image–text data set (no download).

Each 64×64 RGB image shows 1–3 non-overlapping shapes (circle, square, triangle, diamond) with a
colour (6), a size (small, large) and a position. Several captions per image come from a small
grammar, and every caption is true of its image by construction:

- object: ``"a small red circle"``, ``"a blue square"`` — some object matches;
- relation: ``"a red circle left of a blue square"`` (``left of``, ``right of``, ``above``,
  ``below``) — two different objects match and the relation holds with a margin of
  `RELATION_MARGIN` pixels between their centres;
- count: ``"one green triangle"``, ``"two red circles"`` — exactly that many objects match (the
  grammar also reads ``"three shapes"``, ``"two red shapes"``; the generator does not write these
  generic captions, which would match a third of all images).

`caption_true` evaluates any caption of the grammar on a scene (so a one-edit swap of a
caption can be checked to be false). Splits: ``train``, ``val``, ``test`` never contain a held-out
(colour, shape) pair (`HELD_OUT`); ``compositional`` scenes each contain at least one — all
words are seen in training, these combinations are not. Generation is seeded per split: the same
seed always gives the same images and captions.

A sample's ``label`` is its *object set*: the multiset of (colour, shape) of its objects. Two
scenes with one label show the same objects (at other sizes or positions); the strategies'
diagnostics use it to report how much negative weight falls on such near-duplicates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.9, 0.1),
    "purple": (0.6, 0.15, 0.8),
    "orange": (1.0, 0.55, 0.0),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES: dict[str, float] = {"small": 6.0, "large": 11.0}
COUNTS = ("one", "two", "three")
RELATIONS = ("left of", "right of", "above", "below")
RELATION_MARGIN = 6.0
IMAGE_SIZE = 64
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("blue", "circle"),
    ("green", "square"),
    ("yellow", "diamond"),
    ("purple", "circle"),
    ("orange", "square"),
)
SPLITS = ("train", "val", "test", "compositional")
_SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2, "compositional": 3}
WORDS = (
    "<pad>", "a", "of", "shape", "shapes", "left", "right", "above", "below",
    *SIZES, *COLOURS, *SHAPES, *(s + "s" for s in SHAPES), *COUNTS,
)


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    size: str
    x: float
    y: float


@dataclass
class Scenes:
    """One split: ``images`` (n, 3, 64, 64) uint8, ``objects`` per scene, ``captions`` per scene
    (lists of strings), ``labels`` (n,) object-set class ids (`object_set_label`)."""

    split: str
    images: torch.Tensor
    objects: list[tuple[SceneObject, ...]]
    captions: list[list[str]]
    labels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def __len__(self) -> int:
        return len(self.objects)

    def float_images(self, idx: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Images as float32 in [0, 1] (all, or rows ``idx``)."""
        x = self.images if idx is None else self.images[idx]
        return x.float().div_(255.0)


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------

_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


def _mask(o: SceneObject) -> np.ndarray:
    r = SIZES[o.size]
    dx, dy = _XX - o.x, _YY - o.y
    if o.shape == "circle":
        return dx * dx + dy * dy <= r * r
    if o.shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    if o.shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.15 * r
    # triangle pointing up: apex at y - r, base at y + 0.8 r
    t = (dy + r) / (1.8 * r)
    return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)


def render(objects: tuple[SceneObject, ...], rng: np.random.Generator) -> np.ndarray:
    """(3, 64, 64) uint8 image of the objects on a dark, slightly noisy background."""
    img = np.full((3, IMAGE_SIZE, IMAGE_SIZE), 0.08, dtype=np.float32)
    img += rng.normal(0.0, 0.02, img.shape).astype(np.float32)
    for o in objects:
        m = _mask(o)
        for c, v in enumerate(COLOURS[o.colour]):
            img[c][m] = v
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# the grammar and its semantics
# ---------------------------------------------------------------------------------------------


def _np(o: SceneObject, with_size: bool) -> str:
    return f"a {o.size} {o.colour} {o.shape}" if with_size else f"a {o.colour} {o.shape}"


def holds(rel: str, a: SceneObject, b: SceneObject) -> bool:
    """Whether ``a <rel> b`` holds (centres at least `RELATION_MARGIN` pixels apart on the axis)."""
    if rel == "left of":
        return a.x < b.x - RELATION_MARGIN
    if rel == "right of":
        return a.x > b.x + RELATION_MARGIN
    if rel == "above":
        return a.y < b.y - RELATION_MARGIN
    if rel == "below":
        return a.y > b.y + RELATION_MARGIN
    raise ValueError(f"unknown relation {rel!r}; expected one of {RELATIONS}")


_NP_RE = r"a(?: (small|large))?(?: (red|green|blue|yellow|purple|orange))?(?: (circle|square|triangle|diamond|shape))"
_REL_RE = re.compile(rf"^{_NP_RE} (left of|right of|above|below) {_NP_RE}$")
_OBJ_RE = re.compile(rf"^{_NP_RE}$")
_COUNT_RE = re.compile(
    r"^(one|two|three)(?: (small|large))?(?: (red|green|blue|yellow|purple|orange))?"
    r" (circle|square|triangle|diamond|shape)(s?)$"
)


def _matches(o: SceneObject, size: str | None, colour: str | None, shape: str | None) -> bool:
    return (
        (size is None or o.size == size)
        and (colour is None or o.colour == colour)
        and (shape in (None, "shape") or o.shape == shape)
    )


def parse_caption(caption: str) -> tuple:
    """The meaning of a caption of the grammar: ``("object", np)``, ``("relation", np, rel, np)``
    or ``("count", n, np)`` with ``np = (size, colour, shape)`` (None where unsaid). A sentence
    outside the grammar raises ``ValueError`` naming it."""
    c = " ".join(caption.lower().split())
    m = _OBJ_RE.match(c)
    if m:
        return ("object", m.groups())
    m = _REL_RE.match(c)
    if m:
        g = m.groups()
        return ("relation", g[0:3], g[3], g[4:7])
    m = _COUNT_RE.match(c)
    if m:
        n, size, colour, shape, plural = m.groups()
        if (n == "one") == (plural == "s"):
            raise ValueError(f"caption outside the scenes grammar (number agreement): {caption!r}")
        return ("count", COUNTS.index(n) + 1, (size, colour, shape))
    raise ValueError(f"caption outside the scenes grammar: {caption!r}")


def holds_parsed(objects: tuple[SceneObject, ...], meaning: tuple) -> bool:
    """Whether a parsed caption (`parse_caption`) is true of the scene."""
    if meaning[0] == "object":
        return any(_matches(o, *meaning[1]) for o in objects)
    if meaning[0] == "relation":
        _, a_np, rel, b_np = meaning
        return any(
            i != j and _matches(a, *a_np) and _matches(b, *b_np) and holds(rel, a, b)
            for i, a in enumerate(objects)
            for j, b in enumerate(objects)
        )
    return sum(_matches(o, *meaning[2]) for o in objects) == meaning[1]


def relation_gap(objects: tuple[SceneObject, ...], meaning: tuple) -> float:
    """The smallest centre distance, on the relation's axis, over the object pairs that make a parsed
    relation caption (`parse_caption`) true of the scene: how far apart the picture shows what the
    caption says. A caption that is not a relation true of the scene raises ``ValueError``."""
    if meaning[0] != "relation":
        raise ValueError(f"not a relation caption: {meaning!r}")
    _, a_np, rel, b_np = meaning
    gaps = [
        abs(a.x - b.x) if rel in ("left of", "right of") else abs(a.y - b.y)
        for i, a in enumerate(objects)
        for j, b in enumerate(objects)
        if i != j and _matches(a, *a_np) and _matches(b, *b_np) and holds(rel, a, b)
    ]
    if not gaps:
        raise ValueError(f"the relation {meaning!r} is not true of the scene")
    return min(gaps)


def caption_true(objects: tuple[SceneObject, ...], caption: str) -> bool:
    """Whether ``caption`` (any sentence of the grammar) is true of the scene. A sentence outside
    the grammar raises ``ValueError`` naming it."""
    return holds_parsed(objects, parse_caption(caption))


def truth_matrix(scenes: list[tuple[SceneObject, ...]], captions: list[str]) -> torch.Tensor:
    """(n_scenes × n_captions) bool: caption j is true of scene i."""
    meanings = [parse_caption(c) for c in captions]
    return torch.tensor([[holds_parsed(o, m) for m in meanings] for o in scenes], dtype=torch.bool)


def true_captions(objects: tuple[SceneObject, ...]) -> list[str]:
    """Every caption of the generator's templates that is true of the scene (deduplicated)."""
    out: list[str] = []
    for o in objects:
        out += [_np(o, True), _np(o, False)]
    for a in objects:
        for b in objects:
            if a is b:
                continue
            for rel in RELATIONS:
                if holds(rel, a, b):
                    out += [f"{_np(a, False)} {rel} {_np(b, False)}", f"{_np(a, True)} {rel} {_np(b, True)}"]
    for o in objects:
        k = sum(p.colour == o.colour and p.shape == o.shape for p in objects)
        out.append(f"{COUNTS[k - 1]} {o.colour} {o.shape}{'s' if k > 1 else ''}")
    seen: list[str] = []
    for c in out:
        if c not in seen:
            seen.append(c)
    return seen


def _pick_captions(objects: tuple[SceneObject, ...], k: int, rng: np.random.Generator) -> list[str]:
    """``k`` captions (fewer if the scene has fewer): relations first when there are any, then
    full object descriptions, then the rest, each group in a seeded order."""
    allc = true_captions(objects)
    rel = [c for c in allc if any(f" {r} " in c for r in RELATIONS)]
    full = [c for c in allc if c not in rel and _OBJ_RE.match(c) and len(c.split()) == 4]
    rest = [c for c in allc if c not in rel and c not in full]
    picked: list[str] = []
    for group, quota in ((rel, max(1, k // 2)), (full, max(1, k // 3)), (rest, k)):
        order = rng.permutation(len(group))
        for i in order[: max(0, min(quota, k - len(picked)))]:
            picked.append(group[int(i)])
    for group in (rel, full, rest):  # fill up if a group was short
        for c in group:
            if len(picked) >= k:
                break
            if c not in picked:
                picked.append(c)
    return picked[:k]


def _place(rng: np.random.Generator, split: str) -> tuple[SceneObject, ...]:
    held = set(HELD_OUT)
    n = int(rng.integers(1, 4))
    objs: list[SceneObject] = []
    for i in range(n):
        while True:
            colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            want_held = split == "compositional" and i == 0
            if ((colour, shape) in held) == want_held or (split == "compositional" and i > 0):
                break
        size = list(SIZES)[int(rng.integers(len(SIZES)))]
        r = SIZES[size]
        for _ in range(200):
            x, y = rng.uniform(r + 2, IMAGE_SIZE - r - 2, size=2)
            if all((x - o.x) ** 2 + (y - o.y) ** 2 > (r + SIZES[o.size] + 3) ** 2 for o in objs):
                objs.append(SceneObject(colour, shape, size, float(x), float(y)))
                break
    return tuple(objs)


def object_set_label(objects: tuple[SceneObject, ...]) -> int:
    """Class id of the scene's multiset of (colour, shape): a base-25 number of the sorted pairs."""
    codes = sorted(1 + list(COLOURS).index(o.colour) * len(SHAPES) + SHAPES.index(o.shape) for o in objects)
    v = 0
    for c in codes:
        v = v * 25 + c
    return v


def make_scenes(split: str, n: int, seed: int = 0, captions_per_image: int = 5) -> Scenes:
    """``n`` scenes of ``split`` (one of `SPLITS`), deterministic in ``seed``."""
    if split not in SPLITS:
        raise ValueError(f"scenes split must be one of {SPLITS}, got {split!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"scenes: number of images must be a positive int, got {n!r}")
    if isinstance(captions_per_image, bool) or not isinstance(captions_per_image, int) or captions_per_image < 1:
        raise ValueError(f"scenes: captions_per_image must be a positive int, got {captions_per_image!r}")
    rng = np.random.default_rng([seed, _SPLIT_OFFSET[split]])
    objects, images, captions = [], [], []
    for _ in range(n):
        objs = _place(rng, split)
        objects.append(objs)
        images.append(render(objs, rng))
        captions.append(_pick_captions(objs, captions_per_image, rng))
    labels = torch.tensor([object_set_label(o) for o in objects], dtype=torch.long)
    return Scenes(split, torch.from_numpy(np.stack(images)), objects, captions, labels)


_REVERSED = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_RELATION_PHRASE = re.compile(rf"\b({'|'.join(RELATIONS)})\b")


def reflect(objects: tuple[SceneObject, ...]) -> tuple[SceneObject, ...]:
    """The scene's objects with their centres reflected through the image centre (x, y → 63 − x,
    63 − y), each still drawn upright: every ``left of`` becomes ``right of`` and every ``above``
    ``below`` (`reverse_relations`), while what is shown — colours, shapes, sizes, counts — stays."""
    c = IMAGE_SIZE - 1  # pixel centres run 0 … 63, so 63 − x mirrors a centre exactly
    return tuple(SceneObject(o.colour, o.shape, o.size, c - o.x, c - o.y) for o in objects)


def reverse_relations(caption: str) -> str:
    """``caption`` with each relation phrase replaced by its converse (left of ↔ right of, above ↔
    below): true of `reflect` (scene) exactly when ``caption`` is true of the scene. Object and
    count captions are returned unchanged."""
    return _RELATION_PHRASE.sub(lambda m: _REVERSED[m.group(1)], caption)


def with_relation_twins(scenes: Scenes, seed: int = 0) -> Scenes:
    """``scenes`` followed by their relation twins: row ``i + n`` shows the objects of row ``i``
    reflected (`reflect`, rendered afresh with its own background noise, seeded by ``seed``) and
    carries row ``i``'s captions with their relations reversed (`reverse_relations`), in the same
    order, so caption ``p`` of the twin is caption ``p`` of the original where it names no relation
    and its relation swap where it does. A batch of scenes and their twins holds, for every relation
    caption, the one caption that differs from it only in the relation: a negative in-batch
    sampling almost never draws (two scenes with the same two objects are rare)."""
    rng = np.random.default_rng([seed, len(SPLITS)])  # a stream no split's generation uses
    twins = [reflect(o) for o in scenes.objects]
    images = np.stack([render(o, rng) for o in twins])
    captions = [[reverse_relations(c) for c in caps] for caps in scenes.captions]
    return Scenes(
        scenes.split,
        torch.cat([scenes.images, torch.from_numpy(images)]),
        [*scenes.objects, *twins],
        [*scenes.captions, *captions],
        torch.cat([scenes.labels, scenes.labels]),
    )


def tokenize(captions: list[str], max_len: int = 12) -> torch.Tensor:
    """(n, max_len) word ids over `WORDS` ("left of" is two words), padded with 0. A word
    outside the vocabulary raises ``ValueError`` naming it."""
    index = {w: i for i, w in enumerate(WORDS)}
    out = torch.zeros(len(captions), max_len, dtype=torch.long)
    for r, c in enumerate(captions):
        words = c.lower().split()
        if len(words) > max_len:
            raise ValueError(f"caption longer than {max_len} words: {c!r}")
        for j, w in enumerate(words):
            if w not in index:
                raise ValueError(f"word {w!r} of caption {c!r} is not in the scenes vocabulary")
            out[r, j] = index[w]
    return out
