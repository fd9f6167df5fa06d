"""The cache stage: encode every photo and caption once, so training never runs the VAE or text encoders.

    RUN/cache/latents/<key>.safetensors   latent [C, h, w], normalised by the model family's VAE hook
    RUN/cache/text/<key>.safetensors      the family's text conditioning of one caption, batch dim removed
                                          (FLUX.1: t5 [L, D_t5], pooled [D_clip])
    RUN/cache/index.json                  which photo, caption, size and keys make up the training set,
                                          and the model family that wrote it

A latent's key hashes the image bytes, the crop and size, the model and the dtype; a text key hashes
the caption, the model, the dtype and the token count. Re-running encodes only the keys whose file
is missing: change one caption and exactly one text is encoded again. Grounding examples are the photos
of `dataset.grounding` and the images the base model drew (RUN/ground). The empty caption (for caption
dropout), the preview prompts and `generate.negative_prompt` (the previews' negative for families with
true classifier-free guidance, when one is set) are cached the same way. The encoders are freed afterwards.

An index written before model families existed has no `family` entry: only FLUX.1 was trained then,
so it is read as FLUX.1's (its text files hold exactly what FLUX.1's conditioning holds). An index of
another family than the model's is refused, naming the command that re-makes it.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import re
import random
from dataclasses import dataclass
from pathlib import Path

from lookalike.data.buckets import fit, training_size
from lookalike.data.photos import LEAVE_OUT, Photo, find_grounding, load_rgb
from lookalike.errors import ConfigError
from lookalike.rundir import RunDir, write_json_atomic

log = logging.getLogger(__name__)

CACHE_VERSION = "lookalike-cache-1"  # bump when what is stored, or how, changes
STAGE = "cache"
INDEX = "index.json"


def _key(*parts) -> str:
    return hashlib.sha256("\0".join(str(p) for p in (CACHE_VERSION, *parts)).encode()).hexdigest()[:32]


def latent_key(image_sha: str, size: tuple[int, int], model: str, dtype: str) -> str:
    return _key("latent", image_sha, "centre-crop", *size, model, dtype)


def text_key(caption: str, model: str, dtype: str, max_sequence_length: int) -> str:
    return _key("text", caption, model, dtype, max_sequence_length)


def upright_size(path: Path, leave_out: str) -> tuple[int, int]:
    """(width, height) after EXIF orientation of a photo that decodes; else a ConfigError naming the file."""
    from lookalike.ingest.decode import PhotoRejected, usable_size

    try:
        return usable_size(path)
    except PhotoRejected as e:
        raise ConfigError(f"photo {str(path)!r} cannot be used: {e.reason}; {leave_out}") from None


def class_captions(caption: str, people) -> str:
    """`class_caption` for every person (`dataset.everyone()`): each trigger replaced by its own class phrase."""
    for person in people:
        caption = class_caption(caption, person.trigger, person.class_phrase)
    return caption


def missing_class_phrase(dataset) -> str | None:
    """The setting of the first person without a class phrase (`dataset.class_phrase`,
    `dataset.people[i].class_phrase`), or None when everyone has one."""
    for k, person in enumerate(dataset.everyone()):
        if not (person.class_phrase or "").strip():
            return dataset.setting(k, "class_phrase")
    return None


def class_caption(caption: str, trigger: str, phrase: str) -> str:
    """The caption as it would read without knowing the person: every whole-word trigger replaced by the class
    phrase ("Arthur, smiling, with Arthur's dog" -> "a man, smiling, with a man's dog")."""
    return re.sub(rf"(?<!\w){re.escape(trigger)}(?!\w)", phrase, caption)


def preview_prompts(cfg) -> list[str]:
    """The preview prompts with the trigger word filled in."""
    return [p.replace("{trigger}", cfg.dataset.trigger) for p in cfg.train.sample_prompts]


def split_holdout(n: int, holdout: int, seed: int) -> set[int]:
    """Indices of the `holdout` photos kept out of training: a seeded choice, stable across re-runs."""
    return set(random.Random(seed).sample(range(n), holdout)) if holdout else set()


def check_dataset_size(n_photos: int, cfg, owners: list[int] = ()) -> None:
    """Refuse a training set smaller than one batch, or a holdout that leaves a person no photo to train on
    (`owners`: each person's photo's person), naming the setting to change."""
    holdout, batch = cfg.dataset.holdout, cfg.train.batch_size
    for k in sorted(set(owners)):
        if holdout >= owners.count(k):
            setting = cfg.dataset.setting(k, "photos")
            raise ConfigError(f"dataset.holdout = {holdout} leaves no photo to train on ({owners.count(k)} found in "
                              f"{setting}); lower it, or add photos")
    holdout *= max(1, len(set(owners)))
    if holdout >= n_photos:
        raise ConfigError(f"dataset.holdout = {holdout} leaves no photo to train on ({n_photos} found); lower it")
    if n_photos - holdout < batch:
        raise ConfigError(
            f"{n_photos - holdout} training photo(s) (of {n_photos}, {holdout} held out) is fewer than "
            f"train.batch_size = {batch}: add photos, or lower train.batch_size to at most {n_photos - holdout} "
            "(use train.gradient_accumulation to keep the effective batch)"
            + (", or hold out fewer photos (dataset.holdout)" if holdout else "")
        )


@dataclass
class CacheReport:
    """What one cache run did: items in the set, and how many latents / texts it had to encode."""

    folder: Path
    items: int
    latents_encoded: int
    texts_encoded: int
    reused: int


def held_out_indices(owners: list[int], holdout: int, seed: int) -> set[int]:
    """Indices (into `owners`, each photo's person) of the photos kept out of training: `holdout` of each
    person's, a seeded choice per person (the main person's exactly `split_holdout`'s)."""
    held = set()
    for k in sorted(set(owners)):
        mine = [i for i, owner in enumerate(owners) if owner == k]
        held |= {mine[j] for j in split_holdout(len(mine), holdout, seed + k)}
    return held


def _plan(cfg, photos: list[Photo], model: str, dtype: str, grounding: int = 0, leave_out: str = LEAVE_OUT,
          family: str = "flux1", owners: list[int] | None = None) -> dict:
    """The index to write: one entry per photo, plus the empty caption and the preview prompts.

    `owners[i]` is photo i's person (`dataset.everyone()` index; all the main person's when not given), for
    its `person` (trigger) and a holdout per person. The last `grounding` photos are grounding photos
    (other people): never held out, marked in the index.
    """
    msl = cfg.dataset.max_sequence_length
    people = cfg.dataset.everyone()
    owners = owners if owners is not None else [0] * (len(photos) - grounding)
    held = held_out_indices(owners, cfg.dataset.holdout, cfg.runtime.seed)
    items = []
    for i, p in enumerate(photos):
        size = training_size(*upright_size(p.path, leave_out), cfg.dataset.resolution, cfg.dataset.aspect)
        sha = hashlib.sha256(p.path.read_bytes()).hexdigest()
        items.append({
            "photo": str(p.path), "caption": p.caption, "size": list(size), "holdout": i in held,
            "grounding": i >= len(photos) - grounding,
            "latent": latent_key(sha, size, model, dtype), "text": text_key(p.caption, model, dtype, msl),
        })
        if i < len(owners):
            items[-1]["person"] = people[owners[i]].trigger
        if cfg.train.class_prior_weight:  # class-prior preservation: the caption with the class phrases
            items[-1]["class_caption"] = class_captions(p.caption, people)
            items[-1]["class_text"] = text_key(items[-1]["class_caption"], model, dtype, msl)
    prompts = preview_prompts(cfg)
    index = {
        "version": CACHE_VERSION, "family": family, "model": model, "dtype": dtype, "max_sequence_length": msl,
        "items": items,
        "empty": text_key("", model, dtype, msl),
        "prompts": [{"prompt": p, "text": text_key(p, model, dtype, cfg.generate.max_sequence_length)} for p in prompts],
    }
    negative = cfg.generate.negative_prompt  # the previews' negative (true-CFG families); else the empty caption
    if negative:
        index["negative"] = {"prompt": negative,
                             "text": text_key(negative, model, dtype, cfg.generate.max_sequence_length)}
    return index


def _save(tensors: dict, path: Path) -> None:
    """safetensors through a temporary file and a rename: a killed run never leaves half a file."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def encode_latent(vae, image, device, dtype, family=None) -> "torch.Tensor":  # noqa: F821
    """A PIL image at its training size -> normalised latent [C, h, w], by the family's VAE hook
    (FLUX.1: z = (mode(E(x)) - shift)·scale). `family` defaults to the VAE's pipeline family, FLUX.1.

    Pixels go to [-1, 1]; the distribution's mode (its mean) is kept, so the cache is deterministic.
    """
    import numpy as np
    import torch

    from lookalike.models.family import family as get

    family = family or get("flux1")
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        return family.encode_latents(vae, x.to(device, dtype))[0]


def build_cache(cfg, run: RunDir) -> CacheReport:
    """Encode what is not cached yet; write the index and the manifest. Loads no model if nothing changed."""
    from lookalike.models.source import model_and_family, source_identity
    from lookalike.runtime import training_runtime

    from lookalike.data.selection import everyones_photos, leave_out_hint
    from lookalike.rundir import ensure_writable

    hint = leave_out_hint(run)
    owned = everyones_photos(cfg, run, stage="cache")
    photos, owners = [p for _, p in owned], [k for k, _ in owned]
    from lookalike.data.ground import ground_photos

    triggers = [person.trigger for person in cfg.dataset.everyone()]
    grounding = find_grounding(cfg.dataset.grounding, triggers) + ground_photos(cfg, run)
    photos += grounding
    check_dataset_size(len(photos), cfg, owners)
    lacking = missing_class_phrase(cfg.dataset) if cfg.train.class_prior_weight else None
    if lacking:
        raise ConfigError(f"train.class_prior_weight = {cfg.train.class_prior_weight} needs {lacking}: "
                          f"what the person is in a caption's words, e.g. --set {lacking}='a man'")
    source, family = model_and_family(cfg)
    runtime = training_runtime(cfg)
    dtype_name = str(runtime.dtype).removeprefix("torch.")
    index = _plan(cfg, photos, source_identity(source), dtype_name, grounding=len(grounding), leave_out=hint,
                  family=family.name, owners=owners)
    ensure_writable(run.root, "the run folder", "choose a run folder you can write to")
    folder = run.stage(STAGE)
    texts = {it["text"]: it["caption"] for it in index["items"]}
    texts.update({it["class_text"]: it["class_caption"] for it in index["items"] if "class_text" in it})
    texts[index["empty"]] = ""
    prompt_texts = {p["text"]: p["prompt"] for p in index["prompts"] + [index.get("negative")] if p}
    todo_latents = {it["latent"]: it for it in index["items"] if not (folder / "latents" / f"{it['latent']}.safetensors").exists()}
    todo_texts = {k: v for k, v in texts.items() if not (folder / "text" / f"{k}.safetensors").exists()}
    todo_prompts = {k: v for k, v in prompt_texts.items() if not (folder / "text" / f"{k}.safetensors").exists()}
    if todo_latents or todo_texts or todo_prompts:
        _encode(cfg, source, family, runtime, folder, todo_latents, todo_texts, todo_prompts, hint)
    write_json_atomic(run.cache_index, index)
    n_texts = len(todo_texts) + len(todo_prompts)
    report = CacheReport(folder, len(index["items"]), len(todo_latents), n_texts,
                         len(index["items"]) - len(todo_latents))
    run.write_manifest(folder, STAGE, photos=str(cfg.dataset.photos), items=report.items,
                       grounding=str(cfg.dataset.grounding) if grounding else None, grounding_items=len(grounding),
                       latents_encoded=report.latents_encoded, texts_encoded=n_texts, model=cfg.model.source,
                       dtype=dtype_name, held_out=sum(it["holdout"] for it in index["items"]))
    log.info("cache: %d photos; encoded %d latents and %d texts, reused %d latents (%s)",
             report.items, report.latents_encoded, n_texts, report.reused, folder)
    return report


def _encode(cfg, source, family, runtime, folder: Path, latents: dict, texts: dict, prompts: dict,
            leave_out: str) -> None:
    """Load the VAE and text encoders (not the transformer), encode, then free them."""
    import torch

    from lookalike.generate import encode_prompts
    from lookalike.models.source import load_pipeline

    pipe = load_pipeline(source, runtime.dtype, with_transformer=False)
    pipe.vae.to(runtime.device)
    for key, item in latents.items():
        image = fit(load_rgb(Path(item["photo"]), leave_out), tuple(item["size"]))
        _save({"latent": encode_latent(pipe.vae, image, runtime.device, runtime.dtype, family)},
              folder / "latents" / f"{key}.safetensors")
    pipe.vae.to("cpu")
    for name in family.text_parts:
        if hasattr(getattr(pipe, name), "to"):
            getattr(pipe, name).to(runtime.device)
    for group, msl in ((texts, cfg.dataset.max_sequence_length), (prompts, cfg.generate.max_sequence_length)):
        for key, emb in zip(group, encode_prompts(pipe, list(group.values()), msl, runtime.device)):
            _save({k: v[0] for k, v in emb.cond.items()}, folder / "text" / f"{key}.safetensors")
    del pipe
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- reading the cache


@dataclass
class Cached:
    """One cached training example. latent: [C, h, w]; cond: the family's conditioning of its caption,
    {name: [...]} without a batch dimension."""

    photo: str
    caption: str
    latent: "torch.Tensor"  # noqa: F821
    cond: dict
    grounding: bool = False  # a photo of other people (dataset.grounding), not of the person
    class_cond: dict | None = None  # its caption with the class phrase for the trigger (class-prior preservation)


@dataclass
class CachedSet:
    """Everything training reads: training and held-out examples, the empty caption, the preview prompts."""

    train: list[Cached]
    holdout: list[Cached]
    empty: dict  # the empty caption's conditioning, {name: [...]}
    prompts: list  # PromptEmbedding, cond {name: [1, ...]}
    dtype: str
    family: str = "flux1"
    negative: object = None  # PromptEmbedding of generate.negative_prompt when one is set, else None


def load_cache(run: RunDir, family: str | None = None) -> CachedSet:
    """Read RUN/cache into memory (a few MB per photo at 1024²). Raises ConfigError if it is missing, or
    if it was written for another model family than `family` (when given)."""
    from safetensors.torch import load_file

    from lookalike.generate import PromptEmbedding

    folder = run.cache_index.parent
    if not run.cache_index.exists():
        raise ConfigError(f"{run.cache_index} does not exist: run `lookalike cache {run.root}` first")
    index = json.loads(run.cache_index.read_text())
    written = index.get("family", "flux1")  # indexes from before model families: FLUX.1 was the only one
    if family is not None and written != family:
        raise ConfigError(f"{run.cache_index} was written for a {written} model, but model.source is a {family} "
                          f"model; run `lookalike cache {run.root}` to encode the photos for it")

    def text(key):
        return load_file(str(folder / "text" / f"{key}.safetensors"))

    def item(it):
        latent = load_file(str(folder / "latents" / f"{it['latent']}.safetensors"))["latent"]
        return Cached(it["photo"], it["caption"], latent, text(it["text"]), bool(it.get("grounding", False)),
                      text(it["class_text"]) if "class_text" in it else None)

    items = index["items"]
    prompts = [PromptEmbedding(p["prompt"], {k: v[None] for k, v in text(p["text"]).items()})
               for p in index["prompts"]]
    return CachedSet(
        train=[item(it) for it in items if not it["holdout"]],
        holdout=[item(it) for it in items if it["holdout"]],
        empty=text(index["empty"]),
        prompts=prompts,
        dtype=index["dtype"],
        family=written,
        negative=PromptEmbedding(neg["prompt"], {k: v[None] for k, v in text(neg["text"]).items()})
        if (neg := index.get("negative")) else None,
    )
