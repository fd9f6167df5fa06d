"""The toy world's numbers: likeness, leakage, preservation and prompt following, from scorer readings.

A `Suite` is a fixed list of prompts, each made from a scene (so what was asked for is known exactly),
drawn with fixed seeds. Every metric compares readings of images drawn from the same prompts and seeds:

    likeness          share of trigger-prompt images in which Arthur is found
    leakage           share of the *other* people in multi-person trigger images scored as Arthur
    arthur_elsewhere  share of images of prompts without the trigger in which anyone is scored Arthur
    prompt_following  share of requested attributes present: a person at each asked place, their
                      glasses, the background (prompts without the trigger)
    preservation      LoRA on vs off, prompts without the trigger, same seeds: share of the scorer's
                      attributes that agree (background; per place: someone there, Arthur or not,
                      glasses, hair), and the mean absolute pixel difference (0-1)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lookalike.toy.scenes import SLOTS, Scene, caption, random_scene


@dataclass(frozen=True)
class Prompt:
    """A prompt and the scene it was written from (what was asked for)."""

    text: str
    scene: Scene

    @property
    def trigger(self) -> bool:
        return any(p.is_arthur for p in self.scene.people)


@dataclass(frozen=True)
class Suite:
    plain: tuple[Prompt, ...]  # without Arthur
    trigger: tuple[Prompt, ...]  # with Arthur
    seeds: tuple[int, ...]


def make_suite(seed: int = 2024, plain: int = 10, trigger: int = 10, seeds: int = 4, trigger_word: str = "Arthur"):
    """Prompts from scenes the model was not trained on: in each set, 60% one person, 40% two people."""
    def prompts(n: int, arthur: bool, tag: str):
        out = []
        for i in range(n):
            rng = random.Random(f"suite:{seed}:{tag}:{i}")
            scene = random_scene(rng, arthur=arthur, people=1 if i < round(0.6 * n) else 2)
            out.append(Prompt(caption(scene, trigger_word), scene))
        return tuple(out)

    return Suite(prompts(plain, False, "plain"), prompts(trigger, True, "trigger"), tuple(range(seeds)))


def likeness(readings) -> float:
    """Share of readings in which Arthur is found."""
    return sum(bool(r.arthurs) for r in readings) / len(readings)


def leakage(prompts, readings) -> tuple[float | None, int]:
    """(share of other people scored as Arthur, how many others) over multi-person trigger prompts.

    In each image one person may be Arthur: the one at the asked place if he was found there, else the
    likeliest; everyone else found is an 'other'.
    """
    others = leaked = 0
    for prompt, r in zip(prompts, readings):
        if len(prompt.scene.people) < 2 or not r.people:
            continue
        asked = next(p.slot for p in prompt.scene.people if p.is_arthur)
        at = r.at(asked)
        him = at if at is not None and at.arthur else max(r.people, key=lambda f: f.p_arthur)
        rest = [f for f in r.people if f is not him]
        others += len(rest)
        leaked += sum(f.arthur for f in rest)
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
            same += (fa.arthur == fb.arthur) + (fa.glasses == fb.glasses) + (fa.hair == fb.hair)
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


def model_metrics(suite: Suite, plain_readings, trigger_readings) -> dict:
    """The metrics of one model (base, or base + LoRA) from the readings of its suite images."""
    plain = expand(suite.plain, suite.seeds)
    trig = expand(suite.trigger, suite.seeds)
    leak, others = leakage(trig, trigger_readings)
    return {
        "likeness": likeness(trigger_readings),
        "leakage": leak,
        "leakage_others": others,
        "arthur_elsewhere": likeness(plain_readings),
        "prompt_following": prompt_following(plain, plain_readings),
        "prompt_following_trigger": prompt_following(trig, trigger_readings),
    }


ROWS = (
    ("likeness", "likeness (Arthur found, trigger prompts)"),
    ("leakage", "leakage (others scored Arthur, multi-person trigger prompts)"),
    ("arthur_elsewhere", "Arthur in prompts without him"),
    ("prompt_following", "prompt following (prompts without Arthur)"),
    ("prompt_following_trigger", "prompt following (trigger prompts)"),
)


def markdown_table(base: dict, lora: dict, kept: dict) -> str:
    """Base vs LoRA side by side, then preservation, as a Markdown table."""
    def cell(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = ["| metric | base | LoRA |", "|---|---|---|"]
    lines += [f"| {label} | {cell(base[key])} | {cell(lora[key])} |" for key, label in ROWS]
    lines.append(f"| preservation: attribute agreement, LoRA on vs off | | {cell(kept['agreement'])} |")
    lines.append(f"| preservation: mean pixel distance, LoRA on vs off | | {cell(kept['image_distance'])} |")
    return "\n".join(lines)
