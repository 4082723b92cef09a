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
    tokenize,
    true_captions,
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
