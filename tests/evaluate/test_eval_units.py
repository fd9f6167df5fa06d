"""Pure pieces of evaluation: the recommendation, the suites, checkpoint discovery, the SVG plots."""

import pytest

from lookalike.config import load_config
from lookalike.errors import ConfigError, LookalikeError
from lookalike.evaluate.recommend import recommend, violations
from lookalike.evaluate.run import find_checkpoints, markdown
from lookalike.evaluate.suite import gallery_suite, toy_suite
from lookalike.evaluate.svg import Series, line_plot, nice_ticks
from lookalike.rundir import RunDir


def row(step, likeness, leakage=0.0, elsewhere=0.0, preservation=1.0):
    return {"step": step, "name": f"step-{step:06d}",
            "scores": {"likeness": likeness, "leakage": leakage, "elsewhere": elsewhere, "preservation": preservation}}


BOUNDS = load_config(None, overrides=["eval.max_leakage=0.2", "eval.max_elsewhere=0.3",
                                      "eval.min_preservation=0.8"]).eval


def test_recommend_takes_the_best_likeness_within_the_bounds():
    rows = [row(100, 0.4), row(200, 0.7), row(300, 0.9, leakage=0.5), row(400, 0.95, preservation=0.6)]
    rec = recommend(rows, BOUNDS)
    assert rec["step"] == 200 and rec["name"] == "step-000200"
    assert set(rec["rejected"]) == {"step-000300", "step-000400"}
    assert "leakage 0.500 > eval.max_leakage 0.2" in rec["rejected"]["step-000300"]
    assert "preservation 0.600 < eval.min_preservation 0.8" in rec["rejected"]["step-000400"]
    assert "best likeness (0.700)" in rec["reason"]


def test_recommend_prefers_the_earlier_step_on_a_tie_and_ignores_what_was_not_counted():
    rec = recommend([row(100, 0.5, leakage=None), row(200, 0.5)], BOUNDS)
    assert rec["step"] == 100
    assert "not counted, so not checked: leakage" in rec["reason"]


def test_recommend_names_the_broken_bound_when_nothing_qualifies():
    rec = recommend([row(100, 0.5, elsewhere=0.6), row(200, 0.8, elsewhere=0.5)], BOUNDS)
    assert rec["step"] is None
    assert "step-000200" in rec["reason"] and "eval.max_elsewhere" in rec["reason"]
    assert violations(row(1, 0.1, elsewhere=0.31)["scores"], BOUNDS) == ["elsewhere 0.310 > eval.max_elsewhere 0.3"]


def test_bounds_are_checked_at_load():
    with pytest.raises(ConfigError, match="eval.max_leakage"):
        load_config(None, overrides=["eval.max_leakage=1.5"])


def test_gallery_suite_fills_the_trigger_and_always_has_the_empty_prompt():
    cfg = load_config(None, overrides=["dataset.trigger=Zoe", "eval.seeds=[3, 5]"])
    suite = gallery_suite(cfg)
    assert [g for g, _ in suite.groups] == ["trigger", "group", "plain", "empty"]
    assert "Zoe as a wizard" in suite.prompts("trigger") and suite.prompts("empty") == ("",)
    assert all("Zoe" not in p for p in suite.prompts("plain"))
    assert suite.seeds == (3, 5) and suite.images == len(suite.texts) * 2
    other = gallery_suite(load_config(None, overrides=["dataset.trigger=Zoe", "eval.seeds=[3, 6]"]))
    assert other.fingerprint() != suite.fingerprint()


def test_toy_suite_is_the_demos_suite_with_the_eval_seeds():
    from lookalike.toy.metrics import make_suite

    cfg = load_config(None, preset="toy", overrides=["eval.toy_plain=3", "eval.toy_trigger=2", "eval.seeds=[0, 1]"])
    toy, suite = toy_suite(cfg)
    assert toy == make_suite(plain=3, trigger=2, seeds=2)
    assert suite.prompts("trigger") == tuple(p.text for p in toy.trigger)
    assert suite.prompts("empty") == ("",) and suite.images == 6 * 2


