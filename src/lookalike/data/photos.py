"""The training set as files: photos with a caption `.txt` beside each (the format every trainer reads).

    photos/IMG_0001.jpg   photos/IMG_0001.txt  ->  "Arthur on the left with a friend, on a beach"

Everything here is checked before any model is loaded, and every problem names the file and the fix.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from lookalike.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif"}


@dataclass(frozen=True)
class Photo:
    """One training example: the image file and its caption."""

    path: Path
    caption: str


def has_trigger(caption: str, trigger: str) -> bool:
    """Whether `trigger` appears in `caption` as a whole word (case-sensitive: it is a name)."""
    return re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", caption) is not None


def find_photos(folder: str | Path | None, trigger: str, missing_trigger: str = "refuse") -> list[Photo]:
    """The photos of `folder` (sorted by name) with their captions.

    Raises ConfigError when the folder is missing or empty, when a photo has no caption file, or
    (with missing_trigger="refuse") when captions do not name the person.
    """
    if folder is None:
        raise ConfigError("dataset.photos is not set: give the folder of photos, e.g. --photos ~/photos/arthur")
    photos = read_captioned_folder(folder, "dataset.photos", "the folder of the person's photos")
    _check_trigger(photos, trigger, missing_trigger, Path(folder).expanduser())
    return photos


def find_grounding(folder: str | Path | None, trigger: str) -> list[Photo]:
    """The grounding photos (other people, captioned without the trigger), or [] when none are set.

    A caption that names the person is refused: it would teach the name from someone else's face.
    """
    if folder is None:
        return []
    photos = read_captioned_folder(folder, "dataset.grounding", "a folder of captioned photos of other people")
    naming = [p.path.with_suffix(".txt").name for p in photos if has_trigger(p.caption, trigger)]
    if naming:
        raise ConfigError(
            f"{len(naming)} caption(s) in dataset.grounding = {str(folder)!r} name the person {trigger!r} "
            f"({', '.join(naming[:3])}); grounding photos show other people: remove {trigger!r} from those "
            "captions, or move those photos to dataset.photos"
        )
    return photos


def read_captioned_folder(folder: str | Path, setting: str, what: str) -> list[Photo]:
    """Images of `folder` sorted by name, each with the caption of the .txt beside it; `setting` names
    the config key in errors and `what` says what the folder should hold."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{setting} = {str(folder)!r} is not a folder; give {what}")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ConfigError(
            f"{setting} = {str(folder)!r} holds no photos ({', '.join(sorted(IMAGE_SUFFIXES))}); "
            f"point it at {what}"
        )
    uncaptioned = [p.name for p in images if not p.with_suffix(".txt").is_file()]
    if uncaptioned:
        shown = ", ".join(uncaptioned[:5]) + (f" and {len(uncaptioned) - 5} more" if len(uncaptioned) > 5 else "")
        raise ConfigError(
            f"{len(uncaptioned)} of {len(images)} photos in {folder} have no caption file: {shown}. "
            "Write a .txt with the same name beside each photo (e.g. IMG_0001.txt), or run `lookalike caption`"
        )
    photos = [Photo(p, p.with_suffix(".txt").read_text(encoding="utf-8").strip()) for p in images]
    empty = [p.path.with_suffix(".txt").name for p in photos if not p.caption]
    if empty:
        raise ConfigError(f"{len(empty)} caption file(s) in {folder} are empty: {', '.join(empty[:5])}; write a caption in each")
    return photos


def _check_trigger(photos: list[Photo], trigger: str, missing_trigger: str, folder: Path) -> None:
    lacking = [p.path.with_suffix(".txt").name for p in photos if not has_trigger(p.caption, trigger)]
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


def load_rgb(path: Path) -> "PIL.Image.Image":  # noqa: F821
    """Decode a photo upright in 8-bit RGB (see lookalike.ingest.decode); names the file if it cannot be used."""
    from lookalike.ingest.decode import PhotoRejected, decode

    try:
        return decode(path).image
    except PhotoRejected as e:
        raise ConfigError(f"photo {str(path)!r} cannot be used: {e.reason}; remove it from dataset.photos or fix it") from None
