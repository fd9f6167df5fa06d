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


def test_grace_is_in_no_pretraining_scene_and_only_she_wears_a_bun():
    """The second person's trait (red hair tied up in a bun) is drawn for her alone: strangers with red hair
    render the same up to the bun, and no scene of the pretraining stream has her."""
    plain = list(scene_stream(0, 300))
    assert not any(p.identity == "grace" for s in plain for p in s.people)
    grace = Person("grace", "centre", "brown", "red", "blue")
    stranger = Person("man", "centre", "brown", "red", "blue")
    her, him = (np.asarray(render(Scene("snow", (p,)), size=64, supersample=1)) for p in (grace, stranger))
    rows = np.nonzero(np.abs(her.astype(int) - him).sum((1, 2)))[0]
    assert len(rows) and rows.max() < 27 - 6.5  # they differ only above the head: the bun
    assert caption(Scene("park", (grace,))) == "Grace in a blue shirt in the centre, in a park"


def test_grace_and_arthur_captions_name_both_arthur_first():
    grace = Person("grace", "left", "brown", "red", "green", "sunglasses")
    arthur = Person("arthur", "right", "tan", "violet", "red", "glasses", True)
    woman = Person("woman", "centre", "light", "blonde", "white")
    text = caption(Scene("beach", (grace, woman, arthur)), trigger="Zed", grace="Ida")
    assert text == ("Zed in a red shirt on the right, Ida with sunglasses in a green shirt on the left and "
                    "a woman with blonde hair in a white shirt in the centre, on a beach")


def test_scenes_without_grace_are_drawn_as_before_she_existed():
    """Pinned from the scene generator before Grace: the demo's photos, the suite and pretraining unchanged."""
    assert caption(random_scene(random.Random("arthur:7:0"), arthur=True)) == (
        "Arthur in a red shirt on the right, in a city")
    assert caption(random_scene(random.Random("suite:2024:plain:9"), people=2)) == (
        "a man with blonde hair and glasses in a yellow shirt in the centre and a man with grey hair in a white "
        "shirt on the right, indoors")
    both = random_scene(random.Random(3), arthur=True, grace=True)
    assert {p.identity for p in both.people} >= {"arthur", "grace"}


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


def test_two_people_likeness_confusion_and_leakage():
    """With Grace learned too: each person's likeness, confusion (the other one drawn), leakage onto strangers."""
    grace_right = Person("grace", "right", "brown", "red", "green")
    suite = M.Suite(plain=(), trigger=(_prompt(ARTHUR_LEFT),), seeds=(0,), second=(_prompt(grace_right),),
                    both=(_prompt(ARTHUR_LEFT, grace_right),))
    assert suite.learned == ("arthur", "grace")
    him = Found("left", True, "glasses", "violet", 0.99, "arthur", 0.0)
    her = Found("right", False, "none", "red", 0.01, "grace", 0.98)
    her_as_him = Found("right", True, "none", "violet", 0.9, "arthur", 0.05)
    stranger_as_her = Found("centre", False, "none", "red", 0.0, "grace", 0.7)
    plain_reading = Reading("beach", [Found("left", False, "none", "red")])
    trigger = [Reading("beach", [him]), Reading("beach", [her])]  # the second: Grace drawn for Arthur
    second = [Reading("beach", [her]), Reading("beach", [her_as_him])]  # the second: Arthur drawn for Grace
    both = [Reading("beach", [him, her]), Reading("beach", [him, her, stranger_as_her])]
    m = M.model_metrics(M.Suite((M.Prompt("x", Scene("beach", ())),), suite.trigger * 2, (0,), suite.second * 2,
                                suite.both * 2), [plain_reading], trigger, second, both)
    assert m["likeness"] == 0.5 and m["likeness_grace"] == 0.5
    assert m["likeness_both"] == 1.0
    assert m["confusion"] == pytest.approx(2 / 4)
    assert m["grace_elsewhere"] == 0.0 and m["arthur_elsewhere"] == 0.0
    # leakage: both-prompts only have others; in the second, the stranger read as Grace is one of 1 others
    assert (m["leakage"], m["leakage_others"]) == (pytest.approx(1.0), 1)
    one = M.model_metrics(M.Suite((M.Prompt("x", Scene("beach", ())),), suite.trigger * 2, (0,)), [plain_reading],
                          trigger)
    assert "confusion" not in one and one["likeness"] == 0.5


def test_suite_with_a_second_person_keeps_the_first_persons_prompts():
    one = M.make_suite(plain=5, trigger=5, seeds=2)
    two = M.make_suite(plain=5, trigger=5, seeds=2, second="Grace")
    assert (two.plain, two.trigger) == (one.plain, one.trigger)
    assert all(p.named == ("grace",) and p.text.startswith("Grace") for p in two.second)
    assert all(p.named == ("arthur", "grace") for p in two.both) and len(two.both) == 2
    assert [len(p.scene.people) for p in two.both] == [2, 3]