def test_toy_suite_and_headline_with_a_second_person():
    """dataset.people's first person is the toy world's Grace: her prompts and both are drawn, and the
    headline's likeness is the worse of the two, confusion counting as drawn elsewhere."""
    from lookalike.evaluate.judges import ToyJudge

    cfg = load_config(None, preset="toy", overrides=["eval.toy_plain=3", "eval.toy_trigger=2", "eval.seeds=[0]",
                                                     "dataset.people=[{trigger: Ida, photos: /x}]"])
    toy, suite = toy_suite(cfg)
    assert [name for name, _ in suite.groups] == ["trigger", "second", "both", "plain", "empty"]
    assert all(p.startswith("Ida") for p in suite.prompts("second")) and len(suite.prompts("both")) == 1
    assert all("Arthur" in p and "Ida" in p for p in suite.prompts("both"))
    metrics = {"likeness": 0.9, "leakage": 0.0, "arthur_elsewhere": 0.0, "confusion": 0.1,
               "people": {"Ida": {"likeness": 0.7, "both": 0.5, "elsewhere": 0.05}}}
    assert ToyJudge.headline(metrics, {"agreement": 0.95}) == {
        "likeness": 0.7, "leakage": 0.0, "elsewhere": 0.1, "preservation": 0.95, "copy": None}
    # the judge's metrics read every group: Arthur found in both trigger images, Grace in one of two, and
    # Grace drawn once where only Arthur was asked (confusion 1 of the 4 one-person images)
    from lookalike.toy.scorer import Found, Reading

    judge = ToyJudge(cfg, scorer=object())
    him, her = Found("left", True, "none", "violet", 0.9, "arthur", 0.0), Found("right", False, "none", "red", 0.0, "grace", 0.9)
    readings = {"trigger": [Reading("park", [him]), Reading("park", [him, her])],
                "second": [Reading("park", [her]), Reading("park", [])], "both": [Reading("park", [him, her])],
                "plain": [Reading("park", [])] * 3, "empty": [Reading("park", [her])]}
    m = judge.metrics(readings)
    assert (m["likeness"], m["likeness_grace"], m["likeness_both"], m["confusion"]) == (1.0, 0.5, 1.0, 0.25)
    assert m["empty"] == 0.0 and m["empty_grace"] == 1.0
    assert m["people"] == {"Ida": {"likeness": 0.5, "both": 1.0, "elsewhere": 0.0}}
    assert judge.headline(m, None)["likeness"] == 0.5 and judge.headline(m, None)["elsewhere"] == 0.25
    one = {"likeness": 0.9, "leakage": 0.0, "arthur_elsewhere": 0.02}
    assert ToyJudge.headline(one, None)["likeness"] == 0.9 and ToyJudge.headline(one, None)["elsewhere"] == 0.02


def test_find_checkpoints_reads_the_final_step_from_its_header(tmp_path):
    import torch
    from safetensors.torch import save_file

    from lookalike.export import header

    rd = RunDir(tmp_path)
    with pytest.raises(LookalikeError, match=f"train first: `lookalike train {tmp_path}`"):
        find_checkpoints(rd)
    (tmp_path / "train" / "checkpoints").mkdir(parents=True)
    meta = header("Arthur", 4, 2.0, ["to_q"], "lookalike:toy", 30)
    for name in ("checkpoints/step-000010.safetensors", "checkpoints/step-000020.safetensors", "lora.safetensors"):
        save_file({"x": torch.zeros(1)}, str(tmp_path / "train" / name), metadata=meta)
    found = find_checkpoints(rd)
    assert [(c.step, c.path.name) for c in found] == [(10, "step-000010.safetensors"), (20, "step-000020.safetensors"),
                                                      (30, "lora.safetensors")]
    assert found[-1].name == "step-000030"
    assert [c.step for c in find_checkpoints(rd, [20])] == [20]
    with pytest.raises(ConfigError, match="--step 25: .*saved steps: 10, 20, 30"):
        find_checkpoints(rd, [25])


def test_markdown_table_has_base_every_checkpoint_and_the_pick():
    scores = {"likeness": 0.0, "leakage": None, "elsewhere": 0.0, "preservation": None}
    result = {"base": {"scores": scores}, "checkpoints": [row(100, 0.5)],
              "recommendation": {"name": "step-000100", "reason": "because"}}
    text = markdown(result)
    assert "| base | 0.000 | n/a | 0.000 | n/a |" in text and "| step-000100 | 0.500 |" in text
    assert text.endswith("recommended: step-000100 (because)")


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    ticks = nice_ticks(3, 497)
    assert ticks[0] <= 3 and ticks[-1] >= 497 and all(t % 100 == 0 for t in ticks)


def test_line_plot_draws_a_line_per_series_and_the_bounds():
    svg = line_plot([Series("LoRA", [(25, 0.1), (50, 0.6)]), Series("empty", [])], title="likeness <&>",
                    y_range=(0, 1), hlines=[(0.8, "bound")])
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 2 and "likeness &lt;&amp;&gt;" in svg
    assert "stroke-dasharray" in svg  # the bound
    assert "no data" in line_plot([Series("x", [])], title="t")


