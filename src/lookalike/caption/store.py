"""Captions on disk: `captions.jsonl` in the run folder and a `.txt` beside each photo.

    RUN/caption/captions.jsonl   one record per photo: caption, where it came from, flags, usage, request key
    photos/IMG_0001.txt          the caption alone: the format every trainer reads

Both are replaced atomically (temporary file + rename) the moment a caption arrives, record first:
a run killed at any instant leaves every finished caption on disk, and a re-run restores a `.txt`
from its record instead of paying for it again. A `.txt` whose text is not what lookalike wrote is
the user's, and is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

MODEL, EXISTING, EDITED = "model", "existing", "edited"  # where a caption came from


@dataclass
class Record:
    photo: str  # file name in dataset.photos
    caption: str | None = None
    source: str | None = None  # model, existing (a .txt was there), edited (the user changed ours)
    key: str | None = None  # request key the caption was made under (model captions)
    final: bool = True  # False: a transient failure; the next run asks again
    flags: list[str] = field(default_factory=list)
    asks: int = 0  # chat requests made for it (re-asks included; transport retries not counted)
    usage: dict = field(default_factory=dict)  # prompt_tokens, completion_tokens summed over asks
    txt_sha256: str | None = None  # hash of the .txt text lookalike wrote or accepted


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def caption_path(photo: Path) -> Path:
    """The photo's caption file (IMG_1.HEIC.txt when IMG_1.JPG shares its stem: lookalike.data.photos)."""
    from lookalike.data.photos import caption_file

    return caption_file(photo)


class CaptionStore:
    """The records of one run, safe to update from several worker threads."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, Record] = {}
        self._lock = threading.Lock()
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    data = json.loads(line)
                    self.records[data["photo"]] = Record(**data)

    def get(self, photo: str) -> Record | None:
        return self.records.get(photo)

    def forget(self, photo: str) -> None:
        """Drop a photo's record (the next caption run asks for it again)."""
        with self._lock:
            if self.records.pop(photo, None) is not None:
                lines = [json.dumps(asdict(r), ensure_ascii=False) for _, r in sorted(self.records.items())]
                write_text_atomic(self.path, "".join(line + "\n" for line in lines))

    def put(self, record: Record, txt: Path | None = None) -> None:
        """Save `record` (the whole file, atomically), then its caption to `txt` if given."""
        with self._lock:
            if txt is not None and record.caption is not None:
                record.txt_sha256 = text_sha(record.caption + "\n")
            self.records[record.photo] = record
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lines = [json.dumps(asdict(r), ensure_ascii=False) for _, r in sorted(self.records.items())]
            write_text_atomic(self.path, "\n".join(lines) + "\n")
            if txt is not None and record.caption is not None:
                write_text_atomic(txt, record.caption + "\n")
