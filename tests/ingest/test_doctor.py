"""The dataset doctor: each check on its own, faces on real photos, and `lookalike ingest` on a messy folder."""

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from helpers import astronaut, grace_hopper, png_bomb, run_cli, side_by_side
from lookalike.config import load_config
from lookalike.ingest.doctor import (
    PhotoCheck, duplicate_flags, hamming, leave_out_reason, pick_person, sharpness, stem_flags, tile_sharpness,
    upscale_factor,
)
from lookalike.ingest.faces import face_distance, find_faces, frame_position


def test_sharpness_falls_with_blur():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 255, (64, 64)).astype(np.float64)
    blurred = np.asarray(Image.fromarray(sharp.astype(np.uint8)).filter(ImageFilter.GaussianBlur(2)), dtype=np.float64)
    assert sharpness(np.full((32, 32), 7.0)) == 0.0
    assert sharpness(blurred) < sharpness(sharp) / 20
    # one sharp tile (the subject) in a flat photo is enough
    photo = np.full((128, 128), 100.0)
    photo[:32, :32] = sharp[:32, :32]
    assert tile_sharpness(photo) == pytest.approx(sharpness(photo[:32, :32]))


def test_hamming_and_upscale():
    assert hamming("ff00", "ff00") == 0 and hamming("ff00", "0f01") == 5
    assert upscale_factor(4032, 3024, (1184, 880)) < 1  # a phone photo is shrunk
    assert upscale_factor(64, 64, (1024, 1024)) == 16.0
    assert upscale_factor(100, 400, (64, 64)) == pytest.approx(0.64)  # the centre 100x100 crop -> 64x64


def test_duplicates_flag_the_later_copy():
    a = PhotoCheck("a.jpg", True, sha256="1", phash="ffffffff00000000")
    b = PhotoCheck("b.jpg", True, sha256="1", phash="ffffffff00000000")
    c = PhotoCheck("c.jpg", True, sha256="2", phash="ffffffff00000007")  # 3 bits away from a
    d = PhotoCheck("d.jpg", True, sha256="3", phash="00000000ffffffff")
    bad = PhotoCheck("e.jpg", False, reason="not an image")
    duplicate_flags([a, b, c, d, bad], max_bits=4)
    assert a.flags == [] and d.flags == [] and bad.flags == []
    assert b.flags == ["duplicate: the same file as a.jpg"]
    assert c.flags[0].startswith("near duplicate: looks like a.jpg (3 of 64")
    duplicate_flags([PhotoCheck("x", True, sha256="8", phash="ff"), PhotoCheck("y", True, sha256="9", phash="f0")], 3)


def test_the_flag_lands_on_the_copy_and_shared_stems_are_paired():
    # "IMG_1 copy.jpg" sorts before "IMG_1.jpg", but the longer name is the copy
    copy = PhotoCheck("IMG_1 copy.jpg", True, sha256="1", phash="ff00ff00ff00ff00")
    original = PhotoCheck("IMG_1.jpg", True, sha256="1", phash="ff00ff00ff00ff00")
    heic = PhotoCheck("IMG_2.HEIC", True, sha256="2", phash="00ff00ff00ff00ff")
    jpg = PhotoCheck("IMG_2.JPG", True, sha256="3", phash="00ff00ff00ff00fe")  # the same shot, re-encoded
    checks = [copy, original, heic, jpg]
    duplicate_flags(checks, max_bits=4)
    stem_flags(checks)
    assert original.flags == [] and copy.flags == ["duplicate: the same file as IMG_1.jpg"]
    assert heic.flags[0].startswith("same shot: IMG_2.JPG in another format")
    assert jpg.flags == ["shares its name with IMG_2.HEIC: its caption file is IMG_2.JPG.txt"]
    assert leave_out_reason(heic, faces_checked=False).startswith("same shot")
    assert leave_out_reason(jpg, faces_checked=True) is None
    assert leave_out_reason(copy, faces_checked=False).startswith("duplicate")


