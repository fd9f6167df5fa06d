"""Uploads into a run folder: photos (and caption .txt files) as files or inside a zip.

Every name is reduced to a plain file name made of safe characters, so no upload lands outside
RUN/photos/ whatever it was called ("../../x.png", "C:\\x.png", zip members with folders, hidden names).
Sizes are checked before anything is written: each file, and the whole of a zip once unpacked (a zip
bomb is refused from its table of contents).
"""

from __future__ import annotations

import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from lookalike.errors import ConfigError

KEPT_SUFFIXES = {".txt"}  # caption files travel with their photos


def safe_name(name: str) -> str:
    """A plain file name from whatever an upload was called: the last path part, safe characters only."""
    base = re.split(r"[\\/]", name.strip())[-1]
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip(" .")
    base = base.lstrip(".-_ ") or "upload"
    stem, dot, suffix = base.rpartition(".")
    if dot and len(base) > 120:
        base = stem[: 119 - len(suffix)] + "." + suffix
    return base[:120]


@dataclass
class Saved:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "name: why"

    def line(self, folder: Path) -> str:
        head = f"added {len(self.written)} file(s) to {folder}"
        return head + (f"; skipped {len(self.skipped)}: {'; '.join(self.skipped)}" if self.skipped else "")


def _wanted(name: str) -> bool:
    from lookalike.data.photos import IMAGE_SUFFIXES

    suffix = Path(name).suffix.lower()
    return suffix in IMAGE_SUFFIXES or suffix in KEPT_SUFFIXES


def _target(folder: Path, name: str) -> Path:
    """`folder/name`, or `name-2.ext`, ... when a different file already has that name."""
    path = folder / name
    n = 1
    while path.exists():
        n += 1
        path = folder / f"{Path(name).stem}-{n}{Path(name).suffix}"
    return path


def save_uploads(uploads: list[tuple[str, Path]], folder: Path, max_bytes: int) -> Saved:
    """Copy (original name, temporary file) pairs into `folder`; zips are unpacked (their files only).

    A file over `max_bytes`, or a zip that unpacks to more, is refused with the limit in the message,
    before anything of it is written."""
    folder.mkdir(parents=True, exist_ok=True)
    saved = Saved()
    limit_mb = max_bytes / 2**20
    for original, tmp in uploads:
        name = safe_name(original)
        size = Path(tmp).stat().st_size
        if size > max_bytes:
            raise ConfigError(f"{name} is {size / 2**20:.1f} MB, over the upload limit of {limit_mb:.0f} MB; "
                              "upload fewer photos at a time, or start the app with a larger --max-upload-mb")
        if name.lower().endswith(".zip"):
            _unzip(Path(tmp), name, folder, max_bytes, saved)
        elif _wanted(name):
            with open(tmp, "rb") as src:
                _place(src, name, folder, saved)
        else:
            saved.skipped.append(f"{name}: not a photo or a caption .txt")
    return saved


def _unzip(path: Path, name: str, folder: Path, max_bytes: int, saved: Saved) -> None:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ConfigError(f"{name} is not a zip file that can be read; upload the photos themselves, or zip them "
                          "again") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        total = sum(m.file_size for m in members if _wanted(m.filename))
        if total > max_bytes:
            raise ConfigError(f"{name} unpacks to {total / 2**20:.1f} MB, over the upload limit of "
                              f"{max_bytes / 2**20:.0f} MB; upload it in parts, or start the app with a larger "
                              "--max-upload-mb")
        for member in members:
            inner = safe_name(member.filename)
            if member.filename.startswith("__MACOSX/") or not _wanted(inner):
                saved.skipped.append(f"{name}/{member.filename}: not a photo or a caption .txt")
                continue
            with archive.open(member) as src:
                _place(src, inner, folder, saved)


def _place(src, name: str, folder: Path, saved: Saved) -> None:
    """Write the stream as `folder/name` (renamed when another file has that name; skipped when the same
    file is already there, so uploading a folder twice adds nothing)."""
    import filecmp
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=folder)
    with os.fdopen(fd, "wb") as dst:
        shutil.copyfileobj(src, dst)
    existing = folder / name
    if existing.is_file() and filecmp.cmp(tmp, existing, shallow=False):
        os.unlink(tmp)
        saved.skipped.append(f"{name}: already there")
        return
    target = _target(folder, name)
    os.replace(tmp, target)
    saved.written.append(target.name)
