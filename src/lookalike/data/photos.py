"""The training set as files: photos with a caption `.txt` beside each (the format every trainer reads).

    photos/IMG_0001.jpg   photos/IMG_0001.txt  ->  "Arthur on the left with a friend, on a beach"

Photos that share a stem (phones export `IMG_1.HEIC` and `IMG_1.JPG`) cannot share `IMG_1.txt`: each
then has its own caption file named after the whole file name, `IMG_1.HEIC.txt` and `IMG_1.JPG.txt`
(`caption_file`). Caption files are UTF-8; one that is not is read as Windows-1252 with a warning
naming it. Everything here is checked before any model is loaded, and every problem names the file
and the fix.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from lookalike.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif"}
# How to leave a photo out of training, for messages that do not know the run folder.
LEAVE_OUT = "leave it out: list it under `exclude:` in the run's photos.yaml, or move it out of the folder"


@dataclass(frozen=True)
class Photo:
    """One training example: the image file and its caption."""

    path: Path
    caption: str


def shares_stem(photo: Path) -> list[Path]:
    """The other images of `photo`'s folder with the same stem (`IMG_1.JPG` for `IMG_1.HEIC`)."""
    import glob

    return sorted(p for p in photo.parent.glob(glob.escape(photo.stem) + ".*")
                  if p != photo and p.stem == photo.stem and p.suffix.lower() in IMAGE_SUFFIXES)


def caption_file(photo: Path) -> Path:
    """Where `photo`'s caption lives: `IMG_1.txt`, or `IMG_1.HEIC.txt` when another image shares the stem."""
    photo = Path(photo)
    return photo.with_name(photo.name + ".txt") if shares_stem(photo) else photo.with_suffix(".txt")


def read_caption(path: Path) -> str:
    """A caption file's text, stripped. Not UTF-8: read as Windows-1252 (what Notepad wrote for years),
    with a warning naming the file."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig").strip()
    except UnicodeDecodeError as e:
        text = data.decode("cp1252", errors="replace").strip()
        log.warning("%s is not UTF-8 (byte %d); read as Windows-1252: %r. Save it as UTF-8 to be sure of "
                    "every character", path, e.start, text[:80])
        return text


def has_trigger(caption: str, trigger: str) -> bool:
    """Whether `trigger` appears in `caption` as a whole word (case-sensitive: it is a name)."""
    return re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", caption) is not None


def find_photos(folder: str | Path | None, trigger: str, missing_trigger: str = "refuse",
                names: list[str] | None = None, leave_out: str = LEAVE_OUT, setting: str = "dataset.photos") -> list[Photo]:
    """The photos of `folder` (sorted by name) with their captions; only `names` when given (the
    doctor's selection, lookalike.data.selection).

    Raises ConfigError when the folder is missing or empty, when a photo has no caption file, or
    (with missing_trigger="refuse") when captions do not name the person. `leave_out` says how to
    leave a photo out of training, for the messages; `setting` is the folder's config key.
    """
    if folder is None:
        raise ConfigError(f"{setting} is not set: give the folder of photos, e.g. --photos ~/photos/arthur")
    photos = read_captioned_folder(folder, setting, "the folder of the person's photos", names, leave_out)
    _check_trigger(photos, trigger, missing_trigger, Path(folder).expanduser())
    return photos


def find_grounding(folder: str | Path | None, triggers: str | list[str]) -> list[Photo]:
    """The grounding photos (other people, captioned without any person's trigger), or [] when none are set.

    A caption that names a person is refused: it would teach the name from someone else's face.
    """
    if folder is None:
        return []
    photos = read_captioned_folder(folder, "dataset.grounding", "a folder of captioned photos of other people")
    for trigger in [triggers] if isinstance(triggers, str) else triggers:
        naming = [caption_file(p.path).name for p in photos if has_trigger(p.caption, trigger)]
        if naming:
            raise ConfigError(
                f"{len(naming)} caption(s) in dataset.grounding = {str(folder)!r} name the person {trigger!r} "
                f"({', '.join(naming[:3])}); grounding photos show other people: remove {trigger!r} from those "
                "captions, or move those photos to that person's photos folder"
            )
    return photos


def read_captioned_folder(folder: str | Path, setting: str, what: str, names: list[str] | None = None,
                          leave_out: str = LEAVE_OUT) -> list[Photo]:
    """Images of `folder` sorted by name (only `names` when given), each with the caption of its caption
    file; `setting` names the config key in errors and `what` says what the folder should hold."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{setting} = {str(folder)!r} is not a folder; give {what}")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if names is not None:
        wanted = set(names)
        images = [p for p in images if p.name in wanted]
    if not images:
        raise ConfigError(
            f"{setting} = {str(folder)!r} holds no photos ({', '.join(sorted(IMAGE_SUFFIXES))}); "
            f"point it at {what}"
        )
    uncaptioned = [p for p in images if not caption_file(p).is_file()]
    if uncaptioned:
        _refuse_uncaptioned(uncaptioned, len(images), folder, leave_out)
    photos = [Photo(p, read_caption(caption_file(p))) for p in images]
    empty = [caption_file(p.path).name for p in photos if not p.caption]
    if empty:
        raise ConfigError(f"{len(empty)} caption file(s) in {folder} are empty: {', '.join(empty[:5])}; write a caption in each")
    return photos


def _refuse_uncaptioned(uncaptioned: list[Path], total: int, folder: Path, leave_out: str) -> None:
    """No caption file: an unreadable file is named with its reason (a caption would not help); otherwise
    say which caption file to write, or to run `caption`."""
    from lookalike.ingest.decode import PhotoRejected, usable_size

    for p in uncaptioned:
        try:
            usable_size(p)
        except PhotoRejected as e:
            raise ConfigError(f"photo {str(p)!r} cannot be used: {e.reason}; {leave_out}") from None
    shown = ", ".join(f"{p.name} ({caption_file(p).name})" for p in uncaptioned[:5])
    more = f" and {len(uncaptioned) - 5} more" if len(uncaptioned) > 5 else ""
    raise ConfigError(
        f"{len(uncaptioned)} of {total} photos in {folder} have no caption file: {shown}{more}. "
        "Write the caption file named in brackets beside each photo, or run `lookalike caption`"
    )


def _check_trigger(photos: list[Photo], trigger: str, missing_trigger: str, folder: Path) -> None:
    lacking = [caption_file(p.path).name for p in photos if not has_trigger(p.caption, trigger)]
    if not lacking:
        return
    message = (
        f"{len(lacking)} of {len(photos)} captions in {folder} do not contain the trigger word {trigger!r} "
        f"(e.g. {', '.join(lacking[:3])}); the LoRA only learns the name from captions that say it"
    )
    if missing_trigger == "refuse":
        raise ConfigError(
            f"{message}. Add {trigger!r} to those captions, set dataset.trigger to the name they use, "
            "or set dataset.missing_trigger=warn to train anyway"
        )
    log.warning("%s; training anyway (dataset.missing_trigger=warn)", message)


def load_rgb(path: Path, leave_out: str = LEAVE_OUT) -> "PIL.Image.Image":  # noqa: F821
    """Decode a photo upright in 8-bit RGB (see lookalike.ingest.decode); names the file if it cannot be used."""
    from lookalike.ingest.decode import PhotoRejected, decode

    try:
        return decode(path).image
    except PhotoRejected as e:
        raise ConfigError(f"photo {str(path)!r} cannot be used: {e.reason}; {leave_out}") from None
