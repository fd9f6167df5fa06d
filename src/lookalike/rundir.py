"""The run directory: one folder per run, each stage writing its artefacts and a manifest.

    runs/arthur/
      config.yaml                    the resolved config every stage of this run reads
      photos.yaml                    the user's include / exclude lists (editable by hand)
      ingest/doctor.json             the dataset doctor's record (usable? person? duplicates?)
      caption/captions.jsonl, review.html
      ground/ground-0000.png, .txt   grounding images the base model drew of other people (ground.count)
      cache/index.json, latents/, text/
      train/resume/last.ckpt, checkpoints/step-*.safetensors, lora.safetensors, lora-kohya.safetensors
                                     (and lora-raw.safetensors with train.ema_decay)
      eval/metrics.json              per-checkpoint metrics and the recommendation
      report.html
      generate/<stamp>/              images, grid.png, manifest.json   (one folder per `generate` call)
      <stage>/manifest.json          what the stage did, with which inputs, and when
      .lock                          held (flock) by the one command writing the run; says who it is
      app/jobs/<id>.json, .log       jobs the web app started (`lookalike app`): command, pid, exit code

Stages hand off through these files only, so any stage can be rerun alone. Every path a stage reads
from another stage is spelled here, once.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lookalike.errors import LookalikeError

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


def ensure_writable(folder: Path, what: str, fix: str) -> None:
    """Refuse, before anything is spent, a folder this stage must write to but cannot.

    Tries what the stage will do (create a file), so read-only mounts are caught as well as
    permissions (which root ignores). `what` names the folder's role, `fix` what the user can do.
    """
    from lookalike.errors import ConfigError

    folder = Path(folder)
    probe_in = folder
    while not probe_in.exists() and probe_in.parent != probe_in:
        probe_in = probe_in.parent  # the folder will be created inside its nearest existing parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=".lookalike-write-test-", dir=probe_in)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(f"{what} {str(folder)!r} is not writable ({reason}); {fix}") from None


LOCK = ".lock"


class RunBusy(LookalikeError):
    """Another process is writing the run folder (see `hold`)."""


def _read_holder(root: Path) -> dict:
    try:
        return json.loads((root / LOCK).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def lock_holder(root: str | Path) -> dict | None:
    """Who writes the run folder now ({"pid", "command", "since"}), or None when nobody does. The lock
    is an flock on the folder itself, so a process that died, however it died, holds nothing."""
    import fcntl

    root = Path(root)
    if not root.is_dir():
        return None
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(root)
    finally:
        os.close(fd)  # closing releases a lock taken here
    return None


def describe_holder(holder: dict) -> str:
    return f"`{holder.get('command', 'another command')}` (pid {holder.get('pid', '?')}, since {holder.get('since', '?')})"


class hold:  # noqa: N801 - used as `with hold(root, command):`
    """Hold the run folder's write lock while a command writes it; a second writer is refused at once.

    The lock is an flock on the folder (so it goes with its process, however that ends); RUN/.lock says
    who holds it and is removed on release, so a refused command leaves the folder as it was. A folder
    that does not exist yet is not locked. Re-entrant inside one process.
    """

    _held: dict[Path, int] = {}

    def __init__(self, root: str | Path, command: str):
        self.root = Path(root).resolve()
        self.command = command
        self.fd: int | None = None

    def __enter__(self):
        import fcntl

        if self.root in hold._held:
            hold._held[self.root] += 1
            return self
        if not self.root.is_dir():
            return self
        fd = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunBusy(f"{self.root} is being written by {describe_holder(_read_holder(self.root))}; wait for "
                          "it to end (or stop it), then try again") from None
        self.fd = fd
        hold._held[self.root] = 1
        try:
            write_json_atomic(self.root / LOCK, {"pid": os.getpid(), "command": self.command,
                                                 "since": datetime.now().isoformat(timespec="seconds")})
        except OSError:
            pass  # a read-only folder: the stage itself will say so
        return self

    def __exit__(self, *exc) -> None:
        if self.root not in hold._held:
            return
        hold._held[self.root] -= 1
        if hold._held[self.root] == 0:
            del hold._held[self.root]
            (self.root / LOCK).unlink(missing_ok=True)
            os.close(self.fd)  # releases the flock


class RunDir:
    """Paths of one run. Creating the object touches nothing on disk; `stage()` creates folders.

    `config` is the run's config as this command resolved it: it is written to RUN/config.yaml when the
    command first writes anything else into the run (its first `stage()` folder), so a command refused
    before that leaves the folder exactly as it was.
    """

    def __init__(self, root: str | Path, config=None):
        self.root = Path(root)
        self.config = config
        self._config_saved = config is None

    def save_config(self) -> None:
        """Write the pending config to RUN/config.yaml (once)."""
        from lookalike.config import save_config

        if not self._config_saved:
            save_config(self.config, self.config_path)
            self._config_saved = True

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG

    # ------------------------------------------------------------ every artefact a stage hands on

    @property
    def selection_path(self) -> Path:
        """The user's include / exclude lists of photo names (see lookalike.data.selection)."""
        return self.root / "photos.yaml"

    def person(self, trigger: str) -> RunDir:
        """The folder of another person's records (one of dataset.people): RUN/people/<trigger>/, with their
        doctor's record, photos.yaml and captions, laid out as in a run of their own."""
        return RunDir(self.root / "people" / trigger)

    @property
    def doctor_record(self) -> Path:
        return self.root / "ingest" / "doctor.json"

    @property
    def captions_record(self) -> Path:
        return self.root / "caption" / "captions.jsonl"

    @property
    def caption_review(self) -> Path:
        return self.root / "caption" / "review.html"

    @property
    def ground_dir(self) -> Path:
        """Grounding images the base model drew (lookalike.data.ground), each PNG with its prompt's .txt."""
        return self.root / "ground"

    @property
    def cache_index(self) -> Path:
        return self.root / "cache" / "index.json"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def resume_checkpoint(self) -> Path:
        """The full resumable state (LoRA, optimiser, counters); its existence means training has started."""
        return self.train_dir / "resume" / "last.ckpt"

    @property
    def checkpoints_dir(self) -> Path:
        return self.train_dir / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints_dir / f"step-{step:06d}.safetensors"

    @property
    def lora(self) -> Path:
        """The trained LoRA, diffusers/PEFT format."""
        return self.train_dir / "lora.safetensors"

    @property
    def lora_raw(self) -> Path:
        """With train.ema_decay: the last raw LoRA weights (lora.safetensors holds their average)."""
        return self.train_dir / "lora-raw.safetensors"

    @property
    def lora_kohya(self) -> Path:
        """The same LoRA in kohya/ComfyUI keys."""
        return self.train_dir / "lora-kohya.safetensors"

    @property
    def eval_metrics(self) -> Path:
        return self.root / "eval" / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def training_started(self) -> bool:
        """After this, what is learned (model, photos, LoRA shape, seed) is fixed for the run."""
        return (self.train_dir / "resume").exists() or (self.train_dir / MANIFEST).exists()

    def stage(self, name: str) -> Path:
        """The folder of a stage, created if missing (and the pending config written first)."""
        self.save_config()
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
