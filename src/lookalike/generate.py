"""The one sampler: previews during training, `lookalike generate` and evaluation all call `sample`.

Each image starts from its own seed's noise, drawn with a CPU generator, so an image depends only on
(model, LoRAs, prompt, seed, settings): not on the device's RNG, nor on which other prompts were in
the same call. `batch_size` consecutive (prompt, seed) pairs share one denoising call (each with its
own generator): the same images up to float rounding (at most one grey level), in fewer, larger
forward passes. Prompt embeddings are computed once per prompt and reused for all of its seeds.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleSettings:
    """How to draw: denoising steps, how to guide (the family uses one of the two: `guidance`, the value fed
    to a guidance embedding, or `cfg` and `negative_prompt`, true classifier-free guidance), size in pixels,
    and how many images share one denoising call."""

    steps: int = 28
    guidance: float = 3.5
    width: int = 1024
    height: int = 1024
    max_sequence_length: int = 512
    batch_size: int = 1
    cfg: float = 4.0
    negative_prompt: str = ""


@dataclass
class PromptEmbedding:
    """One prompt's text conditioning: `cond` is the model family's, {name: [1, ...]}, opaque here."""

    prompt: str
    cond: dict

    def to(self, device) -> "PromptEmbedding":
        from lookalike.models.family import cond_to

        return PromptEmbedding(self.prompt, cond_to(self.cond, device))


@dataclass
class Sample:
    """One generated image and everything needed to draw it again."""

    prompt: str
    seed: int
    image: "PIL.Image.Image"  # noqa: F821
    settings: SampleSettings
    info: dict = field(default_factory=dict)  # model, LoRAs: written into the PNG


def encode_prompts(pipe, prompts: Sequence[str], max_sequence_length: int, device=None) -> list[PromptEmbedding]:
    """Run the text encoders once per distinct prompt (on `device`, default the pipeline's)."""
    import torch

    from lookalike.models.family import family_of_module

    family = family_of_module(pipe)
    out: dict[str, PromptEmbedding] = {}
    with torch.no_grad():
        for p in prompts:
            if p not in out:
                out[p] = PromptEmbedding(p, family.encode_text(pipe, [p], max_sequence_length, device))
    return [out[p] for p in prompts]


def encode_then_drop_text_encoders(pipe, prompts: Sequence[str], max_sequence_length: int, device):
    """Encode every prompt with only the text encoders on `device`, then drop the encoders.

    Denoising never needs them, and they are large (FLUX.1's T5-XXL alone is ~9.5 GB in bf16): dropping
    them before the transformer moves to the GPU lowers generation's peak memory by that much.
    """
    import gc

    import torch

    from lookalike.models.family import family_of_module

    parts = family_of_module(pipe).text_parts
    for name in parts:
        if hasattr(getattr(pipe, name), "to"):
            getattr(pipe, name).to(device)
    embeddings = encode_prompts(pipe, prompts, max_sequence_length, device)
    for name in parts:
        setattr(pipe, name, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return embeddings


@dataclass
class Prepared:
    """A pipeline ready to draw: LoRAs applied, prompts encoded, text encoders dropped, on its device.

    `negative`: the negative prompt's conditioning (settings.negative_prompt, by default the empty prompt),
    for families that sample with true classifier-free guidance (None for guidance-distilled ones such as
    FLUX.1). `loras`: the adapter names applied.
    """

    pipe: object
    embeddings: dict  # {prompt: PromptEmbedding}
    settings: SampleSettings
    negative: PromptEmbedding | None = None
    loras: list = field(default_factory=list)

    def draw(self, prompts: Sequence[str], seeds: Sequence[int], on_sample=None) -> Iterator["Sample"]:
        """Every prompt x seed, prompt-major (see `sample`)."""
        return sample(self.pipe, [self.embeddings[p] for p in prompts], seeds, self.settings, on_sample,
                      negative=self.negative)

    def draw_pairs(self, pairs: Sequence[tuple[str, int]], on_sample=None) -> Iterator["Sample"]:
        """Each (prompt, seed) pair in order (see `sample_pairs`)."""
        return sample_pairs(self.pipe, [(self.embeddings[p], int(s)) for p, s in pairs], self.settings, on_sample,
                            negative=self.negative)


def prepare_pipeline(source, runtime, prompts: Sequence[str], settings: SampleSettings, loras=(),
                     transformer=None, embeddings: Sequence[PromptEmbedding] | None = None,
                     negative: PromptEmbedding | None = None) -> Prepared:
    """The one way every caller (generate, eval, the demo, training previews) gets a pipeline to draw with.

    Whole model: load it, apply `loras` (LoraSpecs; before encoding, as a LoRA may touch a text encoder),
    encode `prompts` (and settings.negative_prompt when the family needs a negative), drop the text encoders, move
    to `runtime.device`. With a live `transformer` and cached `embeddings` (training previews): load only
    the VAE and scheduler around it.
    """
    from lookalike.models.family import family_of_module
    from lookalike.models.source import load_pipeline, load_sampling_parts, source_family

    if transformer is not None:
        family = source_family(source)
        vae, scheduler = load_sampling_parts(source, runtime.dtype)
        pipe = family.load_class("pipeline")(
            scheduler=scheduler, vae=vae, transformer=transformer, **{p: None for p in family.text_parts})
        pipe.set_progress_bar_config(disable=True)
        return Prepared(pipe, {e.prompt: e for e in embeddings}, settings, negative)
    from lookalike.models.lora import apply_loras

    pipe = load_pipeline(source, runtime.dtype)
    pipe.set_progress_bar_config(disable=True)
    names = apply_loras(pipe, list(loras))
    needs_negative = family_of_module(pipe).guidance == "cfg"
    texts = list(prompts) + ([settings.negative_prompt] if needs_negative else [])
    encoded = encode_then_drop_text_encoders(pipe, texts, settings.max_sequence_length, runtime.device)
    pipe.to(runtime.device)
    found = {e.prompt: e for e in encoded}
    return Prepared(pipe, found, settings, found[settings.negative_prompt] if needs_negative else None, names)


def sample(
    pipe,
    embeddings: Sequence[PromptEmbedding],
    seeds: Sequence[int],
    settings: SampleSettings,
    on_sample: Callable[[Sample], None] | None = None,
    negative: PromptEmbedding | None = None,
) -> Iterator[Sample]:
    """Draw every (prompt, seed) pair, prompt-major, `settings.batch_size` pairs per call. Yields PIL images
    as they finish. `negative`: the negative prompt's embedding, for families with true CFG."""
    pairs = [(emb, int(seed)) for emb in embeddings for seed in seeds]
    return sample_pairs(pipe, pairs, settings, on_sample, negative)


def sample_pairs(
    pipe,
    pairs: Sequence[tuple[PromptEmbedding, int]],
    settings: SampleSettings,
    on_sample: Callable[[Sample], None] | None = None,
    negative: PromptEmbedding | None = None,
) -> Iterator[Sample]:
    """Draw the given (prompt, seed) pairs in order, `settings.batch_size` per call (see `sample`)."""
    import torch

    from lookalike.models.family import cond_cat, family_of_module

    family = family_of_module(pipe)
    for start in range(0, len(pairs), settings.batch_size):
        chunk = pairs[start:start + settings.batch_size]
        cond = cond_cat(emb.cond for emb, _ in chunk)
        neg = cond_cat([negative.cond] * len(chunk)) if negative is not None else None
        with torch.no_grad():
            images = pipe(
                **family.sample_kwargs(cond, neg, settings),
                num_inference_steps=settings.steps,
                width=settings.width,
                height=settings.height,
                generator=[torch.Generator("cpu").manual_seed(seed) for _, seed in chunk],
            ).images
        for (emb, seed), image in zip(chunk, images):
            s = Sample(emb.prompt, seed, image, settings)
            if on_sample:
                on_sample(s)
            yield s


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt: 'Arthur as a wizard!' -> 'arthur-as-a-wizard'."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].rstrip("-") or "empty"


def png_info(s: Sample) -> "PngInfo":  # noqa: F821
    """PNG text chunks: prompt, seed, settings, model and LoRAs, readable by any PNG tool."""
    from PIL.PngImagePlugin import PngInfo

    from lookalike import __version__

    meta = PngInfo()
    record = {"prompt": s.prompt, "seed": s.seed, **asdict(s.settings), **s.info, "lookalike": __version__}
    for key, value in record.items():
        meta.add_text(key, value if isinstance(value, str) else json.dumps(value))
    return meta


def save_sample(s: Sample, folder: Path, index: int) -> Path:
    """Write one PNG, named `NNN-<prompt>-s<seed>.png`, with its text chunks."""
    path = folder / f"{index:03d}-{slug(s.prompt)}-s{s.seed}.png"
    s.image.save(path, pnginfo=png_info(s))
    return path


def contact_sheet(samples: Sequence[Sample], columns: int) -> "PIL.Image.Image":  # noqa: F821
    """A grid: one row per prompt, one column per seed, each row headed by its prompt."""
    from PIL import Image, ImageDraw

    w = max(s.image.width for s in samples)
    h = max(s.image.height for s in samples)
    label = 14
    rows = (len(samples) + columns - 1) // columns
    cell_w = max(w, 96)
    sheet = Image.new("RGB", (columns * cell_w, rows * (h + 2 * label)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, s in enumerate(samples):
        r, c = divmod(i, columns)
        x, y = c * cell_w, r * (h + 2 * label)
        if c == 0:
            draw.text((2, y + 1), (s.prompt or "(empty prompt)")[: columns * cell_w // 6], fill="black")
        sheet.paste(s.image, (x, y + label))
        draw.text((x + 2, y + label + h + 1), f"seed {s.seed}", fill="gray")
    return sheet


def read_prompts(prompts: Sequence[str], prompts_file: str | Path | None) -> list[str]:
    """Prompts from arguments, then from a file (one per line; blank lines and `#` lines skipped)."""
    from lookalike.errors import LookalikeError

    out = list(prompts)
    if prompts_file is not None:
        path = Path(prompts_file)
        if not path.is_file():
            raise LookalikeError(f"prompt file {str(path)!r} not found; give a text file with one prompt per line")
        lines = path.read_text(encoding="utf-8").splitlines()
        out += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not out:
        raise LookalikeError('no prompt given: pass one or more prompts, e.g. "Arthur as a wizard", or --prompts-file FILE')
    return out


def settings_from_config(gen) -> SampleSettings:
    """SampleSettings from the config's `generate` section."""
    return SampleSettings(gen.steps, gen.guidance, gen.width, gen.height, gen.max_sequence_length, gen.batch_size,
                          gen.cfg, gen.negative_prompt)


def generate_to_folder(cfg, prompts: Sequence[str], folder: Path, on_sample=None) -> list[Path]:
    """Load the model and LoRAs named in `cfg`, draw every prompt x seed, write PNGs and a grid.

    Everything that can be checked without the model (source path, LoRA paths) is checked first.
    """
    from lookalike.models.lora import lora_file
    from lookalike.models.source import model_and_family
    from lookalike.runtime import decide_runtime

    source, _ = model_and_family(cfg)
    specs = list(cfg.generate.loras)
    for spec in specs:
        lora_file(spec.path)
    runtime = decide_runtime(cfg.runtime.device, cfg.runtime.dtype)
    ready = prepare_pipeline(source, runtime, prompts, settings_from_config(cfg.generate), loras=specs)
    info = {
        "model": cfg.model.source,
        "loras": [{"name": n, "path": str(s.path), "weight": s.weight} for n, s in zip(ready.loras, specs)],
    }
    folder.mkdir(parents=True, exist_ok=True)
    samples, paths = [], []
    for i, s in enumerate(ready.draw(prompts, cfg.generate.seeds, on_sample)):
        s.info = info
        paths.append(save_sample(s, folder, i))
        samples.append(s)
    contact_sheet(samples, columns=len(cfg.generate.seeds)).save(folder / "grid.png")
    return paths
