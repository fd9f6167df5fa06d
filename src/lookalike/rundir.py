"""The run directory: one folder per run, each stage writing its artefacts and a manifest.

    runs/arthur/
      config.yaml            the resolved config every stage of this run reads
      generate/<stamp>/      images, grid.png, manifest.json   (one folder per `generate` call)
      <stage>/manifest.json  what the stage did, with which inputs, and when

Stages hand off through these files only, so any stage can be rerun alone.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
CONFIG = "config.yaml"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def timestamp() -> str:
    """Local time as a folder name, e.g. 20261126-171502."""
    return time.strftime("%Y%m%d-%H%M%S")


class RunDir:
    """Paths of one run. Creating the object touches nothing on disk; `stage()` creates folders."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG

    def stage(self, name: str) -> Path:
        """The folder of a stage, created if missing."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def new_stage_folder(self, name: str) -> Path:
        """A fresh folder `<stage>/<stamp>` that earlier calls' outputs are never written over."""
        base = self.root / name / timestamp()
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        path.mkdir(parents=True)
        return path

    def write_manifest(self, folder: Path, stage: str, **info: Any) -> Path:
        """Record what a stage produced: `folder/manifest.json`."""
        from lookalike import __version__

        record = {
            "stage": stage,
            "lookalike": __version__,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **info,
        }
        path = folder / MANIFEST
        write_json_atomic(path, record)
        return path

    @staticmethod
    def read_manifest(folder: Path) -> dict[str, Any] | None:
        path = Path(folder) / MANIFEST
        return json.loads(path.read_text()) if path.exists() else None
