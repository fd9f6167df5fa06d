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
    """How to draw: denoising steps, the guidance value fed to FLUX's embedder, size in pixels, and how
    many images share one denoising call."""

    steps: int = 28
    guidance: float = 3.5
    width: int = 1024
    height: int = 1024
    max_sequence_length: int = 512
    batch_size: int = 1


@dataclass
class PromptEmbedding:
    """One prompt's text conditioning. t5: [1, L, D_t5]; pooled: [1, D_clip]."""

    prompt: str
    t5: "torch.Tensor"  # noqa: F821
    pooled: "torch.Tensor"  # noqa: F821


@dataclass
class Sample:
    """One generated image and everything needed to draw it again."""

    prompt: str
    seed: int
    image: "PIL.Image.Image"  # noqa: F821
    settings: SampleSettings
    info: dict = field(default_factory=dict)  # model, LoRAs: written into the PNG


def encode_prompts(pipe, prompts: Sequence[str], max_sequence_length: int, device=None) -> list[PromptEmbedding]:
    """Run CLIP and T5 once per distinct prompt (on `device`, default the pipeline's)."""
    import torch

    out: dict[str, PromptEmbedding] = {}
    with torch.no_grad():
        for p in prompts:
            if p not in out:
                t5, pooled, _ = pipe.encode_prompt(
                    p, prompt_2=None, device=device, max_sequence_length=max_sequence_length
                )
                out[p] = PromptEmbedding(p, t5, pooled)
    return [out[p] for p in prompts]


def encode_then_drop_text_encoders(pipe, prompts: Sequence[str], max_sequence_length: int, device):
    """Encode every prompt with only the text encoders on `device`, then drop the encoders.

    Denoising never needs them, and FLUX.1's T5-XXL alone is ~9.5 GB in bf16: dropping it before the
    12B transformer moves to the GPU lowers generation's peak memory by that much.
    """
    import gc

    import torch

    for name in ("text_encoder", "text_encoder_2"):
        getattr(pipe, name).to(device)
    embeddings = encode_prompts(pipe, prompts, max_sequence_length, device)
    for name in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        setattr(pipe, name, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return embeddings


def sample(
    pipe,
    embeddings: Sequence[PromptEmbedding],
    seeds: Sequence[int],
    settings: SampleSettings,
    on_sample: Callable[[Sample], None] | None = None,
) -> Iterator[Sample]:
    """Draw every (prompt, seed) pair, prompt-major, `settings.batch_size` pairs per call. Yields PIL images
    as they finish."""
    import torch

    pairs = [(emb, int(seed)) for emb in embeddings for seed in seeds]
    for start in range(0, len(pairs), settings.batch_size):
        chunk = pairs[start:start + settings.batch_size]
        with torch.no_grad():
            images = pipe(
                prompt_embeds=torch.cat([emb.t5 for emb, _ in chunk]),
                pooled_prompt_embeds=torch.cat([emb.pooled for emb, _ in chunk]),
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                width=settings.width,
                height=settings.height,
                max_sequence_length=settings.max_sequence_length,
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
    return SampleSettings(gen.steps, gen.guidance, gen.width, gen.height, gen.max_sequence_length, gen.batch_size)


def generate_to_folder(cfg, prompts: Sequence[str], folder: Path, on_sample=None) -> list[Path]:
    """Load the model and LoRAs named in `cfg`, draw every prompt x seed, write PNGs and a grid.

    Everything that can be checked without the model (source path, LoRA paths) is checked first.
    """
    from lookalike.models.flux import load_pipeline, model_source
    from lookalike.models.lora import apply_loras, lora_file
    from lookalike.runtime import decide_runtime

    source = model_source(cfg.model)
    specs = list(cfg.generate.loras)
    for spec in specs:
        lora_file(spec.path)
    runtime = decide_runtime(cfg.runtime.device, cfg.runtime.dtype)
    pipe = load_pipeline(source, runtime.dtype)
    pipe.set_progress_bar_config(disable=True)
    names = apply_loras(pipe, specs)  # before encoding: a LoRA may also touch the text encoder
    info = {
        "model": cfg.model.source,
        "loras": [{"name": n, "path": str(s.path), "weight": s.weight} for n, s in zip(names, specs)],
    }
    settings = settings_from_config(cfg.generate)
    embeddings = encode_then_drop_text_encoders(pipe, prompts, settings.max_sequence_length, runtime.device)
    pipe.to(runtime.device)
    folder.mkdir(parents=True, exist_ok=True)
    samples, paths = [], []
    for i, s in enumerate(sample(pipe, embeddings, cfg.generate.seeds, settings, on_sample)):
        s.info = info
        paths.append(save_sample(s, folder, i))
        samples.append(s)
    contact_sheet(samples, columns=len(cfg.generate.seeds)).save(folder / "grid.png")
    return paths
