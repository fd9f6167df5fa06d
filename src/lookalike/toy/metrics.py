"""The toy world's numbers: likeness, leakage, preservation and prompt following, from scorer readings.

A `Suite` is a fixed list of prompts, each made from a scene (so what was asked for is known exactly),
drawn with fixed seeds. Every metric compares readings of images drawn from the same prompts and seeds:

    likeness          share of trigger-prompt images in which Arthur is found
    leakage           share of the *other* people in multi-person trigger images scored as Arthur
                      (or, with two people learned, as either of them)
    arthur_elsewhere  share of images of prompts without the trigger in which anyone is scored Arthur
    prompt_following  share of requested attributes present: a person at each asked place, their
                      glasses, the background (prompts without the trigger)
    preservation      LoRA on vs off, prompts without the trigger, same seeds: share of the scorer's
                      attributes that agree (background; per place: someone there, who, glasses, hair),
                      and the mean absolute pixel difference (0-1)

With a second person learned in the same LoRA (Grace, `make_suite(second=...)`), the suite has two more
groups, `second` (prompts naming Grace, not Arthur) and `both`, and the numbers grow:

    likeness_grace    share of Grace-prompt images in which Grace is found
    likeness_both     share of images of prompts naming both in which both are found
    confusion         share of one-person prompts' images in which the *other* learned person is found
                      (Grace drawn when only Arthur was asked, and the reverse)
    grace_elsewhere   share of images of prompts without either in which anyone is scored Grace
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lookalike.toy.scenes import NAMED, SLOTS, Scene, caption, random_scene


@dataclass(frozen=True)
class Prompt:
    """A prompt and the scene it was written from (what was asked for)."""

    text: str
    scene: Scene

    @property
    def trigger(self) -> bool:
        return any(p.is_arthur for p in self.scene.people)

    @property
    def named(self) -> tuple[str, ...]:
        """The learned people the prompt asks for ('arthur', 'grace'), in NAMED order."""
        return tuple(who for who in NAMED if any(p.identity == who for p in self.scene.people))


@dataclass(frozen=True)
class Suite:
    plain: tuple[Prompt, ...]  # without Arthur (and without Grace)
    trigger: tuple[Prompt, ...]  # with Arthur (and without Grace)
    seeds: tuple[int, ...]
    second: tuple[Prompt, ...] = ()  # with Grace, without Arthur (only when she is learned too)
    both: tuple[Prompt, ...] = ()  # with both

    @property
    def learned(self) -> tuple[str, ...]:
        """The people the suite asks about: ('arthur',) or ('arthur', 'grace')."""
        return NAMED if self.second or self.both else NAMED[:1]


def make_suite(seed: int = 2024, plain: int = 10, trigger: int = 10, seeds: int = 4, trigger_word: str = "Arthur",
               second: str | None = None, both: int | None = None):
    """Prompts from scenes the model was not trained on: in each set, 60% one person, 40% two people.

    With `second` (the word that names Grace), also `trigger` prompts naming her and `both` (default:
    half as many) naming both; the plain and Arthur prompts are the same as without her.
    """
    def prompts(n: int, tag: str, arthur: bool, grace: bool = False, fewest: int = 1):
        """n prompts: 60% with `fewest` people, the rest with one more."""
        out = []
        for i in range(n):
            rng = random.Random(f"suite:{seed}:{tag}:{i}")
            scene = random_scene(rng, arthur=arthur, people=fewest if i < round(0.6 * n) else fewest + 1, grace=grace)
            out.append(Prompt(caption(scene, trigger_word, second or "Grace"), scene))
        return tuple(out)

    suite = Suite(prompts(plain, "plain", False), prompts(trigger, "trigger", True), tuple(range(seeds)))
    if second is None:
        return suite
    n_both = trigger // 2 if both is None else both
    return Suite(suite.plain, suite.trigger, suite.seeds, prompts(trigger, "second", False, grace=True),
                 prompts(n_both, "both", True, grace=True, fewest=2))


def likeness(readings, who: str = "arthur") -> float:
    """Share of readings in which `who` (Arthur, by default) is found."""
    return sum(bool(r.found(who)) for r in readings) / len(readings)


def all_found(readings, people: tuple[str, ...]) -> float:
    """Share of readings in which every one of `people` is found."""
    return sum(all(r.found(who) for who in people) for r in readings) / len(readings)


def leakage(prompts, readings, learned: tuple[str, ...] = ("arthur",)) -> tuple[float | None, int]:
    """(share of other people scored as a learned person, how many others) over multi-person prompts that
    ask for a learned person.

    In each image each learned person asked for may be found once: the one at the asked place if read as
    them there, else the likeliest of those left; everyone else found is an 'other', leaked when read as
    any of `learned`.
    """
    others = leaked = 0
    for prompt, r in zip(prompts, readings):
        if len(prompt.scene.people) < 2 or not r.people:
            continue
        rest = list(r.people)
        for who in prompt.named:
            if not rest:
                break
            asked = next(p.slot for p in prompt.scene.people if p.identity == who)
            at = next((f for f in rest if f.slot == asked), None)
            them = at if at is not None and at.who == who else max(rest, key=lambda f: f.p(who))
            rest.remove(them)
        others += len(rest)
        leaked += sum(f.who in learned for f in rest)
    return (leaked / others if others else None), others


def prompt_following(prompts, readings) -> float:
    """Share of requested attributes present: background, and per asked person place and glasses."""
    asked = hit = 0
    for prompt, r in zip(prompts, readings):
        asked += 1
        hit += r.background == prompt.scene.background
        for p in prompt.scene.people:
            f = r.at(p.slot)
            asked += 2
            hit += (f is not None) + (f is not None and f.glasses == p.glasses)
    return hit / asked


def agreement(a, b) -> tuple[int, int]:
    """(attributes that agree, attributes compared) between two readings of the same prompt and seed."""
    same, total = int(a.background == b.background), 1
    for slot in SLOTS:
        fa, fb = a.at(slot), b.at(slot)
        total += 1
        same += (fa is None) == (fb is None)
        if fa is not None and fb is not None:
            total += 3
            same += (fa.who == fb.who) + (fa.glasses == fb.glasses) + (fa.hair == fb.hair)
    return same, total


def image_distance(images_a, images_b) -> float:
    """Mean absolute pixel difference, 0 (identical) to 1, over pairs of same-size images."""
    import numpy as np

    diffs = [np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean() / 255 for a, b in zip(images_a, images_b)]
    return float(np.mean(diffs))


def preservation(readings_off, readings_on, images_off, images_on) -> dict:
    """LoRA on vs off on the same prompts and seeds: attribute agreement and image distance."""
    pairs = [agreement(a, b) for a, b in zip(readings_off, readings_on)]
    return {"agreement": sum(s for s, _ in pairs) / sum(t for _, t in pairs),
            "image_distance": image_distance(images_off, images_on)}


def expand(prompts, seeds):
    """The prompt of every image, in the sampler's order (prompt-major, then seed)."""
    return [p for p in prompts for _ in seeds]


