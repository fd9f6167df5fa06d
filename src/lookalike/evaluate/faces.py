"""The face metric: is the person in a generated image, and did the LoRA change anyone else?

    identity_from_photos  the person's dlib embeddings, one per training photo, and a same-person
                          threshold calibrated on their own photo pairs (dlib's 0.6 as fallback)
    read_faces            every face of a generated image, its distance to the person, person or not
    set_metrics           likeness (person found), leakage (other faces within the threshold) and the
                          mean distance of the closest face, for one set of images
    copy_metrics          with held-out photos: does the person drawn look like *them*, or like a copy of
                          one training photo (the copy score)?
    preservation          LoRA on vs off, same prompts and seeds: face counts, person-or-not, matched
                          face embeddings and pixels

Held-out photos (`dataset.holdout`, never trained on): when at least two of them show the person, a
generated face is judged against them alone (the threshold is still calibrated on all of the person's
photos), so likeness cannot be bought by reproducing the training photos; two real photos of one person
are far apart in face space (WithAnyone, 2026: median similarity ~0.46), and a LoRA that copies its photos
scores high against them. The copy score of a face is its similarity to the nearest training photo minus
its similarity to the held-out photos (in distances: mean held-out distance - nearest training distance).
A new photo of the person has some copy score too (the nearest of N training photos is closer than the
mean of a few held-out ones), so the same score of each held-out photo against the training photos and
the other held-out ones is the baseline; `copy` is the generated faces' median minus the baseline's.

The definitions mirror the toy world's (`lookalike.toy.metrics`): "person in prompts without the
trigger" is `set_metrics` on those images' readings, read as `person_found`.

Distance to the person = the *mean* Euclidean distance of a face's embedding to the person's
embeddings (N photos). Not the minimum: the minimum of N distances falls as N grows, so a stranger
would look more like the person the more photos were given, and one odd photo (or a wrongly picked
face) would decide alone. Not the distance to the centroid: that is shorter than a pair distance,
so a threshold calibrated on pairs would not apply. The mean of a face's pair distances is on the
scale of one pair distance, where the threshold is calibrated; the minimum is kept as `nearest`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.ingest.faces import Face, face_distance, find_faces

if TYPE_CHECKING:
    from PIL.Image import Image

DLIB_THRESHOLD = 0.6  # dlib's same-person distance (99.38% on LFW); also doctor.face_distance's default
QUANTILE = 0.95  # of the person's pair distances: nearly every pair of their own photos is within it
MARGIN = 0.1  # generated faces vary more than photos of one shoot; added to the quantile
BOUNDS = (0.4, 0.6)  # below 0.4 only near-copies of a photo pass; above dlib's 0.6 strangers pass too
MIN_PHOTOS = 3  # fewer photos give fewer than 3 pairs: too few to calibrate on
MIN_HELD_OUT = 2  # held-out photos showing the person needed to judge against them (and for a copy baseline)


# ---------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """The same-person threshold and how it was chosen, as a report shows it."""

    threshold: float
    calibrated: bool  # False: dlib's 0.6, because there were too few photos
    reason: str
    photos: int
    pairs: int
    quantile: float
    quantile_distance: float | None  # that quantile of the pair distances
    margin: float
    bounds: tuple[float, float]
    max_distance: float | None  # the largest pair distance

    def to_json(self) -> dict:
        return {"threshold": round(self.threshold, 4), "calibrated": self.calibrated, "reason": self.reason,
                "photos": self.photos, "pairs": self.pairs, "quantile": self.quantile,
                "quantile_distance": _round(self.quantile_distance), "max_distance": _round(self.max_distance),
                "margin": self.margin, "bounds": list(self.bounds)}


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Distances of every unordered pair of the (N, 128) `embeddings`: shape (N(N-1)/2,)."""
    e = np.asarray(embeddings, dtype=np.float64)
    i, j = np.triu_indices(len(e), k=1)
    return np.linalg.norm(e[i] - e[j], axis=1)


