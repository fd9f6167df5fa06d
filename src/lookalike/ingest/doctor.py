"""The dataset doctor: what is wrong with each photo before anyone pays for captions or GPU time.

For every file in the photo folder it records whether the file can be used (and why not), its size,
a perceptual hash, sharpness, the number of faces and whether *the person's* face is among them.
The person is the face of the reference photo when one is given, else the face found in most photos.
The checks are small pure functions; `examine` runs them over a folder and returns a `DoctorReport`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lookalike.data.photos import IMAGE_SUFFIXES
from lookalike.errors import ConfigError

log = logging.getLogger(__name__)

SIDECAR_SUFFIXES = {".txt", ".json", ".jsonl", ".html", ".md", ".yaml", ".yml", ".csv"}
SHARPNESS_SIDE = 64  # face crops are scaled to this before measuring, so the measure does not depend on photo size


@dataclass
class PhotoCheck:
    """What the doctor found about one file. `flags` are problems a person should look at."""

    file: str
    usable: bool
    reason: str | None = None  # why the file cannot be used at all
    width: int | None = None
    height: int | None = None
    format: str | None = None
    notes: list[str] = field(default_factory=list)  # what decoding did: rotated, CMYK -> RGB, ...
    sha256: str | None = None
    phash: str | None = None
    sharpness: float | None = None
    faces: int | None = None
    person: bool | None = None  # the person's face is in this photo (None: no person identified)
    person_distance: float | None = None
    position: str | None = None  # left, center or right: where the person is
    training_size: tuple[int, int] | None = None
    enlarged: float | None = None  # > 1: the crop is enlarged this much to the training size (in the summary)
    flags: list[str] = field(default_factory=list)
    leave_out: str | None = None  # why training leaves it out by default (None: it trains)


@dataclass
class DoctorReport:
    folder: str
    person_from: str  # "reference photo X", "the face in most photos (N)", or "no face found"
    photos: list[PhotoCheck]
    faces_checked: bool = True  # faces found in most usable photos: the person decides what trains
    reference: str | None = None  # the photo of the person sent with every caption request

    @property
    def usable(self) -> list[PhotoCheck]:
        return [p for p in self.photos if p.usable]

    def summary(self) -> dict:
        flagged = [p for p in self.photos if p.flags or not p.usable]
        kinds: dict[str, int] = {}
        for p in self.photos:
            for flag in p.flags:
                kind = flag.split(":")[0]
                kinds[kind] = kinds.get(kind, 0) + 1
        return {
            "files": len(self.photos),
            "usable": len(self.usable),
            "rejected": len(self.photos) - len(self.usable),
            "flagged": len(flagged),
            "flags": kinds,
            "person_found": sum(1 for p in self.photos if p.person),
            "person_from": self.person_from,
            "faces_checked": self.faces_checked,
            "reference": self.reference,
            "left_out": sum(1 for p in self.photos if p.leave_out),
            "small": [p.file for p in self.photos if p.enlarged and p.enlarged > 1],
        }

    def to_json(self) -> dict:
        return {"folder": self.folder, "summary": self.summary(), "faces_checked": self.faces_checked,
                "reference": self.reference, "photos": [asdict(p) for p in self.photos]}


# ---------------------------------------------------------------- the checks, as pure functions


def sharpness(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of an (H, W) 0-255 image: low means blurry."""
    g = np.asarray(gray, dtype=np.float64)
    lap = -4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    return float(lap.var())


