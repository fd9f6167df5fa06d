"""A run folder's settings over its life: chosen freely until training starts, fixed after.

    new folder          preset < --config < --set < the verb's flags (--photos, --trigger, ...)
    before training     the same, on top of the run's own settings (what RUN/config.yaml sets apart from
                        its preset): a later command may switch preset or change any setting
    training started    what is learned (model, dataset, LoRA shape, seed) is fixed; `train --resume`
                        may change the recipe; other stages may change their own sections only

The resolved config is not written here: `RunDir.stage` writes it with the command's first artefact,
so a command refused before then leaves the folder as it was, and the same command then works.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lookalike.config.loading import flat_settings, load_config, own_settings
from lookalike.errors import ConfigError
from lookalike.rundir import RunDir

log = logging.getLogger(__name__)

# What defines a run: the model, the photos and captions (and the drawn grounding images), the LoRA's shape
# and the seed.
RUN_IDENTITY = ("model", "dataset", "ground", "lora", "runtime.seed")


def identity_settings(cfg) -> dict:
    """The settings that must not change once training has started."""
    return flat_settings(cfg, RUN_IDENTITY)


def _changes(before: dict, after: dict) -> list[str]:
    keys = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in keys]


def resolve(rd: RunDir, photos=None, trigger=None, preset=None, config=None, overrides=(), extra=()):
    """The config this command asks for (nothing checked against the run's state, nothing written)."""
    existing = load_config(rd.config_path) if rd.config_path.is_file() else None
    base = (str(rd.config_path), own_settings(existing)) if existing is not None else None
    cfg = load_config(config, preset=preset or (existing.preset if existing else None),
                      overrides=[*overrides, *extra], base=base)
    if photos is not None:
        cfg.dataset.photos = str(Path(photos).expanduser().resolve())
    if trigger is not None:
        cfg.dataset.trigger = trigger
    for section, key in (("dataset", "photos"), ("dataset", "grounding")):
        value = getattr(getattr(cfg, section), key)
        if value and not Path(value).expanduser().is_absolute():
            setattr(getattr(cfg, section), key, str(Path(value).expanduser().resolve()))
    return cfg, existing


def prepare_run(run: Path, photos=None, trigger=None, preset=None, config=None, overrides=(),
                resume: bool = False, training: bool = True) -> tuple:
    """(config, RunDir) for a verb on `run`, checked against the run's state; the config is pending on the
    RunDir (written with the first artefact). `training`: the verb starts (or resumes) training."""
    rd = RunDir(run)
    if resume and not rd.config_path.is_file():
        raise ConfigError(f"--resume: {run} has no config.yaml, so there is no run to resume; check the folder")
    cfg, existing = resolve(rd, photos, trigger, preset, config, overrides)
    if existing is not None and rd.training_started:
        _check_after_training_started(rd, cfg, existing, resume, training)
    rd.config = cfg
    rd._config_saved = existing is not None and cfg == existing
    return cfg, rd


def _check_after_training_started(rd: RunDir, cfg, existing, resume: bool, training: bool) -> None:
    """Once training has started, refuse what would mix two runs in one folder; warn on a changed recipe."""
    if training and not resume:
        raise ConfigError(
            f"{rd.root} already holds a training run ({rd.train_dir}); continue it with --resume, "
            "or choose a new run folder (nothing was deleted)"
        )
    if changed := _changes(identity_settings(existing), identity_settings(cfg)):
        raise ConfigError(
            f"{rd.root} has started training, so what it learns is fixed; this command changes "
            f"{'; '.join(changed[:6])}. Drop those settings, or start a new run folder"
        )
    if resume and (recipe := _changes(flat_settings(existing, ("train",)), flat_settings(cfg, ("train",)))):
        log.warning("resuming with a changed recipe (%s): training continues with it, so the result will differ "
                    "from an uninterrupted run", "; ".join(recipe))