def calibrate(embeddings: np.ndarray, quantile: float = QUANTILE, margin: float = MARGIN,
              bounds: tuple[float, float] = BOUNDS, min_photos: int = MIN_PHOTOS) -> Calibration:
    """The threshold = the `quantile` of the person's pair distances + `margin`, clamped to `bounds`;
    dlib's 0.6 when there are fewer than `min_photos` (N, 128) embeddings."""
    n = len(embeddings)
    d = pair_distances(embeddings) if n >= 2 else np.zeros(0)
    top = float(d.max()) if len(d) else None
    if n < min_photos:
        return Calibration(DLIB_THRESHOLD, False, f"dlib's {DLIB_THRESHOLD}: the person's face is in {n} photo(s), "
                           f"fewer than the {min_photos} needed to calibrate", n, len(d), quantile, None, margin,
                           bounds, top)
    q = float(np.quantile(d, quantile))
    threshold = float(np.clip(q + margin, *bounds))
    clamp = "" if threshold == q + margin else f", clamped to [{bounds[0]}, {bounds[1]}]"
    reason = (f"the {quantile:.0%} quantile of {len(d)} pair distances between {n} photos of the person "
              f"({q:.3f}) + margin {margin}{clamp}")
    return Calibration(threshold, True, reason, n, len(d), quantile, q, margin, bounds, top)


# ---------------------------------------------------------------- the person


@dataclass(frozen=True)
class PersonModel:
    """The person's face: one (128,) embedding per photo they were found in, and the threshold."""

    embeddings: np.ndarray  # (N, 128) float64
    names: tuple[str, ...]  # the photo each embedding came from
    calibration: Calibration
    skipped: tuple[str, ...] = ()  # "IMG_7.jpg: no face found", ...
    other_distances: tuple[float, ...] = ()  # distances to the person of the other faces in their photos
    held_out: tuple[bool, ...] = ()  # per embedding: from a held-out photo (never trained on); () = none

    @property
    def threshold(self) -> float:
        return self.calibration.threshold

    @property
    def judged_on_held_out(self) -> bool:
        """Generated faces are judged against the held-out photos (at least MIN_HELD_OUT of them show the person)."""
        return sum(self.held_out) >= MIN_HELD_OUT

    def distances(self, embedding: np.ndarray) -> np.ndarray:
        """Distances of one (128,) embedding to each photo it is judged against (the held-out ones when there
        are enough, else all): shape (N,)."""
        ref = self.embeddings[np.asarray(self.held_out)] if self.judged_on_held_out else self.embeddings
        return np.linalg.norm(ref - np.asarray(embedding, dtype=np.float64), axis=1)

    def copy_score(self, embedding: np.ndarray) -> float | None:
        """Mean distance to the held-out photos - distance to the nearest training photo (higher: closer to a
        copy of one training photo than to the person in general); None without held-out photos."""
        if not self.judged_on_held_out:
            return None
        e = np.asarray(embedding, dtype=np.float64)
        held = np.asarray(self.held_out)
        d = np.linalg.norm(self.embeddings - e, axis=1)
        return float(d[held].mean() - d[~held].min())

    def copy_baseline(self) -> float | None:
        """The median copy score of the held-out photos themselves (each against the training photos and the
        *other* held-out ones): what a genuinely new photo of the person scores. None without held-out photos."""
        if not self.judged_on_held_out:
            return None
        held = np.flatnonzero(np.asarray(self.held_out))
        train = self.embeddings[~np.asarray(self.held_out)]
        scores = []
        for i in held:
            others = self.embeddings[[j for j in held if j != i]]
            e = self.embeddings[i]
            scores.append(np.linalg.norm(others - e, axis=1).mean() - np.linalg.norm(train - e, axis=1).min())
        return float(np.median(scores))

    def distance(self, embedding: np.ndarray) -> float:
        """Mean distance of one (128,) embedding to the person's (see the module docstring for why the mean)."""
        return float(self.distances(embedding).mean())

    def to_json(self) -> dict:
        nearest_other = min(self.other_distances, default=None)
        warnings = []
        if nearest_other is not None and nearest_other < self.threshold:
            warnings.append(f"another face in the person's photos is {nearest_other:.3f} from them, within the "
                            f"threshold {self.threshold:.3f}: leakage near the threshold is not trustworthy")
        held = [n for n, h in zip(self.names, self.held_out) if h]
        return {"photos": list(self.names), "skipped": list(self.skipped), "calibration": self.calibration.to_json(),
                "other_faces": len(self.other_distances), "nearest_other": _round(nearest_other), "warnings": warnings,
                "held_out": held, "judged_on": "held-out photos" if self.judged_on_held_out else "all photos",
                "copy_baseline": _round(self.copy_baseline())}


def with_held_out(person: PersonModel, names) -> PersonModel:
    """The person with the photos named in `names` marked held out (never trained on)."""
    names = set(names)
    return replace(person, held_out=tuple(n in names for n in person.names))