def model_metrics(suite: Suite, plain_readings, trigger_readings, second_readings=(), both_readings=()) -> dict:
    """The metrics of one model (base, or base + LoRA) from the readings of its suite images; with a
    second learned person, also hers, the prompts naming both, and confusion between the two."""
    plain = expand(suite.plain, suite.seeds)
    trig = expand(suite.trigger, suite.seeds)
    learned = suite.learned
    if len(learned) == 1:
        leak, others = leakage(trig, trigger_readings)
    else:
        prompts = trig + expand(suite.second, suite.seeds) + expand(suite.both, suite.seeds)
        leak, others = leakage(prompts, [*trigger_readings, *second_readings, *both_readings], learned)
    out = {
        "likeness": likeness(trigger_readings),
        "leakage": leak,
        "leakage_others": others,
        "arthur_elsewhere": likeness(plain_readings),
        "prompt_following": prompt_following(plain, plain_readings),
        "prompt_following_trigger": prompt_following(trig, trigger_readings),
    }
    if len(learned) > 1:
        confused = likeness(trigger_readings, "grace") * len(trigger_readings) + likeness(second_readings) * len(
            second_readings)
        out.update({
            "likeness_grace": likeness(second_readings, "grace"),
            "likeness_both": all_found(both_readings, learned),
            "likeness_arthur_all": likeness([*trigger_readings, *both_readings]),
            "likeness_grace_all": likeness([*second_readings, *both_readings], "grace"),
            "confusion": confused / (len(trigger_readings) + len(second_readings)),
            "grace_elsewhere": likeness(plain_readings, "grace"),
        })
    return out


ROWS = (
    ("likeness", "likeness (Arthur found, trigger prompts)"),
    ("likeness_grace", "likeness of Grace (Grace found, prompts naming her)"),
    ("likeness_both", "both found (prompts naming both)"),
    ("confusion", "confusion (the other learned person found, one-person prompts)"),
    ("leakage", "leakage (others scored Arthur, multi-person trigger prompts)"),
    ("arthur_elsewhere", "Arthur in prompts without him"),
    ("grace_elsewhere", "Grace in prompts without her"),
    ("prompt_following", "prompt following (prompts without Arthur)"),
    ("prompt_following_trigger", "prompt following (trigger prompts)"),
)


def markdown_table(base: dict, lora: dict, kept: dict) -> str:
    """Base vs LoRA side by side, then preservation, as a Markdown table (rows of a second person only
    when she was learned)."""
    def cell(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = ["| metric | base | LoRA |", "|---|---|---|"]
    lines += [f"| {label} | {cell(base[key])} | {cell(lora[key])} |" for key, label in ROWS if key in lora]
    lines.append(f"| preservation: attribute agreement, LoRA on vs off | | {cell(kept['agreement'])} |")
    lines.append(f"| preservation: mean pixel distance, LoRA on vs off | | {cell(kept['image_distance'])} |")
    return "\n".join(lines)
