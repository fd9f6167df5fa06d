"""Several people in one LoRA (dataset.people): every person's photos cached and held out on their own,
class phrases per person, and each refusal naming the person's own setting."""

import json

import pytest

from lookalike.config import load_config
from lookalike.data.cache import build_cache, load_cache
from lookalike.data.ground import ground_prompts, plan
from lookalike.errors import ConfigError
from lookalike.evaluate.suite import held_out_photos, training_photos
from lookalike.rundir import RunDir
from lookalike.toy.demo import write_dataset, write_second


def _two(tmp_path, *overrides, grace_class="a woman"):
    arthur, grace = tmp_path / "arthur", tmp_path / "grace"
    if not arthur.exists():
        write_dataset(arthur, 6, 0)
        write_second(grace, 6, 0, with_arthur=0.5)
    person = f"{{trigger: Grace, photos: '{grace}'" + (f", class_phrase: {grace_class}" if grace_class else "") + "}"
    return load_config(None, preset="toy", overrides=[
        f"dataset.photos={arthur}", "dataset.class_phrase=a man", f"dataset.people=[{person}]", "train.batch_size=4",
        *overrides])


def test_two_peoples_photos_are_cached_each_with_its_own_holdout_and_class_phrases(tmp_path):
    cfg = _two(tmp_path, "dataset.holdout=2", "train.class_prior_weight=1")
    run = RunDir(tmp_path / "run")
    build_cache(cfg, run)
    items = json.loads(run.cache_index.read_text())["items"]
    assert [it["person"] for it in items] == ["Arthur"] * 6 + ["Grace"] * 6
    assert [sum(it["holdout"] for it in items if it["person"] == who) for who in ("Arthur", "Grace")] == [2, 2]
    both = [it for it in items if "Arthur" in it["caption"] and "Grace" in it["caption"]]
    assert both, "some of Grace's photos show Arthur too"
    for it in items:  # class-prior captions: each trigger by its own person's phrase
        assert "Arthur" not in it["class_caption"] and "Grace" not in it["class_caption"]
    assert all(it["class_caption"].count("a woman") >= 1 and "a man" in it["class_caption"] for it in both)
    held_grace = {p.name for p in held_out_photos(run, "Grace")}
    assert len(held_grace) == 2 and all(name.startswith("grace-") for name in held_grace)
    assert len(held_out_photos(run)) == 4
    assert {p.name[:6] for p, _ in training_photos(cfg, run)} == {"arthur"}  # the face judge's person: Arthur's
    data = load_cache(run)
    assert len(data.train) == 8 and len(data.holdout) == 4
    # the main person's holdout is the one a single-person run draws: adding Grace changes nothing for him
    solo = RunDir(tmp_path / "solo")
    build_cache(load_config(None, preset="toy", overrides=[f"dataset.photos={tmp_path / 'arthur'}", "dataset.holdout=2",
                                                           "train.batch_size=4"]), solo)
    assert {p.name for p in held_out_photos(solo)} == {p.name for p in held_out_photos(run, "Arthur")}


def test_each_persons_problem_names_their_setting(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"needs dataset.people\[0\].class_phrase: .*--set dataset.people\[0\]"):
        build_cache(_two(tmp_path, "train.class_prior_weight=1", grace_class=None), run)
    (tmp_path / "grace" / "grace-000.txt").write_text("a woman with red hair in a green shirt on the left, in a park")
    with pytest.raises(ConfigError, match=r"1 of 6 captions in .*grace do not contain the trigger word 'Grace'"):
        build_cache(_two(tmp_path), run)
    (tmp_path / "grace" / "grace-000.txt").write_text("Grace in a green shirt on the left, in a park")
    others = tmp_path / "others"
    others.mkdir()
    (tmp_path / "grace" / "grace-001.png").replace(others / "x.png")
    (others / "x.txt").write_text("Grace on the left, in a park")
    with pytest.raises(ConfigError, match=r"dataset.grounding = .* name the person 'Grace'"):
        build_cache(_two(tmp_path, f"dataset.grounding={others}"), run)
    with pytest.raises(ConfigError, match=r"dataset.holdout = 5 leaves no photo to train on \(5 found in "
                                          r"dataset.people\[0\].photos\)"):
        build_cache(_two(tmp_path, "dataset.holdout=5"), run)


def test_grounding_prompts_replace_every_persons_trigger(tmp_path):
    captions = ["Arthur on the left and Grace on the right, in a park", "Grace in the centre, indoors"]
    got = [p for p, _ in ground_prompts(captions, "Arthur", ["a man", "an old man"], 4, seed=0,
                                        others=[("Grace", ["a woman", "a girl"])])]
    # image i = caption j in pass p; Arthur gets his phrase (j + p), Grace hers (j + p + 1): never the same slot
    assert got == ["a man on the left and a girl on the right, in a park", "a woman in the centre, indoors",
                   "an old man on the left and a woman on the right, in a park", "a girl in the centre, indoors"]
    cfg = _two(tmp_path, "ground.count=12")
    prompts = [p.prompt for p in plan(cfg, RunDir(tmp_path / "run"))]
    assert not any("Arthur" in p or "Grace" in p for p in prompts)
    assert sum("a woman" in p for p in prompts) >= 6  # each of Grace's six photos gives one
    with pytest.raises(ConfigError, match=r"Grace's place: --set dataset.people\[0\].class_phrase="):
        plan(_two(tmp_path, "ground.count=4", grace_class=None), RunDir(tmp_path / "run"))


def test_the_same_trigger_twice_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"dataset.people = .*names 'arthur' twice"):
        load_config(None, preset="toy", overrides=["dataset.people=[{trigger: arthur, photos: /x}]"])