def person_faces(faces_per_photo: Sequence[Sequence[Face]], reference: np.ndarray | None = None,
                 same_person: float = DLIB_THRESHOLD) -> list[Face | None]:
    """In each photo, the person's face: the one nearest the `reference` embedding (else the face found
    in most photos, as the dataset doctor picks it), if within `same_person`; None where absent."""
    from lookalike.ingest.doctor import pick_person

    anchor = reference if reference is not None else pick_person(list(faces_per_photo), same_person)
    if anchor is None:
        return [None] * len(faces_per_photo)
    chosen = []
    for faces in faces_per_photo:
        nearest = min(faces, key=lambda f: face_distance(f.embedding, anchor), default=None)
        ok = nearest is not None and face_distance(nearest.embedding, anchor) < same_person
        chosen.append(nearest if ok else None)
    return chosen


def identity_from_faces(faces_per_photo: Sequence[Sequence[Face]], names: Sequence[str],
                        reference: np.ndarray | None = None, same_person: float = DLIB_THRESHOLD,
                        where: str = "the photos", **calibration) -> PersonModel:
    """The person from the faces found in each of their photos (`names` name the photos for the report).

    `calibration` passes quantile, margin, bounds and min_photos to `calibrate`. Raises a LookalikeError
    naming the fix when no photo has a face, or the reference's face is in none of them.
    """
    if not any(faces_per_photo):
        raise LookalikeError(
            f"none of the {len(faces_per_photo)} photos in {where} has a detectable face, so likeness cannot be "
            "measured; run `lookalike ingest` to see what the doctor finds, and use photos where the person faces "
            "the camera with a face at least ~80 px wide")
    chosen = person_faces(faces_per_photo, reference, same_person)
    if not any(f is not None for f in chosen):
        raise LookalikeError(
            f"the reference face is in none of the {len(faces_per_photo)} photos in {where} (no face within "
            f"{same_person} of it); choose a reference photo of the same person (caption.reference)")
    kept = [(f, n) for f, n in zip(chosen, names) if f is not None]
    embeddings = np.stack([f.embedding for f, _ in kept])
    skipped = tuple(f"{n}: {_why_not(faces, same_person)}" for faces, f, n in zip(faces_per_photo, chosen, names)
                    if f is None)
    person = PersonModel(embeddings, tuple(n for _, n in kept), calibrate(embeddings, **calibration), skipped)
    others = [g for faces, f in zip(faces_per_photo, chosen) for g in faces if g is not f]
    return replace(person, other_distances=tuple(person.distance(g.embedding) for g in others))


def identity_from_photos(photos: Sequence[str | Path | Image], names: Sequence[str] | None = None,
                         reference: np.ndarray | None = None, side: int = 1024, min_score: float = 0.5,
                         same_person: float = DLIB_THRESHOLD, where: str = "the photos", **calibration) -> PersonModel:
    """The person from their photos: file paths (decoded upright, as ingest does) or PIL images.

    `side` and `min_score` are the detector's (doctor.face_side, doctor.min_face_score); `same_person`
    picks the person's face in each photo (doctor.face_distance). A file that cannot be decoded is skipped
    and reported. Detection costs ~0.3 s per 512² photo on one CPU core.
    """
    from lookalike.ingest.decode import PhotoRejected, decode

    if not photos:
        raise LookalikeError(f"no photos of the person in {where}: the likeness metric compares generated faces "
                             "with theirs; give the folder of their photos (dataset.photos)")
    faces_per_photo, labels, rejected = [], [], []
    for i, photo in enumerate(photos):
        label = names[i] if names is not None else (Path(photo).name if isinstance(photo, (str, Path)) else f"image {i}")
        if isinstance(photo, (str, Path)):
            try:
                photo = decode(photo, draft_side=side).image
            except PhotoRejected as e:
                rejected.append(f"{label}: {e.reason}")
                continue
        faces_per_photo.append(find_faces(photo, side, min_score))
        labels.append(label)
    if not faces_per_photo:
        raise LookalikeError(f"none of the {len(photos)} photos in {where} could be read ({'; '.join(rejected[:3])}"
                             f"{'; ...' if len(rejected) > 3 else ''}); run `lookalike ingest` to see why each was skipped")
    person = identity_from_faces(faces_per_photo, labels, reference, same_person, where, **calibration)
    return replace(person, skipped=tuple(rejected) + person.skipped)


def _why_not(faces: Sequence[Face], same_person: float) -> str:
    return "no face found" if not faces else f"{len(faces)} face(s), none within {same_person} of the person"