def tile_sharpness(gray: np.ndarray, tiles: int = 4) -> float:
    """The sharpest of `tiles`² tiles: a photo with a sharp subject and a soft background is sharp."""
    h, w = gray.shape
    return max(
        sharpness(gray[i * h // tiles:(i + 1) * h // tiles, j * w // tiles:(j + 1) * w // tiles])
        for i in range(tiles) for j in range(tiles)
    )


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes of equal length."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def upscale_factor(width: int, height: int, size: tuple[int, int]) -> float:
    """How much the centre crop of a `width x height` photo is enlarged to reach `size` = (w, h)."""
    from lookalike.data.buckets import crop_box

    left, top, right, bottom = crop_box(width, height, size)
    return max(size[0] / (right - left), size[1] / (bottom - top))


def original_first(check: PhotoCheck) -> tuple:
    """Sort key that puts an original before its copies: copies get longer names ("IMG_1 copy.jpg",
    "IMG_1(1).jpg", "copy-of-IMG_1.jpg"), so the shortest name is taken as the original, then by name."""
    return len(check.file), check.file


def duplicate_flags(checks: list[PhotoCheck], max_bits: int) -> None:
    """Flag each photo that repeats another: the same bytes (`duplicate`), the same shot saved in another
    format under the same stem (`same shot`, e.g. IMG_1.HEIC and IMG_1.JPG), or a perceptual hash within
    `max_bits` (`near duplicate`, only flagged: bursts and similar scenes can be worth keeping). The flag
    lands on the copy (see `original_first`), never on the original."""
    seen: list[PhotoCheck] = []
    for check in sorted((c for c in checks if c.usable), key=original_first):
        same = next((e for e in seen if e.sha256 == check.sha256), None)
        near = min(seen, key=lambda e: hamming(check.phash, e.phash), default=None)
        bits = hamming(check.phash, near.phash) if near is not None else 64
        if same is not None:
            check.flags.append(f"duplicate: the same file as {same.file}")
        elif near is not None and bits <= max_bits and Path(near.file).stem == Path(check.file).stem:
            check.flags.append(f"same shot: {near.file} in another format ({bits} of 64 hash bits differ)")
        elif near is not None and bits <= max_bits:
            check.flags.append(f"near duplicate: looks like {near.file} ({bits} of 64 hash bits differ)")
        seen.append(check)


def stem_flags(checks: list[PhotoCheck]) -> None:
    """Flag photos that share a stem: each has its own caption file, `IMG_1.HEIC.txt` and `IMG_1.JPG.txt`."""
    by_stem: dict[str, list[PhotoCheck]] = {}
    for check in checks:
        if Path(check.file).suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(Path(check.file).stem, []).append(check)
    for group in (g for g in by_stem.values() if len(g) > 1):
        for check in group:
            others = ", ".join(c.file for c in group if c is not check)
            check.flags.append(f"shares its name with {others}: its caption file is {check.file}.txt")


def leave_out_reason(check: PhotoCheck, faces_checked: bool) -> str | None:
    """Why training leaves this photo out by default, or None: unreadable, not a photo file, a duplicate,
    the same shot again, blurry, or (when faces decide) the person not in it."""
    if not check.usable:
        return f"cannot be read: {check.reason}"
    for flag in check.flags:
        kind = flag.split(":")[0]
        if kind in ("duplicate", "same shot", "blurry", "not used by training"):
            return flag
        if faces_checked and kind in ("person not found", "no face found"):
            return flag
    return None


def pick_person(faces_per_photo: list[list["Face"]], distance: float) -> np.ndarray | None:  # noqa: F821
    """The embedding of the face that appears in the most photos (the person a photo folder is about)."""
    best, best_count = None, 0
    for faces in faces_per_photo:
        for face in faces:
            count = sum(any(np.linalg.norm(face.embedding - f.embedding) < distance for f in other)
                        for other in faces_per_photo)
            if count > best_count:
                best, best_count = face.embedding, count
    return best


# ---------------------------------------------------------------- a folder


def candidate_files(folder: Path) -> list[Path]:
    """Every file of `folder` a person may have meant as a photo: all but hidden files and sidecars."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in SIDECAR_SUFFIXES)


def check_folder(folder: str | Path) -> Path:
    """The folder, or a ConfigError naming it when it is missing or holds no files."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(f"photo folder {str(path)!r} does not exist or is not a folder; give the folder of the person's photos")
    if not candidate_files(path):
        raise ConfigError(f"photo folder {str(path)!r} is empty (no photo files); copy the person's photos into it "
                          f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    return path


def resolve_reference(cfg) -> Path | None:
    """caption.reference as a file: a path as given, else a photo of that name in dataset.photos."""
    ref = cfg.caption.reference
    if ref is None:
        return None
    path = Path(ref).expanduser()
    if not path.is_file() and cfg.dataset.photos and (Path(cfg.dataset.photos) / ref).is_file():
        path = Path(cfg.dataset.photos) / ref
    if not path.is_file():
        where = f" nor a photo in {cfg.dataset.photos}" if cfg.dataset.photos else ""
        raise ConfigError(f"caption.reference = {ref!r} is neither a file{where}; give the path of a clear photo of "
                          "the person, or the name of one of their photos (e.g. --reference selfie.jpg)")
    return path


def reference_face(path: Path, cfg, setting: str = "caption.reference", who: str = "the person") -> "Face":  # noqa: F821
    """The largest face of the reference photo, or a ConfigError naming the file and the setting (another
    person's reference: `setting` dataset.people[i].reference, `who` their trigger)."""
    from lookalike.ingest.decode import PhotoRejected, decode
    from lookalike.ingest.faces import find_faces

    if not path.is_file():
        raise ConfigError(f"{setting} = {str(path)!r} not found; give a photo file, or the name of one of "
                          "the photos in dataset.photos")
    try:
        image = decode(path, draft_side=cfg.doctor.face_side).image
    except PhotoRejected as e:
        raise ConfigError(f"{setting} = {str(path)!r} cannot be used: {e.reason}") from None
    faces = find_faces(image, cfg.doctor.face_side, cfg.doctor.min_face_score)
    if not faces:
        raise ConfigError(f"{setting} = {str(path)!r}: no face found in it; choose a clear, well-lit photo "
                          f"of {who} facing the camera (the write-up used a selfie)")
    return faces[0]


def examine(folder: str | Path, cfg, reference: Path | None = None,
            on_photo: Callable[[PhotoCheck], None] | None = None) -> DoctorReport:
    """Check every file of `folder` with the settings of `cfg` (dataset.resolution/aspect, doctor.*)."""
    import imagehash

    from lookalike.data.buckets import training_size
    from lookalike.ingest.decode import PhotoRejected, decode
    from lookalike.ingest.faces import face_distance, find_faces, frame_position

    folder = check_folder(folder)
    doc = cfg.doctor
    checks, faces_of, widths = [], [], []  # widths: of the (possibly draft-reduced) image the faces were found in
    for path in candidate_files(folder):
        check = PhotoCheck(path.name, usable=False)
        faces, width = [], 0
        try:
            decoded = decode(path, draft_side=doc.face_side)
        except PhotoRejected as e:
            check.reason = e.reason
        else:
            image = decoded.image
            width = image.width
            check.usable = True
            (check.width, check.height), check.format, check.notes = decoded.full_size, decoded.format, decoded.notes
            check.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
            check.phash = str(imagehash.phash(image))
            faces = find_faces(image, doc.face_side, doc.min_face_score)
            check.faces = len(faces)
            check.sharpness = round(_photo_sharpness(image, faces), 1)
            size = training_size(check.width, check.height, cfg.dataset.resolution, cfg.dataset.aspect)
            check.training_size = size
            _local_flags(check, path, size, doc)
        checks.append(check)
        faces_of.append(faces)
        widths.append(width)
        if on_photo:
            on_photo(check)

    duplicate_flags(checks, doc.near_duplicate_bits)
    stem_flags(checks)
    if reference is not None:
        person, person_from = reference_face(reference, cfg).embedding, f"reference photo {reference.name}"
    else:
        person = pick_person(faces_of, doc.face_distance)
        found = sum(any(face_distance(f.embedding, person) < doc.face_distance for f in fs) for fs in faces_of) if person is not None else 0
        person_from = f"the face in most photos ({found})" if person is not None else "no face found in any photo"
    usable = [c for c in checks if c.usable]
    faces_checked = bool(usable) and sum(1 for c in usable if c.faces) * 2 >= len(usable)
    best = None  # (face area, name) of the clearest single-face photo of the person: the default reference
    for check, faces, width in zip(checks, faces_of, widths):
        if not check.usable or person is None or not faces:
            if check.usable and not faces and faces_checked:
                check.flags.append("no face found")
            continue
        distances = [face_distance(f.embedding, person) for f in faces]
        nearest = int(np.argmin(distances))
        check.person_distance = round(distances[nearest], 3)
        check.person = distances[nearest] < doc.face_distance
        if check.person:
            check.position = frame_position(faces[nearest], width)
            area = faces[nearest].area / max(1, width) ** 2  # a share of the photo: draft decoding shrinks pixels
            if len(faces) == 1 and not check.flags and (best is None or area > best[0]):
                best = (area, check.file)
        else:
            check.flags.append(f"person not found: {len(faces)} face(s), none within {doc.face_distance} of the person "
                               f"(nearest {distances[nearest]:.2f})")
    for check in checks:
        check.leave_out = leave_out_reason(check, faces_checked)
    chosen = str(reference) if reference is not None else (str(folder / best[1]) if best else None)
    return DoctorReport(str(folder), person_from, checks, faces_checked, chosen)


def _photo_sharpness(image, faces) -> float:
    """Sharpness of the largest face (scaled to 64², so it does not depend on the photo's size), else of the
    sharpest tile at 512 px."""
    gray = image.convert("L")
    if faces:
        left, top, right, bottom = faces[0].box
        crop = gray.crop((max(0, left), max(0, top), min(gray.width, right), min(gray.height, bottom)))
        return sharpness(np.asarray(crop.resize((SHARPNESS_SIDE, SHARPNESS_SIDE))))
    scale = min(1.0, 512 / max(gray.size))
    small = gray.resize((max(8, round(gray.width * scale)), max(8, round(gray.height * scale))))
    return tile_sharpness(np.asarray(small))


def _local_flags(check: PhotoCheck, path: Path, size: tuple[int, int], doc) -> None:
    """Flags one photo earns on its own (duplicates and identity need the whole folder). Enlargement is
    recorded, not flagged: most phone photos are fine, and the summary lists the small ones once."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        check.flags.append(f"not used by training: rename it with one of {', '.join(sorted(IMAGE_SUFFIXES))}")
    check.enlarged = round(upscale_factor(check.width, check.height, size), 2)
    if check.sharpness is not None and check.sharpness < doc.min_sharpness:
        check.flags.append(f"blurry: sharpness {check.sharpness:.0f} < doctor.min_sharpness {doc.min_sharpness:g}")