def test_faces_on_real_photos():
    a, g = astronaut(), grace_hopper()
    fa, fg = find_faces(a), find_faces(g)
    assert len(fa) == 1 and len(fg) == 1  # the astronaut's mission patch (HOG score ~0.1) is not a face
    assert face_distance(fa[0].embedding, fg[0].embedding) > 0.6  # two people
    for variant in (a.transpose(Image.FLIP_LEFT_RIGHT), a.resize((256, 256)), _jpeg(a, 30)):
        assert face_distance(fa[0].embedding, find_faces(variant)[0].embedding) < 0.6  # the same person
    both = find_faces(side_by_side(a, g))
    assert len(both) == 2
    positions = {frame_position(f, 1024): face_distance(f.embedding, fa[0].embedding) < 0.6 for f in both}
    assert positions == {"left": True, "right": False}
    assert find_faces(Image.new("RGB", (200, 200), "grey")) == []


def test_pick_person_is_the_face_in_most_photos():
    a, g = find_faces(astronaut())[0], find_faces(grace_hopper())[0]
    a2 = find_faces(_jpeg(astronaut(), 40))[0]
    chosen = pick_person([[g], [a], [a2, g], [a], []], distance=0.6)
    assert face_distance(chosen, a.embedding) < 0.6
    assert pick_person([[], []], 0.6) is None