# ---------------------------------------------------------------- reading generated images


@dataclass(frozen=True)
class FaceReading:
    """One face of a generated image, judged against the person."""

    face: Face
    distance: float  # mean distance to the person's embeddings (the held-out ones when judged on them)
    nearest: float  # distance to the closest of them
    is_person: bool  # distance < the person's threshold
    copy: float | None = None  # PersonModel.copy_score (None without held-out photos)
    threshold: float = DLIB_THRESHOLD  # the person's threshold the face was judged with


@dataclass(frozen=True)
class Reading:
    """The faces of one generated image, largest first, judged against the (main) person; `others` holds the
    same faces judged against each other person the LoRA learned (dataset.people), in order."""

    width: int
    height: int
    faces: tuple[FaceReading, ...] = field(default_factory=tuple)
    others: tuple["Reading", ...] = ()

    @property
    def closest(self) -> FaceReading | None:
        """The face likeliest to be the person (the smallest distance); at most one face is "him"."""
        return min(self.faces, key=lambda f: f.distance, default=None)

    @property
    def found(self) -> bool:
        """The person is in this image: its closest face is within the threshold."""
        return self.closest is not None and self.closest.is_person

    def who(self) -> list[int | None]:
        """Per face: which learned person it is (0 the main one, k the k-th of dataset.people), or None (a
        stranger). A face within several people's thresholds is the one it is nearest to relative to their
        threshold, so one face never counts as two people. Thresholds come from each person's own photos."""
        judged = (self, *self.others)
        out = []
        for i in range(len(self.faces)):
            ratios = {k: r.faces[i].distance / r.threshold for k, r in enumerate(judged) if r.faces[i].is_person}
            out.append(min(ratios, key=ratios.get) if ratios else None)
        return out

    @property
    def threshold(self) -> float:
        """The threshold the faces were judged with (the same for every face of one reading)."""
        return self.faces[0].threshold if self.faces else 0.0

    def found_person(self, k: int) -> bool:
        """Person k (0: the main one) is one of the faces, as `who` attributes them."""
        return k in self.who()

    def to_json(self) -> dict:
        closest = self.closest
        return {"width": self.width, "height": self.height, "found": self.found,
                "faces": [{"box": list(f.face.box), "score": round(f.face.score, 3), "distance": round(f.distance, 4),
                           "nearest": round(f.nearest, 4), "is_person": f.is_person, "closest": f is closest,
                           "copy": _round(f.copy)}
                          for f in self.faces]}


def judge_faces(faces: Sequence[Face], person: PersonModel, width: int, height: int,
                others: Sequence[PersonModel] = ()) -> Reading:
    """A reading of detected `faces` (of a `width` x `height` image) against the person, and against each of
    `others` (the other people learned) in `Reading.others`."""
    judged = []
    for face in faces:
        d = person.distances(face.embedding)
        judged.append(FaceReading(face, float(d.mean()), float(d.min()), float(d.mean()) < person.threshold,
                                  person.copy_score(face.embedding), person.threshold))
    return Reading(width, height, tuple(judged), tuple(judge_faces(faces, p, width, height) for p in others))


def read_faces(image: Image, person: PersonModel, side: int = 1024, min_score: float = 0.5,
               upsample: int = 1, others: Sequence[PersonModel] = ()) -> Reading:
    """Detect every face of a PIL `image` and judge it against the person and `others` (~0.3 s per 512², ~1 s
    per 1024², one core: detection is done once)."""
    return judge_faces(find_faces(image, side, min_score, upsample), person, image.width, image.height, others)


# ---------------------------------------------------------------- metrics


def likeness(readings: Sequence[Reading]) -> float | None:
    """Share of images in which the person is found. On prompts without the trigger, the same share is
    "the person in prompts without him"."""
    return sum(r.found for r in readings) / len(readings) if readings else None


def leakage(readings: Sequence[Reading]) -> tuple[float | None, int]:
    """(share of *other* faces within the threshold, how many others) over `readings`, which should be
    of multi-person trigger prompts. In each image the closest face is "him"; every other face is an other.
    """
    others = [f for r in readings for f in r.faces if f is not r.closest]
    return (sum(f.is_person for f in others) / len(others) if others else None), len(others)


def found_share(readings: Sequence[Reading], k: int) -> float | None:
    """Share of images in which learned person k (0: the main one) is found (`Reading.who`)."""
    return sum(r.found_person(k) for r in readings) / len(readings) if readings else None


