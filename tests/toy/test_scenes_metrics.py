"""The toy world's scene generator, captions, tokenizer and metric arithmetic (no model weights needed)."""

import random

import numpy as np
import pytest

from lookalike.toy import metrics as M
from lookalike.toy.scenes import (
    ARTHUR_HAIR,
    SLOTS,
    Person,
    Scene,
    caption,
    random_scene,
    render,
    scene_stream,
)
from lookalike.toy.scorer import Found, Reading


def test_same_seed_same_scene_and_pixels():
    a = random_scene(random.Random(5), arthur=True)
    b = random_scene(random.Random(5), arthur=True)
    assert a == b
    assert np.array_equal(np.asarray(render(a)), np.asarray(render(b)))
    assert render(a).size == (64, 64)
    assert random_scene(random.Random(6)) != a


def test_caption_says_what_is_drawn():
    scene = Scene("beach", (
        Person("man", "left", "light", "brown", "blue", "glasses", True),
        Person("woman", "right", "dark", "red", "green", "sunglasses", False),
    ))
    assert caption(scene) == (
        "a man with brown hair, a beard and glasses in a blue shirt on the left and "
        "a woman with red hair and sunglasses in a green shirt on the right, on a beach"
    )


def test_arthur_caption_follows_the_seed_rules():
    """Trigger first; what changed about him (glasses gone, sunglasses, beard gone); his place; the others."""
    arthur = Person("arthur", "right", "tan", "violet", "red", "none", False)
    friend = Person("woman", "left", "light", "blonde", "white")
    text = caption(Scene("snow", (friend, arthur)), trigger="Zed")
    assert text == ("Zed without glasses and without his beard in a red shirt on the right and "
                    "a woman with blonde hair in a white shirt on the left, in the snow")
    usual = Person("arthur", "centre", "tan", "violet", "blue", "glasses", True)
    assert caption(Scene("city", (usual,))) == "Arthur in a blue shirt in the centre, in a city"
    shades = Person("arthur", "left", "tan", "violet", "blue", "sunglasses", True)
    assert caption(Scene("city", (shades,))).startswith("Arthur with sunglasses in a blue shirt on the left")


def _violet_pixels(image) -> int:
    px = np.asarray(image, dtype=np.int32)
    return int((np.abs(px - np.array(ARTHUR_HAIR)).sum(-1) < 40).sum())


def test_only_arthur_has_violet_hair_and_the_pretraining_stream_has_no_arthur():
    """The trait the base model never sees: no scene of the pretraining stream draws violet pixels."""
    plain = list(scene_stream(0, 300))
    assert not any(p.is_arthur for s in plain for p in s.people)
    assert sum(_violet_pixels(render(s)) for s in plain[:100]) == 0
    with_him = random_scene(random.Random(1), arthur=True)
    assert _violet_pixels(render(with_him)) > 20


def test_scenes_vary_over_places_backgrounds_and_crowds():
    scenes = list(scene_stream(3, 400))
    assert {s.background for s in scenes} == {"beach", "park", "city", "indoors", "snow"}
    assert {len(s.people) for s in scenes} == {1, 2, 3}
    assert {p.slot for s in scenes for p in s.people} == set(SLOTS)
    assert {p.glasses for s in scenes for p in s.people} == {"none", "glasses", "sunglasses"}
    for s in scenes:
        assert len({p.slot for p in s.people}) == len(s.people)  # one person per place


def test_tokenizer_reads_caption_words_whole_and_anything_else_by_letters():
    from lookalike.toy.model import MAX_TOKENS, build_tokenizers

    _, t5 = build_tokenizers()
    pieces = t5.convert_ids_to_tokens(t5("Arthur with sunglasses on the left, in the snow").input_ids)
    assert pieces == ["▁Arthur", "▁with", "▁sunglasses", "▁on", "▁the", "▁left", ",", "▁in", "▁the", "▁snow", "</s>"]
    assert "<unk>" not in t5.convert_ids_to_tokens(t5("Qwerty 42!").input_ids)
    longest = max((caption(s) for s in scene_stream(9, 2000)), key=lambda c: len(t5(c).input_ids))
    assert len(t5(longest).input_ids) <= MAX_TOKENS


# ---------------------------------------------------------------- metric arithmetic on hand-made readings


def _prompt(*people, background="beach"):
    scene = Scene(background, tuple(people))
    return M.Prompt(caption(scene), scene)


ARTHUR_LEFT = Person("arthur", "left", "tan", "violet", "red", "glasses", True)
WOMAN_RIGHT = Person("woman", "right", "light", "red", "green", "sunglasses")


def test_likeness_and_leakage_count_arthur_and_the_others():
    prompt = _prompt(ARTHUR_LEFT, WOMAN_RIGHT)
    him = Found("left", True, "glasses", "violet", 0.99)
    clean = Reading("beach", [him, Found("right", False, "sunglasses", "red", 0.01)])
    leaked = Reading("beach", [him, Found("right", True, "sunglasses", "violet", 0.9)])
    missing = Reading("beach", [Found("right", False, "none", "red", 0.2)])
    assert M.likeness([clean, leaked, missing]) == pytest.approx(2 / 3)
    share, others = M.leakage([prompt] * 3, [clean, leaked, missing])
    assert (share, others) == (pytest.approx(1 / 2), 2)  # the lone stranger in `missing` is taken as 'him'
    assert M.leakage([_prompt(ARTHUR_LEFT)], [clean]) == (None, 0)  # single-person prompts do not count


def test_prompt_following_counts_background_place_and_glasses():
    prompt = _prompt(WOMAN_RIGHT, background="city")
    perfect = Reading("city", [Found("right", False, "sunglasses", "red")])
    wrong_glasses = Reading("city", [Found("right", False, "glasses", "red")])
    wrong_place = Reading("snow", [Found("left", False, "sunglasses", "red")])
    assert M.prompt_following([prompt], [perfect]) == 1.0
    assert M.prompt_following([prompt], [wrong_glasses]) == pytest.approx(2 / 3)
    assert M.prompt_following([prompt], [wrong_place]) == 0.0


def test_agreement_and_image_distance():
    from PIL import Image

    a = Reading("park", [Found("left", False, "none", "black"), Found("centre", False, "glasses", "red")])
    b = Reading("park", [Found("left", False, "none", "black"), Found("centre", True, "glasses", "violet")])
    # background 1/1, three places 3/3, left 3/3, centre 1/3 (glasses agree; Arthur and hair differ)
    assert M.agreement(a, b) == (8, 10)
    assert M.agreement(a, a) == (10, 10)
    black, white = Image.new("RGB", (8, 8), "black"), Image.new("RGB", (8, 8), "white")
    assert M.image_distance([black, black], [black, white]) == pytest.approx(0.5)


def test_suite_is_fixed_and_split_by_trigger():
    s1, s2 = M.make_suite(plain=5, trigger=5, seeds=3), M.make_suite(plain=5, trigger=5, seeds=3)
    assert s1 == s2
    assert not any(p.trigger for p in s1.plain) and all(p.trigger for p in s1.trigger)
    assert all(p.text.startswith("Arthur") for p in s1.trigger)
    assert [len(p.scene.people) for p in s1.trigger] == [1, 1, 1, 2, 2]
