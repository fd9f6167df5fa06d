"""Aspect-ratio buckets: crop each photo to the nearest of a few shapes of about resolution² pixels.

Phone photos are 3:4 or 4:3. A square crop of a 3:4 portrait cuts off the top of the head or the
chin; a 768x1024-ish bucket keeps the whole frame. Every side is a multiple of 16 (FLUX's 8x VAE
then 2x2 patches), and every bucket holds at most resolution² pixels so memory stays as planned.
"""

from __future__ import annotations

import math

# Aspect ratios (width / height) offered, from 1:2 portrait to 2:1 landscape; phones give 3:4 and 4:3.
RATIOS = (1 / 2, 9 / 16, 2 / 3, 3 / 4, 1.0, 4 / 3, 3 / 2, 16 / 9, 2.0)


def aspect_buckets(resolution: int, ratios=RATIOS) -> list[tuple[int, int]]:
    """(width, height) pairs, multiples of 16, with w·h <= resolution² and w/h close to each ratio.

    Landscape buckets mirror the portrait ones, so a photo and its rotation get the same shape.
    """
    area = resolution * resolution
    portrait = []
    for r in sorted({min(r, 1 / r) for r in ratios}):
        w = max(16, int(math.sqrt(area * r)) // 16 * 16)
        h = max(16, int(area / w) // 16 * 16)
        if (w, h) not in portrait:
            portrait.append((w, h))
    return portrait + [(h, w) for w, h in reversed(portrait) if w != h]


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to width/height (in log space, so 1:2 and 2:1 are symmetric)."""
    target = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b[0] / b[1]) - target))


def crop_box(width: int, height: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The centred box of `width x height` with the aspect ratio of `size` = (w, h): (left, top, right, bottom)."""
    tw, th = size
    if width * th > height * tw:  # too wide: trim the sides
        w = round(height * tw / th)
        left = (width - w) // 2
        return left, 0, left + w, height
    h = round(width * th / tw)
    top = (height - h) // 2
    return 0, top, width, top + h


def fit(image, size: tuple[int, int]):
    """Centre-crop `image` to the aspect ratio of `size` = (w, h), then resize to exactly `size` (Lanczos)."""
    from PIL import Image

    return image.resize(size, Image.Resampling.LANCZOS, box=crop_box(image.width, image.height, size))


def training_size(width: int, height: int, resolution: int, aspect: str) -> tuple[int, int]:
    """The (w, h) a photo of `width x height` is trained at: its bucket, or resolution² in square mode."""
    if aspect == "square":
        return resolution, resolution
    return nearest_bucket(width, height, aspect_buckets(resolution))
