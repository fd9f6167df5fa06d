"""The fixed prompt suites `lookalike eval` draws for the base model and for every checkpoint.

A suite is a few named groups of prompts drawn with the same seeds:

    trigger   prompts that name the person (the seed's gallery: tuxedo, wizard, boxer, ...)
    group     the person among others ("Arthur with two friends at the beach"): leakage
    plain     prompts without the trigger ("a man in a tuxedo", "a cozy living room"): preservation
    empty     the empty prompt: does the LoRA draw the person when asked for nothing?

The real world's suite comes from the `eval` config section. The toy world's is `toy.metrics.make_suite`
(prompts written from scenes, so what was asked for is known): its trigger prompts already put Arthur
among others in 40% of them, which is where its leakage is counted, so it has no separate group.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

GROUPS = ("trigger", "group", "plain", "empty")


@dataclass(frozen=True)
class EvalSuite:
    """Prompt groups, in drawing order, and the seeds every prompt is drawn with."""

    groups: tuple[tuple[str, tuple[str, ...]], ...]
    seeds: tuple[int, ...]

    def prompts(self, group: str) -> tuple[str, ...]:
        return dict(self.groups).get(group, ())

    @property
    def texts(self) -> list[str]:
        """Every distinct prompt, in drawing order (what the text encoders must encode)."""
        return list(dict.fromkeys(p for _, prompts in self.groups for p in prompts))

    @property
    def images(self) -> int:
        return sum(len(p) for _, p in self.groups) * len(self.seeds)

    def fingerprint(self) -> str:
        """Changes whenever a prompt or seed does: rows of metrics.json are only comparable under one."""
        return hashlib.sha256(json.dumps([self.groups, self.seeds]).encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        return {"groups": {name: list(p) for name, p in self.groups}, "seeds": list(self.seeds),
                "fingerprint": self.fingerprint()}


def fill(prompts, trigger: str) -> tuple[str, ...]:
    """Replace `{trigger}` in each prompt with the person's trigger word."""
    return tuple(p.replace("{trigger}", trigger) for p in prompts)


def gallery_suite(cfg) -> EvalSuite:
    """The real world's suite from `cfg.eval`: gallery, group, plain prompts and the empty prompt."""
    ev, trigger = cfg.eval, cfg.dataset.trigger
    groups = (("trigger", fill(ev.prompts, trigger)), ("group", fill(ev.group_prompts, trigger)),
              ("plain", fill(ev.plain_prompts, trigger)), ("empty", ("",)))
    return EvalSuite(tuple((name, p) for name, p in groups if p), tuple(ev.seeds))


def toy_suite(cfg):
    """(toy.metrics.Suite, EvalSuite) for the toy world: make_suite's prompts with `cfg.eval.seeds`.

    With eval.toy_plain = eval.toy_trigger = 10 and seeds [0, 1, 2, 3] it is the demo's suite exactly.
    """
    from dataclasses import replace

    from lookalike.toy.metrics import make_suite

    ev = cfg.eval
    toy = make_suite(plain=ev.toy_plain, trigger=ev.toy_trigger, seeds=len(ev.seeds), trigger_word=cfg.dataset.trigger)
    toy = replace(toy, seeds=tuple(ev.seeds))
    groups = (("trigger", tuple(p.text for p in toy.trigger)), ("plain", tuple(p.text for p in toy.plain)),
              ("empty", ("",)))
    return toy, EvalSuite(groups, tuple(ev.seeds))


def suite_of(cfg) -> EvalSuite:
    """The suite `make_judge(cfg, run)` draws, without building the judge (which reads the photos' faces)."""
    return toy_suite(cfg)[1] if is_toy(cfg) else gallery_suite(cfg)


def is_toy(cfg) -> bool:
    """The toy world is measured by the toy scorer; every other model by dlib face embeddings."""
    return cfg.model.source == "lookalike:toy"


def held_out_photos(run) -> list["Path"]:  # noqa: F821
    """The person's photos the cache held out of training (dataset.holdout), from RUN/cache/index.json."""
    from pathlib import Path

    if not run.cache_index.is_file():
        return []
    items = json.loads(run.cache_index.read_text())["items"]
    return [Path(it["photo"]) for it in items if it.get("holdout") and not it.get("grounding")]


def training_photos(cfg, run) -> list[tuple["Path", str]]:  # noqa: F821
    """(photo, caption) of each of the person's training photos: RUN/cache/index.json (grounding photos of
    other people left out), or the photos folder when the run was not cached yet."""
    from pathlib import Path

    from lookalike.data.photos import find_photos

    if run.cache_index.is_file():
        items = json.loads(run.cache_index.read_text())["items"]
        return [(Path(it["photo"]), it["caption"]) for it in items if not it.get("grounding")]
    return [(p.path, p.caption) for p in find_photos(cfg.dataset.photos, cfg.dataset.trigger, "warn")]
