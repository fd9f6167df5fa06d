"""The face metric on real photos: scikit-image's astronaut and matplotlib's Grace Hopper, augmented
copies of each, and composites of the two standing in for multi-person generated images.

Faces are detected once per module (~0.3 s per 512² image); the tests judge the cached faces.
"""

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from helpers import astronaut, grace_hopper, side_by_side
from lookalike.errors import LookalikeError
from lookalike.evaluate.faces import (
    BOUNDS, DLIB_THRESHOLD, MARGIN, QUANTILE, Reading, box_iou, calibrate, identity_from_faces, identity_from_photos,
    judge_faces, leakage, likeness, match_faces, pair_distances, pixel_distance, preservation, read_faces, set_metrics,
)
from lookalike.ingest.faces import face_distance, find_faces


def _jpeg(image, quality):
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


# Each keeps the face findable by dlib's HOG detector (checked in test_each_copy_shows_one_face).
AUGMENTS = {
    "original": lambda im: im,
    "flip": lambda im: im.transpose(Image.FLIP_LEFT_RIGHT),
    "half size": lambda im: im.resize((im.width // 2, im.height // 2), Image.BILINEAR),
    "crop": lambda im: im.crop((13, 7, im.width - 40, im.height - 21)),
    "jpeg 25": lambda im: _jpeg(im, 25),
    "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.3),
    "rotated 6°": lambda im: im.rotate(6, resample=Image.BICUBIC),
}


def held_out(im):
    """A copy never in a person's photo set: lower contrast."""
    return ImageEnhance.Contrast(im).enhance(0.6)


def where_hopper_is(a):
    """The astronaut enlarged 2.07x and cropped to 512x600 so her face (90 px at (220, 121)) lands where Hopper's
    (186 px at (273, 232)) is: a same-seed image in which the LoRA turned Hopper into her."""
    return a.resize((1058, 1058), Image.BICUBIC).crop((182, 18, 182 + 512, 18 + 600))


@pytest.fixture(scope="module")
def seen():
    """Faces found in every copy of both people and in two composites (~7 s, once)."""
    a, h = astronaut(), grace_hopper()
    faces = {(who, name): find_faces(f(im)) for who, im in (("astronaut", a), ("hopper", h))
             for name, f in AUGMENTS.items()}
    faces["astronaut", "held out"] = find_faces(held_out(a))
    faces["hopper", "held out"] = find_faces(held_out(h))
    images = {"a|h": side_by_side(a, h), "a|a": side_by_side(a, where_hopper_is(a)), "a": a}
    faces.update({key: find_faces(im) for key, im in images.items() if key != "a"})
    faces["a"] = faces["astronaut", "original"]
    return faces, images


def person(seen, who):
    """The person from their augmented copies (held-out copy excluded)."""
    faces, _ = seen
    return identity_from_faces([faces[who, n] for n in AUGMENTS], list(AUGMENTS))


def embeddings(seen, who):
    return np.stack([seen[0][who, n][0].embedding for n in AUGMENTS])


def test_each_copy_shows_one_face(seen):
    faces, _ = seen
    for key, found in faces.items():
        assert len(found) == (2 if key in ("a|h", "a|a") else 1), key
    hopper_face, her_face = faces["a|h"]  # largest first: Hopper's face is the larger
    assert her_face.box[0] < 512 <= hopper_face.box[0]
    assert box_iou(faces["a|a"][0].box, hopper_face.box) > 0.5  # her enlarged copy sits where Hopper's face is


def test_calibrated_threshold_lies_between_the_two_people(seen):
    inter = np.array([face_distance(x, y) for x in embeddings(seen, "astronaut") for y in embeddings(seen, "hopper")])
    for who in ("astronaut", "hopper"):
        intra = pair_distances(embeddings(seen, who))
        cal = person(seen, who).calibration
        assert cal.calibrated and cal.photos == len(AUGMENTS) and cal.pairs == len(intra) == 21
        assert cal.quantile == QUANTILE and cal.quantile_distance == pytest.approx(np.quantile(intra, QUANTILE))
        assert cal.threshold == pytest.approx(np.clip(cal.quantile_distance + MARGIN, *BOUNDS))
        assert intra.max() < cal.threshold < inter.min(), (who, intra.max(), cal.threshold, inter.min())
        assert "21 pair distances between 7 photos" in cal.reason
    assert inter.min() > 0.55  # two different women: dlib's own 0.6 barely separates them


def test_same_person_called_same_and_the_other_different(seen):
    faces, _ = seen
    for who, other in (("astronaut", "hopper"), ("hopper", "astronaut")):
        model = person(seen, who)
        mine = judge_faces(faces[who, "held out"], model, 512, 512)
        theirs = judge_faces(faces[other, "held out"], model, 512, 512)
        assert mine.found and mine.closest.distance < model.threshold
        to_each = [face_distance(faces[who, "held out"][0].embedding, e) for e in model.embeddings]
        assert (mine.closest.distance, mine.closest.nearest) == pytest.approx((np.mean(to_each), np.min(to_each)))
        assert not theirs.found and theirs.closest.distance > model.threshold
        for name in AUGMENTS:  # each photo against the person made from the other six
            rest = identity_from_faces([faces[who, n] for n in AUGMENTS if n != name], [n for n in AUGMENTS if n != name])
            assert judge_faces(faces[who, name], rest, 512, 512).found, (who, name)
            assert not judge_faces(faces[other, name], rest, 512, 512).found, (who, other, name)
    small = read_faces(held_out(astronaut()).resize((256, 256)), person(seen, "astronaut"))  # detection + judging
    assert (small.width, small.height, len(small.faces), small.found) == (256, 256, 1, True)


def test_calibration_rule_in_numbers():
    def line(*xs):  # embeddings on one axis, so pair distances are the gaps
        return np.array([[x] + [0.0] * 127 for x in xs])

    # gaps .15 .15 .15 .3 .3 .45: the 95% quantile is .3 + .75 * .15 = .4125
    cal = calibrate(line(0, 0.15, 0.3, 0.45))
    assert (cal.pairs, cal.photos) == (6, 4) and cal.quantile_distance == pytest.approx(0.4125)
    assert cal.threshold == pytest.approx(0.5125) and cal.max_distance == pytest.approx(0.45)
    assert calibrate(line(0, 0.1, 0.2)).threshold == BOUNDS[0]  # near-copies: no tighter than 0.4
    assert calibrate(line(0, 0.3, 0.6)).threshold == BOUNDS[1]  # varied photos: no looser than dlib's 0.6
    assert "clamped" in calibrate(line(0, 0.3, 0.6)).reason
    fallback = calibrate(line(0, 0.1))
    assert not fallback.calibrated and fallback.threshold == DLIB_THRESHOLD and fallback.pairs == 1
    assert "2 photo(s)" in fallback.reason and json.dumps(fallback.to_json())
    assert calibrate(line(0, 0.1, 0.2), min_photos=4).threshold == DLIB_THRESHOLD


def test_too_few_photos_fall_back_to_dlib(seen, tmp_path):
    faces, _ = seen
    two = identity_from_faces([faces["astronaut", "original"], faces["astronaut", "flip"]], ["a.jpg", "b.jpg"])
    assert two.threshold == DLIB_THRESHOLD and not two.calibration.calibrated
    # from files: one readable photo with a face, one that is not an image, one without a face
    astronaut().save(tmp_path / "a.png")
    (tmp_path / "notes.jpg").write_text("not a photo")
    one = identity_from_photos([tmp_path / "a.png", tmp_path / "notes.jpg", Image.new("RGB", (64, 64), "grey")])
    assert one.names == ("a.png",) and one.threshold == DLIB_THRESHOLD
    assert one.skipped[0].startswith("notes.jpg: ") and one.skipped[1] == "image 2: no face found"
    assert face_distance(one.embeddings[0], faces["astronaut", "original"][0].embedding) < 0.05


def test_the_person_is_the_face_in_most_photos(seen):
    faces, _ = seen
    photos = [faces["astronaut", "original"], faces["a|h"], faces["astronaut", "flip"], faces["hopper", "crop"], []]
    model = identity_from_faces(photos, ["a", "a|h", "flip", "hopper", "empty"])
    assert model.names == ("a", "a|h", "flip")
    assert np.array_equal(model.embeddings[1], faces["a|h"][1].embedding)  # the astronaut (left), not Hopper
    assert model.skipped == ("hopper: 1 face(s), none within 0.6 of the person", "empty: no face found")
    report = model.to_json()
    assert report["other_faces"] == 2 and report["nearest_other"] > model.threshold and report["warnings"] == []
    json.dumps(report)
    # with a reference, the reference's face is the person even where the other is more frequent
    her = identity_from_faces(photos, ["a", "a|h", "flip", "hopper", "empty"],
                              reference=faces["hopper", "original"][0].embedding)
    assert her.names == ("a|h", "hopper") and np.array_equal(her.embeddings[0], faces["a|h"][0].embedding)


def test_errors_name_the_fix(seen):
    grey = [Image.new("RGB", (64, 64), "grey")] * 2
    with pytest.raises(LookalikeError, match=r"none of the 2 photos in dataset.photos has a detectable face.*ingest"):
        identity_from_photos(grey, where="dataset.photos")
    with pytest.raises(LookalikeError, match=r"reference face is in none of the 1 photos.*caption.reference"):
        identity_from_faces([seen[0]["astronaut", "original"]], ["a"], reference=seen[0]["hopper", "original"][0].embedding)
    with pytest.raises(LookalikeError, match="no photos of the person in dataset.photos"):
        identity_from_photos([], where="dataset.photos")


def test_likeness_and_leakage_on_composites(seen):
    faces, _ = seen
    her, hopper = person(seen, "astronaut"), person(seen, "hopper")
    a_h = judge_faces(faces["a|h"], her, 1024, 600)
    a_a = judge_faces(faces["a|a"], her, 1024, 600)
    h = judge_faces(faces["hopper", "original"], her, 512, 600)
    assert likeness([a_h]) == 1.0 and leakage([a_h]) == (0.0, 1)  # she is found; Hopper beside her is not her
    assert likeness([a_a]) == 1.0 and leakage([a_a]) == (1.0, 1)  # both faces are her: one counts as leaked
    assert likeness([h]) == 0.0 and leakage([h]) == (None, 0)  # "the person in prompts without her"
    him = judge_faces(faces["a|h"], hopper, 1024, 600)  # the same image, with Hopper as the person
    assert him.found and him.closest.face.box[0] >= 512 and leakage([him]) == (0.0, 1)
    numbers = set_metrics([a_h, a_a, h, Reading(512, 512)])
    assert numbers["images"] == 4 and numbers["images_with_faces"] == 3 and numbers["faces"] == 5
    assert numbers["person_found"] == 0.5 and numbers["leakage"] == 0.5 and numbers["leakage_others"] == 2
    assert numbers["closest_distance_mean"] == pytest.approx(np.mean([r.closest.distance for r in (a_h, a_a, h)]), abs=1e-4)
    assert likeness([]) is None
    json.dumps([numbers, a_h.to_json()])
    assert sum(f["closest"] for f in a_a.to_json()["faces"]) == 1


def test_preservation_on_composites(seen):
    faces, images = seen
    her = person(seen, "astronaut")
    off = [judge_faces(faces["a|h"], her, 1024, 600), judge_faces(faces["a"], her, 512, 512)]
    grey = Image.new("RGB", (512, 512), "grey")
    on = [judge_faces(faces["a|a"], her, 1024, 600), read_faces(grey, her)]  # LoRA on: Hopper became her; she vanished
    kept = preservation(off, on, [images["a|h"], images["a"]], [images["a|a"], grey])
    assert kept["pairs"] == 2 and kept["face_count_agreement"] == 0.5 and kept["person_agreement"] == 0.5
    pairs = match_faces(off[0], on[0])  # by position: left with left, right with right
    assert sorted((p.face.box[0] < 512, q.face.box[0] < 512) for p, q in pairs) == [(False, False), (True, True)]
    expected = np.mean([face_distance(p.face.embedding, q.face.embedding) for p, q in pairs])
    assert kept["matched_faces"] == 2 and kept["face_distance"] == pytest.approx(expected, abs=1e-4)
    assert kept["face_distance"] > 0.25  # Hopper -> astronaut on the right, the same astronaut on the left
    right = np.abs(np.asarray(images["a|h"], float) - np.asarray(images["a|a"], float))
    grey_gap = np.abs(np.asarray(images["a"], float) - 128).mean() / 255
    assert kept["image_distance"] == pytest.approx((right.mean() / 255 + grey_gap) / 2, abs=1e-4)
    same = preservation(off, off, [images["a|h"], images["a"]], [images["a|h"], images["a"]])
    assert same["face_count_agreement"] == same["person_agreement"] == 1.0
    assert same["face_distance"] == 0.0 and same["image_distance"] == 0.0 and same["matched_faces"] == 3
    with pytest.raises(ValueError, match="differ in size"):
        pixel_distance(images["a"], images["a|h"])
    with pytest.raises(ValueError, match="pairs"):
        preservation(off, on[:1], [], [])


def test_box_overlap():
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0 and box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0


def test_copy_score_and_its_baseline_in_numbers():
    from lookalike.evaluate.faces import copy_metrics, with_held_out

    def at(*xs):  # embeddings on one axis: distances are the gaps
        return np.array([[x] + [0.0] * 127 for x in xs])

    # training photos at 0, 0.3, 0.6; held-out photos at 0.15 and 0.45
    photos = at(0, 0.3, 0.6, 0.15, 0.45)
    model = with_held_out(identity_from_faces([[_face(e)] for e in photos], ["t1", "t2", "t3", "h1", "h2"]),
                          ["h1", "h2"])
    assert model.held_out == (False, False, False, True, True) and model.judged_on_held_out
    copy_of_t2 = at(0.3)[0]  # mean to held-out (0.15 + 0.15) / 2 - nearest training 0 = 0.15
    new_photo = at(0.35)[0]  # (0.2 + 0.1) / 2 - 0.05 = 0.10
    assert model.copy_score(copy_of_t2) == pytest.approx(0.15)
    assert model.copy_score(new_photo) == pytest.approx(0.10)
    # each held-out photo against the other (0.3 away) and its nearest training photo (0.15 away): 0.15
    assert model.copy_baseline() == pytest.approx(0.15)
    # judged against the held-out photos alone: mean distance of 0.3 to them is (0.15 + 0.15) / 2
    assert judge_faces([_face(copy_of_t2)], model, 64, 64).closest.distance == pytest.approx(0.15)
    far_copy = judge_faces([_face(at(0.0)[0])], model, 64, 64)  # a copy of t1: 0.3 from the held-out mean
    assert far_copy.found  # 0.3 < the threshold (clamped to at least 0.4)
    m = copy_metrics([far_copy] * 3, model)
    assert m["copy_faces"] == 3 and m["copy_score"] == pytest.approx(0.3) and m["copy"] == pytest.approx(0.15)
    # without held-out photos (or with one) nothing is counted and likeness is judged on every photo
    plain = identity_from_faces([[_face(e)] for e in photos], ["t1", "t2", "t3", "h1", "h2"])
    assert plain.copy_score(copy_of_t2) is None and plain.copy_baseline() is None
    assert not with_held_out(plain, ["h1"]).judged_on_held_out
    assert copy_metrics([judge_faces([_face(copy_of_t2)], plain, 64, 64)], plain)["copy"] is None


def _face(embedding):
    from lookalike.ingest.faces import Face

    return Face((0, 0, 20, 20), 1.0, np.asarray(embedding, dtype=np.float64))


def test_a_copy_of_a_training_photo_scores_above_a_new_photo_of_the_person(seen):
    """Real faces: the astronaut's training copies, three held out; a verbatim training photo is a copy, the
    contrast-lowered photo (never in the set) is not."""
    from lookalike.evaluate.faces import copy_metrics, with_held_out

    faces, _ = seen
    held = ["half size", "brighter", "rotated 6°"]
    model = with_held_out(person(seen, "astronaut"), held)
    copy = judge_faces(faces["astronaut", "original"], model, 512, 512)
    new = judge_faces(faces["astronaut", "held out"], model, 512, 512)
    assert copy.found and new.found
    assert copy.closest.copy > new.closest.copy
    assert copy.closest.nearest == pytest.approx(0.0, abs=1e-6) or copy.closest.copy > model.copy_baseline()
    both = copy_metrics([copy, new], model)
    assert both["copy_faces"] == 2 and both["copy"] == pytest.approx(
        np.median([copy.closest.copy, new.closest.copy]) - model.copy_baseline(), abs=1e-4)


def test_recommendation_refuses_a_checkpoint_that_copies():
    from lookalike.config import load_config
    from lookalike.evaluate.recommend import recommend

    bounds = load_config(None).eval
    rows = [{"step": s, "name": f"step-{s:06d}", "scores": {"likeness": lk, "leakage": 0.0, "elsewhere": 0.0,
                                                        "preservation": 0.9, "copy": cp}}
            for s, lk, cp in ((100, 0.6, 0.02), (200, 0.9, 0.25), (300, 0.7, None))]
    rec = recommend(rows, bounds)
    assert rec["name"] == "step-000300"  # the best likeness that is not a copy; None: not counted, not refused
    assert rec["rejected"] == {"step-000200": ["copy 0.250 > eval.max_copy 0.1"]}
    assert "copy score" not in rec["reason"]
    assert "copy score 0.020 <= 0.1" in recommend(rows[:1], bounds)["reason"]


def test_face_judge_from_a_run_of_two_people_tells_them_apart(tmp_path):
    """The judge of a run that learned two people (dataset.people): each person from their own cached photos
    (Grace anchored on her reference photo), and a photo of the two side by side read as both, each once."""
    from lookalike.config import load_config
    from lookalike.evaluate.judges import FaceJudge
    from lookalike.rundir import RunDir

    a, h = astronaut(), grace_hopper()
    items = []
    for who, im, trigger in (("a", a, "Arthur"), ("h", h, "Grace")):
        (tmp_path / who).mkdir()
        for i, name in enumerate(["original", "flip", "crop", "jpeg 25"]):
            path = tmp_path / who / f"{i}.jpg"
            AUGMENTS[name](im).save(path, quality=95)
            items.append({"photo": str(path), "caption": f"{trigger} smiling", "person": trigger})
    held_out(h).save(tmp_path / "grace-selfie.jpg")
    rd = RunDir(tmp_path / "run")
    rd.cache_index.parent.mkdir(parents=True)
    rd.cache_index.write_text(json.dumps({"items": items}))
    cfg = load_config(None, overrides=[f"dataset.photos={tmp_path / 'a'}", "dataset.people=[{trigger: Grace, photos: "
                                       f"{tmp_path / 'h'}, reference: {tmp_path / 'grace-selfie.jpg'}}}]"])
    judge = FaceJudge.from_run(cfg, rd)
    assert list(judge.person.names) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"] and len(judge.others) == 1
    both = judge.read([side_by_side(a, h)])[0]
    assert both.who() == [0, 1] or both.who() == [1, 0]
    assert sorted(p["who"] for p in judge.people(both)) == ["Arthur", "Grace"]
    assert judge.read([h])[0].who() == [1] and judge.about()["people"]["Grace"]["photos"] == ["0.jpg", "1.jpg",
                                                                                               "2.jpg", "3.jpg"]
