"""Captioned scenes and one-edit caption swaps, against hand-worked examples."""

from __future__ import annotations

import pytest
import torch

from hardneg.data.scenes import (
    COLOURS,
    COUNTS,
    HELD_OUT,
    SHAPES,
    SIZES,
    SceneObject,
    caption_true,
    make_scenes,
    object_set_label,
    parse_caption,
    reflect,
    relation_gap,
    reverse_relations,
    tokenize,
    true_captions,
    with_relation_twins,
)
from hardneg.negatives.caption_edits import EditVocabulary, one_edit_swaps, swap_count, swap_relation, swap_shape

VOCAB = EditVocabulary(colours=tuple(COLOURS), shapes=SHAPES, sizes=tuple(SIZES), counts=COUNTS)
RED_CIRCLE = SceneObject("red", "circle", "small", 10.0, 30.0)
BLUE_SQUARE = SceneObject("blue", "square", "large", 40.0, 32.0)


def test_one_edit_swaps_by_kind():
    sw = one_edit_swaps("a small red circle left of a blue square", vocab=VOCAB)
    first = ["a small green circle left of a blue square", "a small blue circle left of a blue square"]
    assert sw["colour"][:2] == first
    assert len(sw["colour"]) == 10  # 5 other colours for each of the two colour words
    assert len(sw["shape"]) == 6 and "a small red circle left of a blue diamond" in sw["shape"]
    assert sw["size"] == ["a large red circle left of a blue square"]
    assert sw["relation"] == ["a small red circle right of a blue square"]
    assert sw["count"] == []


def test_count_swap_keeps_number_agreement():
    assert swap_count("two red shapes", VOCAB) == ["one red shape", "three red shapes"]
    assert swap_count("one green triangle", VOCAB) == ["two green triangles", "three green triangles"]
    assert swap_shape("two red circles", VOCAB)[0] == "two red squares"
    assert swap_relation("a red circle above a blue square") == ["a red circle below a blue square"]


def test_caption_semantics_on_a_hand_built_scene():
    scene = (RED_CIRCLE, BLUE_SQUARE)
    assert caption_true(scene, "a red circle left of a blue square")
    assert not caption_true(scene, "a red circle right of a blue square")
    assert not caption_true(scene, "a red circle above a blue square")  # |dy| = 2 < margin 6
    assert caption_true(scene, "a large blue square")
    assert not caption_true(scene, "a small blue square")
    assert caption_true(scene, "two shapes") and not caption_true(scene, "three shapes")
    assert caption_true(scene, "one red shape") and not caption_true(scene, "two red shapes")
    with pytest.raises(ValueError, match="grammar"):
        caption_true(scene, "a red dog")
    caps = true_captions(scene)
    assert "a small red circle left of a large blue square" in caps and "one red circle" in caps
    assert all(caption_true(scene, c) for c in caps)


def test_scenes_are_deterministic_true_and_split_by_held_out_pairs():
    a, b = make_scenes("train", 40, seed=3), make_scenes("train", 40, seed=3)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert a.images.shape == (40, 3, 64, 64) and a.images.dtype == torch.uint8
    assert all(caption_true(o, c) for o, cs in zip(a.objects, a.captions) for c in cs)
    held = set(HELD_OUT)
    assert not any((o.colour, o.shape) in held for objs in a.objects for o in objs)
    comp = make_scenes("compositional", 40, seed=3)
    assert all(any((o.colour, o.shape) in held for o in objs) for objs in comp.objects)
    assert not torch.equal(make_scenes("test", 40, seed=3).images, a.images)
    # the red circle is colour 0, shape 0 -> code 1; the blue square colour 2, shape 1 -> 2*4+1+1 = 10
    assert object_set_label((BLUE_SQUARE, RED_CIRCLE)) == 1 * 25 + 10


def test_rendered_pixels_have_the_objects_colour():
    s = make_scenes("train", 5, seed=0)
    for img, objs in zip(s.images, s.objects):
        for o in objs:
            px = img[:, int(round(o.y)), int(round(o.x))].float() / 255
            assert torch.allclose(px, torch.tensor(COLOURS[o.colour]), atol=0.01)


def test_tokenize():
    t = tokenize(["a red circle left of a blue square"], max_len=10)
    assert t.shape == (1, 10) and int((t[0] > 0).sum()) == 8 and int(t[0, 8]) == 0
    with pytest.raises(ValueError, match="'dog'"):
        tokenize(["a red dog"])


def test_reflect_reverses_every_relation_on_a_hand_built_scene():
    twin = reflect((RED_CIRCLE, BLUE_SQUARE))
    assert [(o.x, o.y) for o in twin] == [(53.0, 33.0), (23.0, 31.0)]  # 63 - x, 63 - y by hand
    assert (twin[0].colour, twin[0].shape, twin[0].size) == ("red", "circle", "small")
    assert caption_true(twin, "a red circle right of a blue square")
    assert not caption_true(twin, "a red circle left of a blue square")
    assert reverse_relations("a small red circle left of a large blue square") == (
        "a small red circle right of a large blue square"
    )
    assert reverse_relations("a red circle below a blue square") == "a red circle above a blue square"
    assert reverse_relations("two red circles") == "two red circles"


def test_relation_twins_carry_the_reversed_captions_and_the_reflected_objects():
    sc = make_scenes("train", 40, seed=3)
    both = with_relation_twins(sc, seed=3)
    n = len(sc)
    assert len(both) == 2 * n and torch.equal(both.images[:n], sc.images) and torch.equal(both.labels[n:], sc.labels)
    n_relation = 0
    for i in range(n):
        twin = both.objects[n + i]
        for c, tc in zip(sc.captions[i], both.captions[n + i], strict=True):
            assert caption_true(twin, tc)
            if " of " in c or " above " in c or " below " in c:
                n_relation += 1
                assert tc != c
            else:
                assert tc == c  # objects and counts are the same in the twin
        for o in twin:  # the twin's pixels show each object's colour at its reflected centre
            rgb = both.images[n + i, :, round(o.y), round(o.x)].float() / 255
            assert torch.allclose(rgb, torch.tensor(COLOURS[o.colour]), atol=0.01)
    assert n_relation > 10
    assert torch.equal(with_relation_twins(sc, seed=3).images, both.images)  # deterministic in the seed


def test_relation_gap_is_the_closest_true_pair_on_the_relations_axis():
    # two red circles left of the square, 30 and 12 pixels away on x; the square sits 2 pixels lower
    near = SceneObject("red", "circle", "small", 28.0, 31.0)
    scene = (RED_CIRCLE, near, BLUE_SQUARE)
    assert relation_gap(scene, parse_caption("a red circle left of a blue square")) == pytest.approx(12.0)
    assert relation_gap(scene, parse_caption("a blue square right of a small red circle")) == pytest.approx(12.0)
    with pytest.raises(ValueError, match="not true"):
        relation_gap(scene, parse_caption("a red circle above a blue square"))  # |dy| < margin
    with pytest.raises(ValueError, match="not a relation"):
        relation_gap(scene, parse_caption("a blue square"))
