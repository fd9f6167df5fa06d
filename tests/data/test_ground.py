"""The ground stage on the toy model: prompts from the captions, seeded images, resumable, and the cache's use."""

import json

import numpy as np
import pytest
from PIL import Image

from lookalike.config import load_config
from lookalike.data.cache import build_cache
from lookalike.data.ground import ground_prompts, ground_stage, stored_key
from lookalike.errors import ConfigError
from lookalike.rundir import RunDir


def test_prompts_replace_the_trigger_cycle_the_phrases_and_seed_each_image_alone():
    captions = ["Arthur in a red shirt on the left, on a beach", "Arthur and a woman, indoors"]
    got = ground_prompts(captions, "Arthur", ["a man", "an old man", "a boy"], 5, seed=3)
    assert [p for p, _ in got] == [
        "a man in a red shirt on the left, on a beach",  # caption 0, phrase 0
        "an old man and a woman, indoors",  # caption 1, phrase 1
        "an old man in a red shirt on the left, on a beach",  # second pass: phrases shifted by one
        "a boy and a woman, indoors",
        "a boy in a red shirt on the left, on a beach",
    ]
    assert all("Arthur" not in p for p, _ in got)
    seeds = [s for _, s in got]
    assert len(set(seeds)) == 5
    assert ground_prompts(captions, "Arthur", ["a man", "an old man", "a boy"], 3, seed=3) == got[:3]  # prefix-stable
    assert [s for _, s in ground_prompts(captions, "Arthur", ["a man"], 5, seed=4)] != seeds


def _toy(tmp_path, *overrides):
    from lookalike.toy.demo import write_dataset

    photos = tmp_path / "photos"
    if not photos.exists():
        write_dataset(photos, 8, 0)
    return load_config(None, preset="toy", overrides=[
        f"dataset.photos={photos}", "dataset.class_phrase=a man", "ground.count=6", "generate.steps=2",
        "generate.batch_size=4", *overrides])


def _pixels(folder):
    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("ground-*.png"))]


def test_ground_is_seeded_resumable_and_feeds_the_cache(tmp_path):
    cfg = _toy(tmp_path)
    fresh = RunDir(tmp_path / "fresh")
    first = ground_stage(cfg, fresh)
    assert (first.images, first.drawn, first.reused) == (6, 6, 0)
    texts = sorted(fresh.ground_dir.glob("ground-*.txt"))
    assert len(texts) == 6 and all("Arthur" not in t.read_text() and "a man" in t.read_text() for t in texts)
    assert all(stored_key(p) for p in fresh.ground_dir.glob("ground-*.png"))

    # Ctrl-C after the second image: both are kept whole, and the re-run draws only the other four.
    run = RunDir(tmp_path / "run")

    def stop_after_two(n, total):
        assert total == 6
        if n == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ground_stage(cfg, run, on_image=stop_after_two)
    kept = sorted(run.ground_dir.glob("ground-*.png"))
    assert len(kept) == 2 and not list(run.ground_dir.glob(".*tmp"))
    times = [p.stat().st_mtime_ns for p in kept]
    with pytest.raises(ConfigError, match=r"4 of the 6 grounding images .*`lookalike ground"):
        build_cache(cfg, run)  # nothing trains on half a set
    again = ground_stage(cfg, run)
    assert (again.drawn, again.reused) == (4, 2)
    assert [p.stat().st_mtime_ns for p in kept] == times
    # Seeded: the interrupted run and the fresh one drew the same images (up to the float rounding of
    # denoising them in other batches: at most one grey level, lookalike.generate).
    for a, b in zip(_pixels(run.ground_dir), _pixels(fresh.ground_dir), strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert ground_stage(cfg, run).drawn == 0

    # The cache trains them as grounding examples, with their prompts as captions.
    report = build_cache(cfg, run)
    index = json.loads(run.cache_index.read_text())
    grounding = [it for it in index["items"] if it["grounding"]]
    assert report.items == 8 + 6 and len(grounding) == 6 and not any(it["holdout"] for it in grounding)
    assert [it["caption"] for it in grounding] == [t.read_text().strip() for t in texts]

    # Another setting that changes the pixels (the sampler's steps) redraws them; fewer images removes the rest.
    fewer = _toy(tmp_path, "ground.count=3", "generate.steps=3")
    redrawn = ground_stage(fewer, run)
    assert (redrawn.images, redrawn.drawn) == (3, 3)
    assert sorted(p.name for p in run.ground_dir.iterdir() if p.suffix in (".png", ".txt")) == [
        f"ground-{i:04d}{ext}" for i in range(3) for ext in (".png", ".txt")]


def test_ground_refuses_without_a_class_phrase_or_a_count(tmp_path):
    cfg = _toy(tmp_path, "dataset.class_phrase=null")
    with pytest.raises(ConfigError, match="dataset.class_phrase"):
        ground_stage(cfg, RunDir(tmp_path / "run"))
    with pytest.raises(ConfigError, match="--count"):
        ground_stage(_toy(tmp_path, "ground.count=0"), RunDir(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    phrases = _toy(tmp_path, "dataset.class_phrase=null", "ground.phrases=['a woman', 'a boy']", "ground.count=2")
    ground_stage(phrases, RunDir(tmp_path / "run"))
    assert ["a woman" in t.read_text() or "a boy" in t.read_text()
            for t in sorted((tmp_path / "run" / "ground").glob("*.txt"))] == [True, True]


def test_the_verb_without_a_count_exits_2_in_one_line_and_writes_nothing(tmp_path):
    from helpers import run_cli
    from lookalike.toy.demo import write_dataset

    write_dataset(tmp_path / "photos", 2, 0)
    out = run_cli(["ground", "run", "--photos", "photos", "--preset", "toy"], cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "ground.count is 0" in out.stderr and "--count 40" in out.stderr
    assert not (tmp_path / "run").exists()
