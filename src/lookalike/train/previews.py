"""Watching it learn: fixed prompts and seeds drawn every N epochs, and one progress GIF per prompt.

    RUN/train/samples/epoch-0025/000-arthur-wearing-a-tuxedo-s0.png
    RUN/train/progress-arthur-wearing-a-tuxedo-s0.gif   one frame per sampled epoch, labelled

Images come from the one sampler (`lookalike.generate.sample`) with the transformer being trained,
the cached prompt embeddings (no text encoder in memory) and the config's `generate` settings, so
a preview at epoch e is what `lookalike generate` draws with that epoch's LoRA.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

EPOCH_DIR = re.compile(r"epoch-(\d+)$")


def label_frame(image, text: str):
    """The image with a strip below it carrying `text` (e.g. 'epoch 25')."""
    from PIL import Image, ImageDraw

    strip = max(14, image.height // 10)
    framed = Image.new("RGB", (image.width, image.height + strip), "white")
    framed.paste(image, (0, 0))
    ImageDraw.Draw(framed).text((3, image.height + (strip - 11) // 2), text, fill="black")
    return framed


def write_progress_gifs(samples_dir: Path, out_dir: Path, frame_ms: int = 600) -> list[Path]:
    """One GIF per (prompt, seed) file name found under samples_dir/epoch-*/, frames in epoch order."""
    from PIL import Image

    epochs = sorted(
        (int(m.group(1)), d) for d in samples_dir.iterdir() if d.is_dir() and (m := EPOCH_DIR.search(d.name))
    )
    names = sorted({p.name for _, d in epochs for p in d.glob("*.png")})
    written = []
    for name in names:
        frames = []
        for epoch, d in epochs:
            if (d / name).exists():
                with Image.open(d / name) as im:
                    frames.append(label_frame(im.convert("RGB"), f"epoch {epoch}"))
        path = out_dir / f"progress-{name.split('-', 1)[1].removesuffix('.png')}.gif"
        durations = [frame_ms] * (len(frames) - 1) + [frame_ms * 3]  # linger on the latest
        tmp = path.with_name(f".{path.name}.tmp")
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
        tmp.replace(path)
        written.append(path)
    return written


class PreviewSampler:
    """Draws the preview prompts with the live transformer; built once (through `prepare_pipeline`, around
    the transformer being trained), called every N epochs."""

    def __init__(self, ready, seeds, info: dict):
        self.ready, self.seeds, self.info = ready, seeds, info

    def draw(self, folder: Path, epoch: int, step: int) -> list[Path]:
        """Sample every prompt x seed into `folder`; the global RNG is left as it was."""
        import torch

        from lookalike.generate import sample, save_sample

        folder.mkdir(parents=True, exist_ok=True)
        pipe = self.ready.pipe
        device = next(pipe.transformer.parameters()).device
        pipe.vae.to(device)
        paths = []
        embeddings = [e.to(device) for e in self.ready.embeddings.values()]
        negative = self.ready.negative.to(device) if self.ready.negative is not None else None
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for i, s in enumerate(sample(pipe, embeddings, self.seeds, self.ready.settings, negative=negative)):
                s.info = {**self.info, "epoch": epoch, "step": step}
                paths.append(save_sample(s, folder, i))
        return paths