def test_face_judge_turns_face_readings_into_the_headline_numbers():
    """The real world's judge on hand-made dlib readings (no detector needed): the same four numbers."""
    import numpy as np
    from PIL import Image

    from lookalike.evaluate.faces import PersonModel, Reading, calibrate, judge_faces
    from lookalike.evaluate.judges import FaceJudge
    from lookalike.ingest.faces import Face

    me = np.zeros(128)
    person = PersonModel(np.stack([me, me + 0.01]), ("a.jpg", "b.jpg"), calibrate(np.stack([me, me + 0.01])))

    def image(*faces):  # faces as (x, distance from the person)
        return judge_faces([Face((x, 10, x + 20, 30), 1.0, me + d / np.sqrt(128)) for x, d in faces], person, 64, 64)

    judge = FaceJudge(load_config(None), person)
    base = {"trigger": [image(), image()], "group": [image((0, 1.0), (30, 1.0))], "plain": [image((0, 1.0)), image()],
            "empty": [image()]}
    tuned = {"trigger": [image((0, 0.1)), image((0, 0.9))], "group": [image((0, 0.1), (30, 0.2))],
             "plain": [image((0, 0.1)), image()], "empty": [image((5, 0.1))]}
    pictures = {g: [Image.new("RGB", (64, 64))] * len(r) for g, r in base.items()}
    metrics = judge.metrics(tuned)
    kept = judge.preservation(pictures, base, pictures, tuned)
    assert judge.headline(metrics, kept) == {"likeness": 0.5, "leakage": 1.0, "elsewhere": 0.5, "preservation": 0.75,
                                             "copy": None}  # no held-out photos: not counted
    assert metrics["empty"] == 1.0 and metrics["trigger_faces"]["images_with_faces"] == 2
    assert kept["face_count_agreement"] == 1.0 and kept["person_agreement"] == 0.5
    assert [p["is_person"] for p in judge.people(tuned["group"][0])] == [True, True]
    assert judge.found(tuned["empty"][0]) and not judge.found(base["empty"][0])
    assert isinstance(base["trigger"][0], Reading)


def test_face_judge_with_two_people_reports_each_and_their_confusion():
    """Two learned people (dataset.people) on hand-made dlib readings: each face is the person it is nearest
    (relative to their threshold), never both; each one's likeness on their own prompts, both found on the
    pair prompts, and one drawn where the other was asked for (confusion) in the headline."""
    import numpy as np

    from lookalike.evaluate.faces import PersonModel, calibrate, judge_faces
    from lookalike.evaluate.judges import FaceJudge
    from lookalike.evaluate.suite import asked
    from lookalike.ingest.faces import Face

    arthur, grace = np.zeros(128), np.eye(128)[0]  # 1.0 apart: dlib's 0.6 tells them apart

    def model(at):
        embeddings = np.stack([at, at + 0.01])
        return PersonModel(embeddings, ("a.jpg", "b.jpg"), calibrate(embeddings))

    a, g = model(arthur), model(grace)

    def image(*where):  # a face at each embedding
        return judge_faces([Face((20 * i, 10, 20 * i + 20, 30), 1.0, e) for i, e in enumerate(where)], a, 64, 64,
                           others=[g])

    cfg = load_config(None, overrides=["dataset.people=[{trigger: Grace, photos: /x}]", "eval.seeds=[0, 1]",
                                       "eval.prompts=['{trigger} as a wizard']",
                                       "eval.pair_prompts=['{trigger} and {other} at a cafe']"])
    judge = FaceJudge(cfg, a, [g])
    assert judge.suite.prompts("second") == ("Grace as a wizard",)
    assert judge.suite.prompts("both") == ("Arthur and Grace at a cafe",)
    assert asked(cfg, "both") == [(0, 1), (0, 1)] and asked(cfg, "second") == [(1,), (1,)]
    midway = 0.45 * grace  # within both thresholds, nearer Arthur: Arthur only
    assert image(midway).who() == [0] and image(grace + 0.05).who() == [1] and image(3 * grace).who() == [None]
    readings = {"trigger": [image(arthur), image(grace)], "group": [image(arthur, 3 * grace)],
                "second": [image(grace), image()], "both": [image(arthur, grace), image(midway)],
                "plain": [image(), image(3 * grace)], "empty": [image()]}
    m = judge.metrics(readings)
    assert m["likeness"] == 0.5 and m["people"] == {"Grace": {"likeness": 0.5, "both": 0.5, "elsewhere": 0.0}}
    assert m["confusion"] == 0.25 and m["likeness_both"] == 0.5  # Grace drawn in 1 of 4 one-person images
    head = judge.headline(m, None)
    assert (head["likeness"], head["elsewhere"]) == (0.5, 0.25)
    assert [p["who"] for p in judge.people(readings["both"][0])] == ["Arthur", "Grace"]
