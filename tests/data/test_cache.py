"""The cache stage on the twin: what is encoded, what is reused, and the checks before any model loads."""

import json
import logging

import numpy as np
import pytest
import torch

from helpers import make_photos
from lookalike.config import load_config
from lookalike.data.buckets import fit
from lookalike.data.cache import build_cache, load_cache
from lookalike.data.photos import load_rgb
from lookalike.errors import ConfigError
from lookalike.rundir import RunDir


def _cfg(photos, *overrides):
    return load_config(None, preset="tiny", overrides=[f"dataset.photos={photos}", *overrides])


def test_rerun_encodes_only_what_changed(tmp_path):
    photos = make_photos(tmp_path / "photos", 3)
    run = RunDir(tmp_path / "run")
    cfg = _cfg(photos)
    first = build_cache(cfg, run)
    # 3 latents; texts: 3 captions + the empty caption + 2 preview prompts
    assert (first.items, first.latents_encoded, first.texts_encoded) == (3, 3, 6)
    again = build_cache(cfg, run)
    assert (again.latents_encoded, again.texts_encoded, again.reused) == (0, 0, 3)

    (photos / "IMG_0001.txt").write_text("Arthur on the left with a friend, on a beach")
    one_caption = build_cache(cfg, run)
    assert (one_caption.latents_encoded, one_caption.texts_encoded) == (0, 1)

    from PIL import Image
    Image.new("RGB", (96, 128), "red").save(photos / "IMG_0002.png")
    one_photo = build_cache(cfg, run)
    assert (one_photo.latents_encoded, one_photo.texts_encoded) == (1, 0)

    index = json.loads((run.root / "cache" / "index.json").read_text())
    assert [it["caption"] for it in index["items"]][1] == "Arthur on the left with a friend, on a beach"
    assert index["items"][0]["size"] == [48, 80]  # 96x128 portrait -> portrait bucket at resolution 64
    assert RunDir.read_manifest(run.root / "cache")["latents_encoded"] == 1


