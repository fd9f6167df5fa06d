"""Decoding the files phone folders really hold, and refusing the ones that cannot be trained on."""

import io

import numpy as np
import pytest
from PIL import Image

from helpers import png_bomb
from lookalike.ingest.decode import PhotoRejected, decode


def _noise(w=64, h=64, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_exif_orientation_6_comes_out_upright(tmp_path):
    # Stored sideways as a phone does: 40 wide, 20 high, left half red, right half blue, orientation 6
    # (display rotated 90° clockwise) -> upright it is 20 wide, 40 high, red on top.
    stored = Image.new("RGB", (40, 20), "blue")
    stored.paste(Image.new("RGB", (20, 20), "red"), (0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "side.jpg", exif=exif, quality=95)
    d = decode(tmp_path / "side.jpg")
    assert d.image.size == (20, 40)
    top, bottom = np.asarray(d.image)[5, 10], np.asarray(d.image)[35, 10]
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60
    assert any("orientation 6" in n for n in d.notes)


def test_modes_become_8_bit_rgb(tmp_path):
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure red in print inks
    cmyk = decode(tmp_path / "cmyk.jpg")
    assert cmyk.image.mode == "RGB" and cmyk.image.getpixel((16, 16))[0] > 200

    deep = np.full((16, 16), 65535, dtype=np.uint16)
    deep[:, 8:] = 32768
    Image.fromarray(deep).save(tmp_path / "deep.png")  # 16 bits per channel
    d16 = decode(tmp_path / "deep.png")
    assert d16.image.mode == "RGB" and d16.image.getpixel((0, 0)) == (255, 255, 255)
    assert d16.image.getpixel((12, 0)) == (128, 128, 128)  # scaled, not clipped to white

    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.paste(Image.new("RGBA", (8, 16), (0, 0, 255, 255)), (0, 0))
    rgba.save(tmp_path / "alpha.png")
    da = decode(tmp_path / "alpha.png")
    assert da.image.getpixel((2, 2)) == (0, 0, 255) and da.image.getpixel((12, 2)) == (255, 255, 255)

    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    gif = decode(tmp_path / "anim.gif")
    assert gif.image.mode == "RGB" and gif.image.getpixel((8, 8))[0] > 200 and "2 frames" in gif.notes[0]

    _noise().save(tmp_path / "phone.heic")
    heic = decode(tmp_path / "phone.heic")
    assert heic.image.size == (64, 64) and heic.format == "HEIF"

    assert decode(tmp_path / "alpha.png").image.size == (16, 16)  # tiny images decode; the doctor flags size


def test_bad_files_are_rejected_with_a_reason(tmp_path):
    buf = io.BytesIO()
    _noise(256, 256).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(PhotoRejected, match="truncated"):
        decode(tmp_path / "cut.jpg")

    (tmp_path / "notes.jpg").write_text("not a photo at all")
    with pytest.raises(PhotoRejected, match="not an image"):
        decode(tmp_path / "notes.jpg")

    # Decompression bombs: tiny PNGs whose headers claim 10 gigapixels (Pillow's own guard) and
    # 80 megapixels (ours, below Pillow's); neither is decoded.

    with pytest.raises(PhotoRejected, match="decompression bomb, its pixels never decoded"):
        decode(png_bomb(tmp_path / "giga.png", 100_000, 100_000))
    with pytest.raises(PhotoRejected, match=r"10000x8000 = 80 MP is over the 64 MP limit"):
        decode(png_bomb(tmp_path / "big.png", 10_000, 8_000))


def test_draft_decoding_is_smaller_but_keeps_the_true_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    _noise(1600, 1200).save(tmp_path / "phone.jpg", exif=exif)  # stored landscape, upright portrait
    full = decode(tmp_path / "phone.jpg")
    quick = decode(tmp_path / "phone.jpg", draft_side=300)
    assert full.image.size == full.full_size == (1200, 1600)
    assert quick.full_size == (1200, 1600) and quick.image.size == (300, 400)  # 1/4 scale, still upright
    assert decode(tmp_path / "phone.jpg", draft_side=4000).image.size == (1200, 1600)  # never enlarged