def _jpeg(image, quality):
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def messy_folder(folder):
    """The files a phone export and a helpful friend produce: good photos and every kind of bad one."""
    folder.mkdir()
    a, g = astronaut().resize((1024, 1024)), grace_hopper()
    a.save(folder / "arthur.jpg", quality=92)
    a.save(folder / "copy-of-arthur.jpg", quality=92)  # the same bytes
    a.save(folder / "arthur-again.jpg", quality=70)  # the same picture, recompressed
    side_by_side(a.resize((512, 512)), g).save(folder / "with-friend.jpg")
    g.save(folder / "stranger.png")
    a.filter(ImageFilter.GaussianBlur(10)).crop((0, 0, 600, 1024)).save(folder / "shaky.jpg")
    # stored sideways, as phones do: a landscape file with EXIF orientation 6 is a portrait photo
    exif = Image.Exif()
    exif[0x0112] = 6
    a.resize((600, 800)).rotate(90, expand=True).save(folder / "sideways.jpg", exif=exif)  # stored 800x600
    a.convert("CMYK").save(folder / "print.jpg")
    Image.fromarray((np.asarray(a.convert("L"), dtype=np.uint16) * 257)).save(folder / "deep.png")
    rgba = a.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(folder / "alpha.png")
    frames = [a.resize((400, 400)), g.resize((400, 400))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    a.resize((64, 64)).save(folder / "thumb.png")
    buf = io.BytesIO()
    a.save(buf, "JPEG")
    (folder / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "notes.jpg").write_text("not a photo")
    png_bomb(folder / "bomb.png", 100_000, 100_000)
    (folder / "arthur.txt").write_text("Arthur smiling")  # a caption sidecar is not a photo
    return folder


def test_ingest_cli_on_a_messy_folder(tmp_path):
    folder = messy_folder(tmp_path / "photos")
    run = tmp_path / "run"
    result = run_cli(["ingest", folder, "--run", run, "--reference", "arthur.jpg", "--preset", "tiny",
                      "--set", "dataset.resolution=128"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((run / "ingest" / "doctor.json").read_text())
    by = {p["file"]: p for p in record["photos"]}
    assert "arthur.txt" not in by and len(by) == 15

    for name, reason in (("cut.jpg", "truncated"), ("notes.jpg", "not an image"), ("bomb.png", "decompression bomb")):
        assert not by[name]["usable"] and reason in by[name]["reason"], by[name]
        assert name in result.stdout  # every skipped file is in the printed table, with its reason
    usable = [p for p in record["photos"] if p["usable"]]
    assert len(usable) == 12 and record["summary"]["rejected"] == 3

    assert by["sideways.jpg"]["width"] == 600 and by["sideways.jpg"]["height"] == 800  # upright
    assert by["sideways.jpg"]["person"] is True  # found, which it would not be lying on its side
    assert "CMYK -> RGB" in by["print.jpg"]["notes"] and by["print.jpg"]["person"]
    assert any("16-bit" in n for n in by["deep.png"]["notes"])
    assert any("transparency" in n for n in by["alpha.png"]["notes"])
    assert any("2 frames" in n for n in by["anim.gif"]["notes"])

    assert by["copy-of-arthur.jpg"]["flags"] == ["duplicate: the same file as arthur.jpg"]
    assert any(f.startswith("near duplicate: looks like ") for f in by["arthur-again.jpg"]["flags"])
    # enlargement is recorded and listed once in the summary, not flagged on the row
    assert by["thumb.png"]["enlarged"] == 2.0 and not any("enlarged" in f for f in by["thumb.png"]["flags"])
    assert record["summary"]["small"] == ["thumb.png"] and result.stdout.count("enlarged") == 1
    assert any(f.startswith("blurry") for f in by["shaky.jpg"]["flags"])
    assert not any(f.startswith("blurry") for f in by["arthur.jpg"]["flags"])

    assert by["with-friend.jpg"]["faces"] == 2 and by["with-friend.jpg"]["person"]
    assert by["with-friend.jpg"]["position"] == "left"
    assert by["stranger.png"]["faces"] == 1 and by["stranger.png"]["person"] is False
    assert any(f.startswith("person not found") for f in by["stranger.png"]["flags"])
    assert record["summary"]["person_from"] == "reference photo arthur.jpg"
    assert record["reference"].endswith("arthur.jpg") and record["faces_checked"]

    # what trains by default: readable, not a copy, sharp, the person in it
    out = {name: p["leave_out"] for name, p in by.items() if p["leave_out"]}
    assert set(out) >= {"cut.jpg", "notes.jpg", "bomb.png", "copy-of-arthur.jpg", "stranger.png", "shaky.jpg"}
    assert out["copy-of-arthur.jpg"].startswith("duplicate") and out["stranger.png"].startswith("person not found")
    assert not by["arthur.jpg"]["leave_out"] and not by["with-friend.jpg"]["leave_out"]
    assert not by["arthur-again.jpg"]["leave_out"]  # a near duplicate is flagged, not left out
    assert (run / "photos.yaml").is_file()
    assert json.loads((run / "ingest" / "manifest.json").read_text())["summary"] == record["summary"]
    assert load_config(run / "config.yaml").dataset.photos == str(folder.resolve())


def test_ingest_refuses_what_it_cannot_use(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("photos go here")
    result = run_cli(["ingest", empty, "--run", tmp_path / "r1"], cwd=tmp_path)
    assert result.returncode == 2 and "is empty (no photo files)" in result.stderr and "Traceback" not in result.stderr

    result = run_cli(["ingest", tmp_path / "nowhere"], cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr

    photos = tmp_path / "photos"
    photos.mkdir()
    grace_hopper().save(photos / "g.jpg")
    Image.new("RGB", (300, 300), "grey").save(photos / "wall.jpg")
    result = run_cli(["ingest", photos, "--run", tmp_path / "r2", "--reference", "wall.jpg"], cwd=tmp_path)
    assert result.returncode == 2 and "caption.reference" in result.stderr and "no face found" in result.stderr
    result = run_cli(["ingest", photos, "--run", tmp_path / "r3", "--reference", "selfie.jpg"], cwd=tmp_path)
    assert result.returncode == 2 and "'selfie.jpg' is neither a file" in result.stderr

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_text("text")
    result = run_cli(["ingest", junk, "--run", tmp_path / "r4"], cwd=tmp_path)
    assert result.returncode == 2 and "none of the 1 files" in result.stderr
    assert json.loads((tmp_path / "r4" / "ingest" / "doctor.json").read_text())["photos"][0]["reason"]
