"""The demo end to end, cheaply: a change that breaks learning (LoRA, loss, data, sampler) fails here.

The README's `lookalike demo` trains 800 steps (Arthur's 40 photos and 40 grounding scenes) and draws
160 images; this trains two people (`--people 2`: Arthur and Grace) for 600 steps on their photos
alone and scores a smaller suite, with looser thresholds.
"""

import json

import pytest

from helpers import run_cli
from lookalike.toy.demo import run_demo, write_dataset


@pytest.mark.slow
def test_short_demo_learns_arthur_and_grace_apart_and_keeps_the_rest(tmp_path):
    """Two people in one LoRA, cheaply: Arthur's and Grace's 40 photos each, no grounding scenes, 600 steps."""
    run = tmp_path / "demo"
    # their photos alone (no grounding scenes): 600 steps are enough to see both appear; with the demo's
    # 40 grounding scenes at weight 4 they appear later (BENCHMARKS.md, the toy world)
    result = run_demo(run, ["train.epochs=60", "train.sample_every=30", "train.checkpoint_every=1000"],
                      suite_size=(4, 6, 2), others=0, people=2)
    base, lora, kept = result["base"], result["lora"], result["preservation"]
    assert base["likeness"] <= 0.1 and base["likeness_grace"] <= 0.1, result  # words alone cannot draw them
    # 600 steps: both start to appear (counted over every image that asks for them: 18 each; on this VM
    # 0.61 for Arthur and 0.39 for Grace, whose bun is a smaller thing to learn than violet hair)
    assert lora["likeness_arthur_all"] >= base["likeness_arthur_all"] + 0.3, result
    assert lora["likeness_grace_all"] >= base["likeness_grace_all"] + 0.2, result
    assert lora["confusion"] <= 0.25, result  # ...each where asked for, not the other
    assert kept["agreement"] >= 0.7, result
    assert lora["prompt_following"] >= 0.6, result
    # what the user is told to look at exists
    saved = json.loads((run / "demo" / "metrics.json").read_text())
    assert saved["lora"]["likeness_grace"] == lora["likeness_grace"] and saved["steps"] == 600
    assert saved["people"] == ["Arthur", "Grace"]
    table = (run / "demo" / "metrics.md").read_text()
    assert "| likeness (Arthur" in table and "| likeness of Grace" in table and "| confusion" in table
    assert len(list((run / "train").glob("progress-*.gif"))) == 2
    assert (run / "demo" / "lora" / "trigger-grid.png").is_file() and (run / "demo" / "lora" / "both-grid.png").is_file()
    assert (run / "train" / "lora.safetensors").is_file()


def test_dataset_is_arthur_captioned_like_the_seed(tmp_path):
    from PIL import Image

    paths = write_dataset(tmp_path / "photos", n=12)
    assert len(paths) == 12
    captions = [p.with_suffix(".txt").read_text().strip() for p in paths]
    assert all(c.startswith("Arthur") for c in captions)
    assert any(" and a " in c for c in captions)  # sometimes with others, mentioned after him
    assert {c.rsplit(", ", 1)[1] for c in captions} > {"on a beach"}  # varied places
    with Image.open(paths[0]) as im:
        assert im.size == (64, 64)


def test_demo_refuses_a_folder_that_already_trained(tmp_path):
    (tmp_path / "run" / "train" / "resume").mkdir(parents=True)
    result = run_cli(["demo", tmp_path / "run"], cwd=tmp_path)
    assert result.returncode == 2
    assert "already holds a demo run" in result.stderr and "new folder" in result.stderr
    result = run_cli(["demo", tmp_path / "three", "--people", "3"], cwd=tmp_path)
    assert result.returncode == 2 and "--people 3" in result.stderr and "give 1 or 2" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "three" / "photos").exists()


def test_toy_scenes_command_writes_captioned_pngs(tmp_path):
    result = run_cli(["toy", "scenes", tmp_path / "out", "-n", "3", "--seed", "4"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert len(pngs) == 3 and all(p.with_suffix(".txt").read_text().strip() for p in pngs)


def test_others_are_captioned_without_arthur_and_load_as_grounding(tmp_path):
    from lookalike.data.photos import find_grounding
    from lookalike.toy.demo import write_others

    write_others(tmp_path / "others", 6)
    found = find_grounding(tmp_path / "others", "Arthur")
    assert len(found) == 6 and not any("Arthur" in p.caption for p in found)
