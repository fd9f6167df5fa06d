"""Decoding one photo the way a phone meant it: upright, 8-bit RGB, or a reason it was skipped.

Handles what phone folders hold: JPEG with EXIF orientation (sideways portraits), HEIC/HEIF (through
pillow-heif), PNG with alpha or 16 bits per channel, CMYK JPEG from print workflows, palette images,
animated GIFs (first frame), and whatever else Pillow opens. Refuses, with the reason: files that are
not images, truncated files, and decompression bombs (more pixels than `max_pixels`), without ever
decoding a bomb's pixels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

MAX_PIXELS = 64_000_000  # a 48 MP phone photo is 48e6; anything far beyond is not a photo of a person
_heif_registered = False


class PhotoRejected(Exception):
    """This file cannot be used; `reason` says why in words a user can act on."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path.name}: {reason}")
        self.path, self.reason = path, reason


@dataclass
class Decoded:
    """An upright 8-bit RGB image and what was done to get it."""

    path: Path
    image: "PIL.Image.Image"  # noqa: F821
    format: str
    notes: list[str] = field(default_factory=list)  # e.g. "rotated by EXIF orientation 6", "CMYK -> RGB"
    full_size: tuple[int, int] = (0, 0)  # upright (w, h) of the file, before any draft reduction


def register_heif() -> None:
    global _heif_registered
    if not _heif_registered:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except ImportError:  # HEIC then fails to open, with the reason below
            pass
        _heif_registered = True


def _to_rgb(im, notes: list[str]):
    """Any Pillow mode -> 8-bit RGB. Alpha is composited on white; 16-bit values are scaled, not clipped."""
    import numpy as np
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        notes.append(f"{mode} (16-bit) -> 8-bit")
        im = Image.fromarray(np.clip(np.round(a / peak * 255), 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        a = np.asarray(im, dtype=np.float64)
        notes.append("32-bit float -> 8-bit")
        im = Image.fromarray(np.clip(np.round(a * (255 if a.max() <= 1 else 1)), 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        notes.append(f"{im.mode}: transparency flattened onto white")
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", rgba.size, "white")
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if im.mode != "RGB":
        if im.mode not in ("L", "1"):
            notes.append(f"{im.mode} -> RGB")
        im = im.convert("RGB")
    return im


def decode(path: str | Path, max_pixels: int = MAX_PIXELS, draft_side: int | None = None) -> Decoded:
    """Open `path` as an upright 8-bit RGB image, or raise PhotoRejected with the reason.

    With `draft_side`, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (in the DCT, so several times
    faster) as long as its long side stays >= draft_side: for thumbnails, face detection and the
    images sent to a captioning model, never for training.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:  # checked on the header: the pixels are never decoded
                    raise PhotoRejected(path, f"{w}x{h} = {w * h / 1e6:.0f} MP is over the {max_pixels / 1e6:.0f} MP "
                                              "limit (a decompression bomb, or a huge scan); resize it below the limit")
                fmt = im.format or path.suffix.lstrip(".").upper()
                notes = []
                if draft_side is not None and max(w, h) > draft_side:
                    k = draft_side / max(w, h)
                    im.draft(None, (max(1, int(w * k) + 1), max(1, int(h * k) + 1)))
                if getattr(im, "n_frames", 1) > 1:
                    notes.append(f"{im.n_frames} frames: the first is used")
                    im.seek(0)
                im.load()
                orientation = im.getexif().get(0x0112, 1)
                upright = ImageOps.exif_transpose(im)
                if orientation not in (1, None):
                    notes.append(f"rotated upright (EXIF orientation {orientation})")
                full = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
                return Decoded(path, _to_rgb(upright, notes), fmt, notes, full)
    except PhotoRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PhotoRejected(path, f"refused as a decompression bomb, its pixels never decoded ({e}); "
                                  "if it is a real photo, resize it below the limit") from None
    except UnidentifiedImageError:
        hint = " (HEIC needs pillow-heif: pip install pillow-heif)" if path.suffix.lower() in (".heic", ".heif") else ""
        raise PhotoRejected(path, f"not an image Pillow can read{hint}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise PhotoRejected(path, f"damaged or truncated file ({e}); export it again from the phone") from None


def usable_size(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The upright (w, h) of a photo that decodes, or PhotoRejected with the reason.

    Decodes the whole file (JPEGs at a reduced DCT scale, so it is quick): a truncated file is caught
    here, before any model is loaded, and not half-way through encoding.
    """
    return decode(path, max_pixels, draft_side=256).full_size