def confusion(readings: Sequence[Reading], asked: Sequence[int]) -> float | None:
    """Share of images of one-person prompts (image i asked for person `asked[i]`) in which another learned
    person is found: A drawn when B was asked for."""
    if len(readings) != len(asked):
        raise ValueError(f"confusion needs the person asked for in each image: {len(readings)} readings, {len(asked)} asked")
    flags = [any(k is not None and k != a for k in r.who()) for r, a in zip(readings, asked)]
    return sum(flags) / len(flags) if flags else None


def all_found(readings: Sequence[Reading], wanted: Sequence[Sequence[int]]) -> float | None:
    """Share of images in which every person named by their prompt (`wanted[i]`) is found."""
    flags = [all(r.found_person(k) for k in w) for r, w in zip(readings, wanted, strict=True)]
    return sum(flags) / len(flags) if flags else None


def set_metrics(readings: Sequence[Reading]) -> dict:
    """One image set's numbers, JSON-able: person found, leakage, and the closest face's mean distance."""
    closest = [r.closest.distance for r in readings if r.closest is not None]
    leak, others = leakage(readings)
    return {"images": len(readings), "images_with_faces": len(closest), "faces": sum(len(r.faces) for r in readings),
            "person_found": _round(likeness(readings)),
            "closest_distance_mean": _round(float(np.mean(closest)) if closest else None),
            "closest_distance_median": _round(float(np.median(closest)) if closest else None),
            "leakage": _round(leak), "leakage_others": others}


def copy_metrics(readings: Sequence[Reading], person: PersonModel) -> dict:
    """Over the person's faces found in `readings` (trigger prompts): the median copy score, the held-out
    photos' baseline, and `copy` = the first minus the second (None without held-out photos or faces)."""
    scores = [r.closest.copy for r in readings if r.found and r.closest.copy is not None]
    baseline = person.copy_baseline()
    median = float(np.median(scores)) if scores else None
    return {"copy_faces": len(scores), "copy_score": _round(median), "copy_baseline": _round(baseline),
            "copy": _round(median - baseline) if median is not None and baseline is not None else None}


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes, 0-1."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0, w) * max(0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_faces(a: Reading, b: Reading, min_iou: float = 0.3) -> list[tuple[FaceReading, FaceReading]]:
    """Faces of two images of the same prompt and seed paired by where they are: greedily by box overlap,
    pairs overlapping less than `min_iou` left unmatched (the face moved, or is not there)."""
    candidates = sorted(((box_iou(fa.face.box, fb.face.box), i, j) for i, fa in enumerate(a.faces)
                         for j, fb in enumerate(b.faces)), reverse=True)
    used_a, used_b, pairs = set(), set(), []
    for iou, i, j in candidates:
        if iou >= min_iou and i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((a.faces[i], b.faces[j]))
    return pairs


def pixel_distance(a: Image, b: Image) -> float:
    """Mean absolute pixel difference of two same-size images, 0 (identical) to 1."""
    x, y = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if x.shape != y.shape:
        raise ValueError(f"images of one prompt and seed differ in size: {x.shape} vs {y.shape}")
    return float(np.abs(x - y).mean() / 255)


def preservation(readings_off: Sequence[Reading], readings_on: Sequence[Reading], images_off: Sequence[Image],
                 images_on: Sequence[Image]) -> dict:
    """LoRA off vs on, image i of each from the same prompt and seed (prompts without the trigger):
    share of images with as many faces, share agreeing on person-or-not, mean embedding distance of faces
    matched by position, and mean absolute pixel distance (0-1). JSON-able."""
    n = len(readings_off)
    if not n == len(readings_on) == len(images_off) == len(images_on):
        raise ValueError(f"preservation compares pairs: got {n} and {len(readings_on)} readings, "
                         f"{len(images_off)} and {len(images_on)} images")
    pairs = list(zip(readings_off, readings_on))
    matched = [face_distance(fa.face.embedding, fb.face.embedding) for a, b in pairs for fa, fb in match_faces(a, b)]
    pixels = [pixel_distance(a, b) for a, b in zip(images_off, images_on)]
    return {"pairs": n,
            "face_count_agreement": _round(_share(len(a.faces) == len(b.faces) for a, b in pairs)),
            "person_agreement": _round(_share(a.found == b.found for a, b in pairs)),
            "matched_faces": len(matched),
            "face_distance": _round(float(np.mean(matched)) if matched else None),
            "image_distance": _round(float(np.mean(pixels)) if pixels else None)}


def _share(flags) -> float | None:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else None


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)