def test_cached_latents_are_the_normalised_vae_mode(tmp_path, twin_pipe):
    photos = make_photos(tmp_path / "photos", 3, sizes=((64, 64),))
    run = RunDir(tmp_path / "run")
    build_cache(_cfg(photos, "dataset.holdout=1"), run)
    data = load_cache(run)
    assert len(data.train) == 2 and len(data.holdout) == 1
    item = data.train[0]
    vae = twin_pipe.vae
    x = torch.from_numpy(np.asarray(fit(load_rgb(item.photo), (64, 64)), dtype=np.float32))
    x = (x / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = (vae.encode(x).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor
    torch.testing.assert_close(item.latent, expected[0], rtol=1e-5, atol=1e-5)
    assert item.cond["t5"].shape == (32, twin_pipe.text_encoder_2.config.d_model)
    with torch.no_grad():
        t5, pooled, _ = twin_pipe.encode_prompt("", None, max_sequence_length=32)
    torch.testing.assert_close(data.empty["t5"], t5[0])
    assert [p.prompt for p in data.prompts] == ["Arthur wearing a tuxedo", "Arthur as a wizard"]


def test_bad_datasets_are_refused_before_any_model_loads(tmp_path, caplog):
    run = RunDir(tmp_path / "run")
    photos = make_photos(tmp_path / "photos", 3)
    (photos / "IMG_0001.txt").unlink()
    with pytest.raises(ConfigError, match=r"1 of 3 photos .* no caption file: IMG_0001.png.*lookalike caption"):
        build_cache(_cfg(photos), run)

    make_photos(photos, 3, trigger="Bob")
    with pytest.raises(ConfigError, match=r"3 of 3 captions .* do not contain the trigger word 'Arthur'.*missing_trigger=warn"):
        build_cache(_cfg(photos), run)
    with caplog.at_level(logging.WARNING):
        assert build_cache(_cfg(photos, "dataset.missing_trigger=warn"), run).items == 3
    assert "training anyway" in caplog.text

    with pytest.raises(ConfigError, match=r"fewer than train.batch_size = 4: .* at most 3"):
        build_cache(_cfg(photos, "dataset.trigger=Bob", "train.batch_size=4"), run)
    with pytest.raises(ConfigError, match=r"dataset.holdout = 3 leaves no photo"):
        build_cache(_cfg(photos, "dataset.trigger=Bob", "dataset.holdout=3"), run)
    with pytest.raises(ConfigError, match=r"dataset.photos = .*nowhere.* is not a folder"):
        build_cache(_cfg(tmp_path / "nowhere"), run)
    # "Arthur" inside another word is not the trigger
    (photos / "IMG_0000.txt").write_text("Arthurian legend")
    with pytest.raises(ConfigError, match="do not contain the trigger word"):
        build_cache(_cfg(photos, "dataset.trigger=Arthur"), run)


def test_grounding_photos_train_beside_the_person_and_are_never_held_out(tmp_path):
    photos = make_photos(tmp_path / "photos", 3)
    others = make_photos(tmp_path / "others", 2, trigger="Bob")
    run = RunDir(tmp_path / "run")
    cfg = _cfg(photos, f"dataset.grounding={others}", "dataset.holdout=1", "train.batch_size=2")
    assert build_cache(cfg, run).items == 5
    index = json.loads((run.root / "cache" / "index.json").read_text())
    assert [it["grounding"] for it in index["items"]] == [False] * 3 + [True] * 2
    assert sum(it["holdout"] for it in index["items"][:3]) == 1 and not any(it["holdout"] for it in index["items"][3:])
    assert len(load_cache(run).train) == 4
    assert RunDir.read_manifest(run.root / "cache")["grounding_items"] == 2

    (others / "IMG_0000.txt").write_text("Arthur on a beach")
    with pytest.raises(ConfigError, match=r"dataset.grounding = .* name the person 'Arthur' \(IMG_0000.txt\).*remove"):
        build_cache(cfg, run)
    with pytest.raises(ConfigError, match=r"dataset.grounding = .*nowhere.* is not a folder"):
        build_cache(_cfg(photos, f"dataset.grounding={tmp_path / 'nowhere'}"), run)


def test_a_cache_from_before_model_families_is_read_and_one_of_another_family_is_refused(tmp_path):
    """Indexes written before families existed have no `family`: only FLUX.1 was trained then, and their
    text files hold exactly FLUX.1's conditioning, so they are read. Another family's cache is never used."""
    photos = make_photos(tmp_path / "photos", 2)
    run = RunDir(tmp_path / "run")
    build_cache(_cfg(photos), run)
    index = json.loads(run.cache_index.read_text())
    assert index["family"] == "flux1"
    fresh = load_cache(run, "flux1")

    del index["family"]  # what an index from before the change looks like
    run.cache_index.write_text(json.dumps(index))
    old = load_cache(run, "flux1")
    assert old.family == "flux1" and len(old.train) == len(fresh.train) == 2
    assert all(torch.equal(a.cond["t5"], b.cond["t5"]) for a, b in zip(old.train, fresh.train))

    index["family"] = "flux2-klein"
    run.cache_index.write_text(json.dumps(index))
    with pytest.raises(ConfigError, match=r"written for a flux2-klein model.*lookalike cache"):
        load_cache(run, "flux1")


def test_held_out_photos_are_never_trained_on(tmp_path):
    """The seeded split: the same photos held out when the cache is rebuilt, none of them in a training batch,
    and they are the photos the face judge judges likeness against (evaluate.suite.held_out_photos)."""
    from lookalike.data.loader import BatchStream, make_plan
    from lookalike.evaluate.suite import held_out_photos

    photos = make_photos(tmp_path / "photos", 6, sizes=((64, 64),))
    run = RunDir(tmp_path / "run")
    cfg = _cfg(photos, "dataset.holdout=2", "train.batch_size=2")
    build_cache(cfg, run)
    held = {str(p) for p in held_out_photos(run)}
    data = load_cache(run)
    assert len(held) == 2 and {it.photo for it in data.holdout} == held
    assert not held & {it.photo for it in data.train} and len(data.train) == 4

    (photos / "IMG_0003.txt").write_text("Arthur, the caption changed\n")
    build_cache(cfg, run)
    assert {str(p) for p in held_out_photos(run)} == held  # a rebuilt cache holds out the same photos

    plan = make_plan([tuple(it.latent.shape[-2:]) for it in data.train], cfg)
    stream = iter(BatchStream(data.train, data.empty, plan, 2, cfg.runtime.seed))
    seen = torch.cat([next(stream)["latents"] for _ in range(20)])  # 10 epochs of 2 batches
    for it in data.holdout:
        assert not any(torch.equal(it.latent.float(), z) for z in seen)
    for it in data.train:  # every training photo came round
        assert any(torch.equal(it.latent.float(), z) for z in seen)
