"""The fixed prompt suites `lookalike eval` draws for the base model and for every checkpoint.

A suite is a few named groups of prompts drawn with the same seeds:

    trigger   prompts that name the person (the seed's gallery: tuxedo, wizard, boxer, ...)
    group     the person among others ("Arthur with two friends at the beach"): leakage
    plain     prompts without the trigger ("a man in a tuxedo", "a cozy living room"): preservation
    empty     the empty prompt: does the LoRA draw the person when asked for nothing?
    second    (toy world, two people learned) prompts naming the second person and not the first
    both      (toy world, two people learned) prompts naming both

The real world's suite comes from the `eval` config section. The toy world's is `toy.metrics.make_suite`
(prompts written from scenes, so what was asked for is known): its trigger prompts already put Arthur
among others in 40% of them, which is where its leakage is counted, so it has no separate group.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

GROUPS = ("trigger", "group", "second", "both", "plain", "empty")


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
    """The real world's suite from `cfg.eval`: gallery, group, plain prompts and the empty prompt. With
    dataset.people, also `second` (the gallery for each other person) and `both` (eval.pair_prompts: the
    main person with each other one); `asked(cfg)` says who each of their prompts names."""
    ev, trigger = cfg.eval, cfg.dataset.trigger
    second, both = (tuple(p for p, _ in asked) for asked in _asked(cfg).values())
    groups = (("trigger", fill(ev.prompts, trigger)), ("group", fill(ev.group_prompts, trigger)),
              ("second", second), ("both", both), ("plain", fill(ev.plain_prompts, trigger)), ("empty", ("",)))
    return EvalSuite(tuple((name, p) for name, p in groups if p), tuple(ev.seeds))


def _asked(cfg) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """{"second": [(prompt, people it names)], "both": [...]}: each other person's gallery prompts, and the
    pair prompts naming the main person (0) with each other person k (`DatasetConfig.everyone` order)."""
    ev, trigger = cfg.eval, cfg.dataset.trigger
    second, both = [], []
    for k, person in enumerate(cfg.dataset.people, start=1):
        second += [(p, (k,)) for p in fill(ev.prompts, person.trigger)]
        both += [(p.replace("{other}", person.trigger), (0, k)) for p in fill(ev.pair_prompts, trigger)]
    return {"second": second, "both": both}


def asked(cfg, group: str) -> list[tuple[int, ...]]:
    """The learned people each image of a gallery-suite group asks for (prompt-major, then seed, as drawn):
    (0,) for the trigger prompts, (k,) or (0, k) for `second` and `both`."""
    seeds = len(cfg.eval.seeds)
    per_prompt = [(0,)] * len(cfg.eval.prompts) if group == "trigger" else [w for _, w in _asked(cfg)[group]]
    return [w for w in per_prompt for _ in range(seeds)]


def toy_suite(cfg):
    """(toy.metrics.Suite, EvalSuite) for the toy world: make_suite's prompts with `cfg.eval.seeds`.

    With eval.toy_plain = eval.toy_trigger = 10 and seeds [0, 1, 2, 3] it is the demo's suite exactly. With
    dataset.people, the first of them is the toy world's second person (Grace, drawn as her) and the suite
    adds the groups `second` (prompts naming her) and `both`.
    """
    from dataclasses import replace

    from lookalike.toy.metrics import make_suite

    ev = cfg.eval
    second = cfg.dataset.people[0].trigger if cfg.dataset.people else None
    toy = make_suite(plain=ev.toy_plain, trigger=ev.toy_trigger, seeds=len(ev.seeds), trigger_word=cfg.dataset.trigger,
                     second=second)
    toy = replace(toy, seeds=tuple(ev.seeds))
    groups = (("trigger", toy.trigger), ("second", toy.second), ("both", toy.both), ("plain", toy.plain))
    groups = tuple((name, tuple(p.text for p in prompts)) for name, prompts in groups if prompts)
    return toy, EvalSuite((*groups, ("empty", ("",))), tuple(ev.seeds))


def suite_of(cfg) -> EvalSuite:
    """The suite `make_judge(cfg, run)` draws, without building the judge (which reads the photos' faces)."""
    return toy_suite(cfg)[1] if is_toy(cfg) else gallery_suite(cfg)


def is_toy(cfg) -> bool:
    """The toy world is measured by the toy scorer; every other model by dlib face embeddings."""
    return cfg.model.source == "lookalike:toy"


def held_out_photos(run, trigger: str | None = None) -> list["Path"]:  # noqa: F821
    """The photos the cache held out of training (dataset.holdout), from RUN/cache/index.json: the person
    named `trigger`'s (with dataset.people), or everyone's."""
    from pathlib import Path

    if not run.cache_index.is_file():
        return []
    items = json.loads(run.cache_index.read_text())["items"]
    return [Path(it["photo"]) for it in items if it.get("holdout") and not it.get("grounding") and _mine(it, trigger)]


def _mine(item: dict, trigger: str | None) -> bool:
    """Whether a cache index item is a photo of the person named `trigger` (any person's, when None)."""
    return trigger is None or item.get("person", trigger) == trigger


def training_photos(cfg, run, k: int = 0) -> list[tuple["Path", str]]:  # noqa: F821
    """(photo, caption) of each training photo of person k (0: the main one; `DatasetConfig.everyone` order):
    RUN/cache/index.json (grounding photos and the other people's photos left out), or their photos folder
    when the run was not cached yet."""
    from pathlib import Path

    from lookalike.data.photos import find_photos

    person = cfg.dataset.everyone()[k]
    if run.cache_index.is_file():
        items = json.loads(run.cache_index.read_text())["items"]
        return [(Path(it["photo"]), it["caption"]) for it in items
                if not it.get("grounding") and _mine(it, person.trigger)]
    return [(p.path, p.caption) for p in find_photos(person.photos, person.trigger, "warn",
                                                      setting=cfg.dataset.setting(k, "photos"))]
