"""Which photos train: the dataset doctor's findings, then the user's own include / exclude lists.

    RUN/photos.yaml    include: [IMG_0042.jpg]     photos the doctor left out that should train
                       exclude: [IMG_0007.jpg]     photos that should not train, whatever the doctor says

By default a photo trains when the doctor (`lookalike ingest`) could read it, it is not a copy of
another photo (same bytes, or the same shot in another format), it is sharp, and - where faces can be
found in most photos - the person is in it. `exclude` wins over everything; `include` brings back a
photo the doctor left out, but never one that cannot be read. Caption, cache and train all read the
same selection, and each says in its first line how many photos it uses and why the others are out.
Without a doctor's record (ingest never ran), every image file is used and one that cannot be read
stops the stage with its name and this file as the fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from lookalike.errors import ConfigError
from lookalike.rundir import RunDir

log = logging.getLogger(__name__)

TEMPLATE = """\
# Which photos of dataset.photos train, by file name. lookalike never overwrites this file.
# The dataset doctor (`lookalike ingest`, RUN/ingest/doctor.json) leaves out by default: files it cannot
# read, copies of another photo, blurry photos and, where faces can be found, photos without the person.
include: []   # photos the doctor left out that should train anyway, e.g. [IMG_0042.jpg]
exclude: []   # photos that must not train, e.g. [IMG_0007.jpg]
"""


@dataclass
class Selection:
    """The photos a stage uses (file names in dataset.photos, sorted) and why each other file is out."""

    used: list[str]
    left_out: dict[str, str] = field(default_factory=dict)  # file name -> why
    doctor: bool = True  # the doctor's record was applied
    note: str | None = None  # e.g. why no photo was left out on face grounds

    def line(self, rd: RunDir) -> str:
        """One line for the start of a stage: how many photos are used and why the others are not."""
        total = len(self.used) + len(self.left_out)
        head = f"using {len(self.used)} of {total} photo files"
        if not self.doctor:
            head += " (not checked by the dataset doctor: `lookalike ingest` would)"
        if not self.left_out:
            return f"{head}" + (f"; {self.note}" if self.note else "")
        why = "; ".join(f"{name} ({reason})" for name, reason in sorted(self.left_out.items()))
        return f"{head}; left out: {why}. Change it in {rd.selection_path}"

    def announce(self, rd: RunDir, stage: str) -> None:
        """Log `line` as a stage's first line (through this module's logger, which `fit`, having printed
        the line once itself, quiets for the stages it runs)."""
        log.info("%s: %s", stage, self.line(rd))


def write_lists_template(rd: RunDir) -> None:
    """RUN/photos.yaml with empty lists and how to use them, unless the user's file is already there."""
    from lookalike.caption.store import write_text_atomic

    if not rd.selection_path.exists():
        rd.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(rd.selection_path, TEMPLATE)


def write_lists(rd: RunDir, include: list[str], exclude: list[str]) -> None:
    """RUN/photos.yaml with these lists under the template's explanations (the web app's photo ticks)."""
    import json

    from lookalike.caption.store import write_text_atomic

    rd.root.mkdir(parents=True, exist_ok=True)
    head = TEMPLATE.split("include:")[0]
    write_text_atomic(rd.selection_path, f"{head}include: {json.dumps(sorted(include))}\n"
                                         f"exclude: {json.dumps(sorted(exclude))}\n")


def read_lists(rd: RunDir) -> tuple[list[str], list[str]]:
    """(include, exclude) from RUN/photos.yaml; both empty when it does not exist."""
    import yaml

    path = rd.selection_path
    if not path.is_file():
        return [], []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeError) as e:
        raise ConfigError(f"{path} is not valid YAML ({str(e).splitlines()[0]}); it holds two lists of file "
                          "names, `include: [a.jpg]` and `exclude: [b.jpg]`: fix it or delete it") from None
    unknown = set(data) - {"include", "exclude"} if isinstance(data, dict) else {"(not a mapping)"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; it holds only "
                          "`include:` and `exclude:`, each a list of photo file names")
    lists = []
    for key in ("include", "exclude"):
        value = data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
            raise ConfigError(f"{path}: `{key}` must be a list of photo file names, e.g. {key}: [IMG_0001.jpg]")
        lists.append([str(v) for v in value])
    return lists[0], lists[1]


