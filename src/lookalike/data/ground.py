"""The ground stage: the base model draws other people, to train beside the person's photos.

    RUN/ground/ground-0000.png + .txt     one drawn image and its prompt (the PNG's text chunks say the
                                          prompt, seed, settings and the image's key)
    RUN/ground/manifest.json              how many, with which model and settings

The write-up's fix for "sometimes other people start looking like me": grounding images from the base
model. Image i redraws the person's caption i (mod the number of photos) with the trigger replaced by a
class phrase (`ground.phrases` in turn, else `dataset.class_phrase`; with dataset.people, every person's
photos and trigger likewise), from its own seed, so the drawn
people stand, dress and pose like the person in the photos, and the LoRA is taught that such captions
without the trigger still draw what the base model drew. The cache stage adds them to the grounding set
(`dataset.grounding_target` decides their target, `train.grounding_weight` their weight).

Seeded and resumable: an image's key hashes everything that decides its pixels (model, dtype, prompt,
seed, sampler settings), and is written into the PNG. Re-running draws only the images whose file is
missing or whose key differs, so Ctrl-C loses at most the image being drawn.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

from lookalike.data.cache import class_caption
from lookalike.errors import ConfigError
from lookalike.rundir import RunDir

log = logging.getLogger(__name__)

STAGE = "ground"
KEY_CHUNK = "ground_key"  # the PNG text chunk that holds an image's key


@dataclass(frozen=True)
class Planned:
    """One grounding image to draw: its file name, prompt, noise seed and key."""

    name: str
    prompt: str
    seed: int
    key: str = ""


def ground_prompts(captions: list[str], trigger: str, phrases: list[str], count: int, seed: int,
                   others: list[tuple[str, list[str]]] = ()) -> list[tuple[str, int]]:
    """(prompt, noise seed) of each of `count` images.

    Image i is caption j = i mod n in pass p = i // n over the captions: every trigger replaced by
    phrases[(j + p) mod k] (so each pass gives each caption the next phrase), with a noise seed drawn from
    (seed, i) alone. `others`: (trigger, phrases) of more people the LoRA learns; person m (1, 2, ...) gets
    their phrases[(j + p + m) mod k_m], so two people in one caption get different phrases where they can.
    """
    people = [(trigger, phrases), *others]
    if not captions or not all(ph for _, ph in people):
        raise ValueError("ground_prompts needs captions and phrases")
    n = len(captions)

    def prompt(i: int) -> str:
        text = captions[i % n]
        for m, (word, ph) in enumerate(people):
            text = class_caption(text, word, ph[(i % n + i // n + m) % len(ph)])
        return text

    return [(prompt(i), random.Random(f"ground:{seed}:{i}").randrange(2**31)) for i in range(count)]


def image_key(prompt: str, seed: int, model: str, dtype: str, settings) -> str:
    """What decides one drawn image's pixels, hashed."""
    s = settings  # every sampler setting but batch_size (same images up to float rounding)
    parts = ("lookalike-ground-1", prompt, seed, model, dtype, s.steps, s.guidance, s.width, s.height,
             s.max_sequence_length, s.cfg, s.negative_prompt)
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:32]


def phrases_of(cfg) -> list[tuple[str, list[str]]]:
    """(trigger, class phrases) of every person the LoRA learns (`dataset.everyone()`): ground.phrases for
    all, else each person's own class phrase; refused, naming the setting, where there is neither."""
    phrases = [p.strip() for p in cfg.ground.phrases if p.strip()]
    out = []
    for k, person in enumerate(cfg.dataset.everyone()):
        own = (person.class_phrase or "").strip()
        if not (phrases or own):
            setting = cfg.dataset.setting(k, "class_phrase")
            raise ConfigError(f"ground.count = {cfg.ground.count} needs a class phrase for the people drawn in "
                              f"{person.trigger}'s place: --set {setting}='a man' (or one list for everyone: "
                              "--set ground.phrases=\"['a man', 'a woman']\")")
        out.append((person.trigger, phrases or [own]))
    return out


def draw_settings(cfg):
    """The sampler settings of grounding images: generate's, at the training resolution (square)."""
    from dataclasses import replace

    from lookalike.generate import settings_from_config

    side = cfg.dataset.resolution
    return replace(settings_from_config(cfg.generate), width=side, height=side)


