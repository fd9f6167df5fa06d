"""Test helpers: tiny sampling settings, images as arrays, and LoRA files made on the twin."""

from pathlib import Path

import numpy as np

from lookalike.generate import SampleSettings, encode_prompts, sample

TINY = SampleSettings(steps=4, guidance=3.5, width=64, height=64, max_sequence_length=32)

DOUBLE_ATTN = [f"transformer_blocks.{i}.attn.{m}" for i in range(2) for m in ("to_q", "to_k", "to_v", "to_out.0")]


def draw(pipe, prompt="a photo of Arthur as a wizard", seed=0, settings=TINY) -> np.ndarray:
    """One image as a float array [H, W, 3] in 0..255."""
    emb = encode_prompts(pipe, [prompt], settings.max_sequence_length)
    (s,) = list(sample(pipe, emb, [seed], settings))
    return np.asarray(s.image, dtype=np.float64)


def lora_state(twin_dir, targets, rank=4, alpha=2.0, seed=1, scale=0.3):
    """A random LoRA on the twin's transformer: (PEFT state dict, LoraConfig).

    lora_B starts at zero in PEFT, which would make a LoRA that does nothing: randomise it too.
    """
    import torch
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = FluxTransformer2DModel.from_pretrained(twin_dir, subfolder="transformer")
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets)
    transformer.add_adapter(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return get_peft_model_state_dict(transformer), config


def save_diffusers_lora(state, config, path: Path) -> Path:
    """Write a LoRA the way `FluxPipeline.save_lora_weights` does, alpha kept in the header."""
    from diffusers import FluxPipeline

    path.parent.mkdir(parents=True, exist_ok=True)
    FluxPipeline.save_lora_weights(
        str(path.parent), transformer_lora_layers=state, weight_name=path.name,
        transformer_lora_adapter_metadata=config.to_dict(),
    )
    return path


def make_photos(folder: Path, n: int = 4, trigger: str = "Arthur", sizes=((96, 128), (128, 96), (96, 96))) -> Path:
    """n distinct photos (portrait, landscape and square, as phones give) with a caption .txt each."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    places = ["on a beach", "in a park", "in a city street", "in a kitchen", "on a mountain", "in a library"]
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 255, 3)))
        d = ImageDraw.Draw(im)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            d.ellipse([x0, y0, x0 + 20 + int(rng.integers(0, 30)), y0 + 20 + int(rng.integers(0, 30))],
                      fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        im.save(folder / f"IMG_{i:04d}.png")
        (folder / f"IMG_{i:04d}.txt").write_text(f"{trigger} standing {places[i % len(places)]}\n")
    return folder


def run_cli(args, cwd, timeout=600, **env):
    """`python -m lookalike ARGS` in a subprocess; returns the CompletedProcess (text output)."""
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "lookalike", *[str(a) for a in args]], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, **env}, timeout=timeout,
    )


def astronaut():
    """scikit-image's astronaut (Eileen Collins, 512x512): a real face, with a mission patch HOG half-likes."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut())


def grace_hopper():
    """matplotlib's Grace Hopper (512x600): a real face of another person."""
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        return im.convert("RGB")


def side_by_side(left, right):
    """Two photos on one canvas, left and right, like a photo of two people."""
    from PIL import Image

    canvas = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), "grey")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas


def png_bomb(path, width: int, height: int):
    """A tiny PNG whose header claims width x height pixels (a decompression bomb); returns the path."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4: ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17: ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr: ihdr + 17])))
    path.write_bytes(bytes(data))
    return path