def choose(record: dict, include: list[str], exclude: list[str]) -> Selection:
    """The selection from a doctor's record (RUN/ingest/doctor.json) and the user's lists. Pure."""
    from lookalike.data.photos import IMAGE_SUFFIXES

    used, out = [], {}
    for photo in record["photos"]:
        name, reason = photo["file"], photo.get("leave_out")
        if name in exclude:
            out[name] = "excluded in photos.yaml"
        elif reason and name in include and photo["usable"] and Path(name).suffix.lower() in IMAGE_SUFFIXES:
            used.append(name)
        elif reason:
            out[name] = reason
        else:
            used.append(name)
    note = None if record.get("faces_checked", True) else \
        "faces found in fewer than half of the photos, so none is left out on face grounds"
    return Selection(sorted(used), out, True, note)


def all_images(folder: Path, exclude: list[str]) -> Selection:
    """Without a doctor's record: every image file of `folder`, less the user's exclusions."""
    from lookalike.data.photos import IMAGE_SUFFIXES

    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return Selection([n for n in names if n not in exclude], {n: "excluded in photos.yaml" for n in names if n in exclude},
                     doctor=False)


def current_selection(cfg, rd: RunDir, refresh: bool = True, setting: str = "dataset.photos") -> Selection:
    """The photos that train now. With a doctor's record that the photo folder has outgrown (files added,
    changed or removed since), the doctor runs again first when `refresh` (about a second per photo).
    `setting`: the folder's config key, for the messages (another person's: `person_runs`)."""
    from lookalike.ingest.stage import ingest_stage, is_current, read_record

    if cfg.dataset.photos is None:
        raise ConfigError(f"{setting} is not set: give the folder of photos, e.g. --photos ~/photos/arthur")
    folder = Path(cfg.dataset.photos).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{setting} = {str(folder)!r} is not a folder; give the folder of the person's photos")
    include, exclude = read_lists(rd)
    record = read_record(rd)
    if record is not None and record.get("folder") != str(folder):
        record = None  # the doctor checked another folder: it says nothing about this one
    if record is not None and refresh and not is_current(cfg, rd):
        log.info("the photos or the doctor's settings changed since `lookalike ingest`: checking them again")
        ingest_stage(cfg, rd)
        record = read_record(rd)
    if record is None:
        return all_images(folder, exclude)
    return choose(record, include, exclude)


def person_runs(cfg, rd: RunDir) -> list[tuple[object, RunDir]]:
    """(config, run folder) of each person of `dataset.everyone()`: the run itself for the main person; for
    each of dataset.people the config seen from them (`Config.as_person`) and RUN/people/<trigger>/, which
    holds their doctor's record and their own photos.yaml, so each folder is selected like the main one."""
    return [(cfg.as_person(k), rd.person(person.trigger) if k else rd)
            for k, person in enumerate(cfg.dataset.everyone())]


def person_index(cfg, trigger: str) -> int:
    """Which person of `dataset.everyone()` a trigger word names (case-insensitive), or a ConfigError listing them."""
    words = [p.trigger for p in cfg.dataset.everyone()]
    for k, word in enumerate(words):
        if word.lower() == trigger.lower():
            return k
    raise ConfigError(f"--person {trigger}: no one in this run is called that; the run's people: {', '.join(words)} "
                      "(dataset.trigger, then dataset.people)")


def person_selections(cfg, rd: RunDir, refresh: bool = True) -> list[tuple[object, RunDir, Selection]]:
    """(config, run folder, selection) of each person of `dataset.everyone()` (`person_runs`), each folder's
    problems named by its own setting (dataset.photos, dataset.people[i].photos)."""
    return [(view, sub, current_selection(view, sub, refresh, cfg.dataset.setting(k, "photos")))
            for k, (view, sub) in enumerate(person_runs(cfg, rd))]


def everyones_photos(cfg, rd: RunDir, refresh: bool = True, stage: str | None = None) -> list[tuple[int, "Photo"]]:  # noqa: F821
    """(person, photo) of every photo that trains, person by person (`dataset.everyone()` index): each
    folder's own selection (its doctor's record when `lookalike ingest` checked it, and its photos.yaml),
    each checked like `find_photos` against its own person's trigger. `stage`: announce each selection."""
    from lookalike.data.photos import find_photos

    out = []
    for k, (view, sub, selection) in enumerate(person_selections(cfg, rd, refresh)):
        if stage:
            selection.announce(sub, stage if k == 0 else f"{stage}, {view.dataset.trigger}'s photos")
        found = find_photos(view.dataset.photos, view.dataset.trigger, cfg.dataset.missing_trigger, selection.used,
                            leave_out_hint(sub), cfg.dataset.setting(k, "photos"))
        out += [(k, p) for p in found]
    return out


def leave_out_hint(rd: RunDir) -> str:
    """How to leave one photo out of this run, for error messages."""
    return f"leave it out: add its file name under `exclude:` in {rd.selection_path} (or run `lookalike ingest`)"