def plan(cfg, rd: RunDir, runtime=None) -> list[Planned]:
    """The images this run's config asks for, from the photos that train now (lookalike.data.selection);
    `runtime` (device and dtype) decided from the config when not given."""
    from lookalike.data.selection import everyones_photos
    from lookalike.models.source import model_and_family, source_identity
    from lookalike.runtime import decide_runtime

    count = cfg.ground.count
    if not count:
        return []
    phrases = phrases_of(cfg)
    photos = [p for _, p in everyones_photos(cfg, rd, refresh=False)]
    source, _ = model_and_family(cfg)
    runtime = runtime or decide_runtime(cfg.runtime.device, cfg.runtime.dtype)
    model, dtype, settings = source_identity(source), str(runtime.dtype).removeprefix("torch."), draw_settings(cfg)
    width = max(4, len(str(count - 1)))
    (trigger, own), *others = phrases
    pairs = ground_prompts([p.caption for p in photos], trigger, own, count, cfg.runtime.seed, others)
    return [Planned(f"ground-{i:0{width}d}.png", prompt, seed, image_key(prompt, seed, model, dtype, settings))
            for i, (prompt, seed) in enumerate(pairs)]


def stored_key(path: Path) -> str | None:
    """The key written into a drawn image, or None (no file, or not one this stage finished)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.text.get(KEY_CHUNK)
    except (OSError, ValueError):
        return None


def missing(rd: RunDir, planned: list[Planned]) -> list[Planned]:
    """The planned images not on disk with their current key."""
    return [p for p in planned if stored_key(rd.ground_dir / p.name) != p.key]


@dataclass
class GroundReport:
    folder: Path
    images: int  # in the set
    drawn: int  # by this call
    reused: int


def ground_stage(cfg, rd: RunDir, on_image=None) -> GroundReport:
    """Draw the grounding images that are missing; remove ones the config no longer asks for. `on_image(n,
    total)` is called after each image is written: n of the `total` this call draws."""
    from lookalike.caption.store import write_text_atomic
    from lookalike.generate import png_info, prepare_pipeline
    from lookalike.models.source import model_and_family
    from lookalike.rundir import ensure_writable
    from lookalike.runtime import decide_runtime

    if not cfg.ground.count:
        raise ConfigError("ground.count is 0, so there is nothing to draw; ask for images with --count 40 "
                          "(or --set ground.count=40)")
    runtime = decide_runtime(cfg.runtime.device, cfg.runtime.dtype)
    planned = plan(cfg, rd, runtime)
    todo = missing(rd, planned)
    ensure_writable(rd.root, "the run folder", "choose a run folder you can write to")
    folder = rd.stage(STAGE)
    wanted = {p.name for p in planned}
    for stale in [*folder.glob("ground-*.png"), *folder.glob("ground-*.txt")]:
        if stale.with_suffix(".png").name not in wanted:
            stale.unlink()
    if todo:
        source, _ = model_and_family(cfg)
        settings = draw_settings(cfg)
        ready = prepare_pipeline(source, runtime, sorted({p.prompt for p in todo}), settings)
        log.info("ground: drawing %d of %d images (%d steps each, %d px) into %s", len(todo), len(planned),
                 settings.steps, settings.width, folder)
        for n, (p, s) in enumerate(zip(todo, ready.draw_pairs([(p.prompt, p.seed) for p in todo])), 1):
            s.info = {"model": cfg.model.source, KEY_CHUNK: p.key}
            path = folder / p.name
            write_text_atomic(path.with_suffix(".txt"), p.prompt + "\n")
            tmp = path.with_name(f".{path.name}.tmp")
            s.image.save(tmp, format="PNG", pnginfo=png_info(s))
            os.replace(tmp, path)  # the key goes in last: an image with it is whole
            if on_image:
                on_image(n, len(todo))
    report = GroundReport(folder, len(planned), len(todo), len(planned) - len(todo))
    rd.write_manifest(folder, STAGE, images=report.images, drawn=report.drawn, reused=report.reused,
                      model=cfg.model.source, phrases=phrases_of(cfg), settings=vars(draw_settings(cfg)))
    return report


def ground_photos(cfg, rd: RunDir) -> list:
    """The drawn grounding images as `Photo`s (for the cache stage), or [] when ground.count is 0. Refuses,
    naming the command, when some are not drawn yet or were drawn for other captions or settings."""
    from lookalike.data.photos import Photo

    planned = plan(cfg, rd)
    if todo := missing(rd, planned):
        raise ConfigError(f"{len(todo)} of the {len(planned)} grounding images (ground.count) are not drawn for this "
                          f"run's captions and settings yet: run `lookalike ground {rd.root}` (or `lookalike fit`), "
                          "or set ground.count=0")
    return [Photo(rd.ground_dir / p.name, p.prompt) for p in planned]
