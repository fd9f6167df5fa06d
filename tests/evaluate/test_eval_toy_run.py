"""`eval`, the experiments and the report on one small toy-world run (16 photos, 8 steps, 2 checkpoints).

The toy world is where the numbers can be checked: a checkpoint's row must be what the toy world's own
`evaluate_lora` gives for the same LoRA and suite, image for image.
"""

import json
import re
import shutil
import subprocess

import pytest

from helpers import run_cli
from lookalike.rundir import RunDir

OVERRIDES = ["train.epochs=4", "train.checkpoint_every=4", "train.sample_every=4", "generate.steps=8",
             "eval.toy_plain=2", "eval.toy_trigger=2", "eval.seeds=[0]", "eval.empty_seeds=3"]
CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A trained toy run: 16 photos, batch 8, 4 epochs = 8 steps, checkpoints at steps 4 and 8."""
    from lookalike.config import save_config
    from lookalike.data.cache import build_cache
    from lookalike.toy.demo import demo_config, write_dataset
    from lookalike.train.run import train_stage

    rd = RunDir(tmp_path_factory.mktemp("eval") / "run")
    write_dataset(rd.root / "photos", n=16)
    cfg = demo_config(rd.root / "photos", OVERRIDES)
    save_config(cfg, rd.config_path)
    build_cache(cfg, rd)
    train_stage(cfg, rd)
    return rd, cfg


@pytest.fixture(scope="module")
def judge(toy_run):
    from lookalike.evaluate.judges import ToyJudge

    return ToyJudge(toy_run[1])


@pytest.fixture(scope="module")
def evaluated(toy_run, judge):
    from lookalike.evaluate.run import evaluate_run

    rd, cfg = toy_run
    return evaluate_run(cfg, rd, judge=judge)


@pytest.fixture(scope="module")
def experiments(toy_run, judge, evaluated):
    from lookalike.evaluate.experiments import empty_prompt, replay_captions

    rd, cfg = toy_run
    return empty_prompt(cfg, rd, judge), replay_captions(cfg, rd, judge)


def test_a_checkpoints_numbers_are_the_toy_worlds_own(toy_run, evaluated, judge):
    """Same LoRA, same suite: eval's row equals `toy.demo.evaluate_lora`, down to the pixel distance."""
    from lookalike.evaluate.suite import toy_suite
    from lookalike.toy.demo import evaluate_lora

    rd, cfg = toy_run
    rows = {r["step"]: r for r in evaluated["checkpoints"]}
    toy, _ = toy_suite(cfg)
    expected = evaluate_lora(cfg, rd.root / "train" / "checkpoints" / "step-000004.safetensors", toy,
                             scorer=judge.scorer)
    got = dict(rows[4]["lora"])
    assert got.pop("empty") in (0.0, 1.0)  # one image of the empty prompt: found or not
    assert got == expected["lora"]
    assert rows[4]["preservation"] == expected["preservation"]
    assert {k: v for k, v in evaluated["base"]["metrics"].items() if k != "empty"} == expected["base"]
    assert rows[8]["preservation"]["image_distance"] != rows[4]["preservation"]["image_distance"]
    assert rows[4]["scores"]["preservation"] == expected["preservation"]["agreement"]


def test_eval_writes_every_checkpoint_and_recommends_one(toy_run, evaluated):
    from lookalike.evaluate.recommend import recommend

    rd, cfg = toy_run
    folder = rd.root / "eval"
    saved = json.loads((folder / "metrics.json").read_text())
    assert [r["step"] for r in saved["checkpoints"]] == [4, 8]  # step 8 once, though lora.safetensors is step 8 too
    assert saved["recommendation"] == recommend(saved["checkpoints"], cfg.eval)
    assert saved["bounds"] == {"min_likeness": 0.3, "max_leakage": 0.2, "max_elsewhere": 0.2, "min_preservation": 0.8,
                               "max_copy": 0.1}  # the report shows these
    assert saved["images"] == 3 * 5  # base + 2 checkpoints, 2 + 2 + empty prompts x 1 seed
    for model in ("base", "step-000004", "step-000008"):
        assert (folder / model / "trigger-grid.png").is_file()
        assert len(list((folder / model / "plain").glob("*.png"))) == 2
    assert "| step-000008 |" in (folder / "metrics.md").read_text()


def test_eight_steps_learn_nothing_and_nothing_is_recommended(toy_run, evaluated):
    """8 toy steps are far too few to learn Arthur (the demo trains 400): eval must not dress that up."""
    rd, _ = toy_run
    saved = json.loads((rd.root / "eval" / "metrics.json").read_text())
    assert max(r["scores"]["likeness"] for r in saved["checkpoints"]) < 0.3
    assert saved["recommendation"]["step"] is None
    last = (rd.root / "eval" / "metrics.md").read_text().strip().splitlines()[-1]
    assert last.startswith("no checkpoint recommended: no checkpoint learned the person") and "Try: train longer" in last


def test_evaluating_one_checkpoint_again_keeps_the_others_rows(toy_run, evaluated, tmp_path):
    from lookalike.evaluate.run import merge_rows

    path = toy_run[0].root / "eval" / "metrics.json"
    fingerprint = evaluated["suite"]["fingerprint"]
    new = [dict(evaluated["checkpoints"][1], scores={"likeness": 0.5})]
    merged = merge_rows(path, new, fingerprint)
    assert [r["step"] for r in merged] == [4, 8] and merged[1]["scores"] == {"likeness": 0.5}
    assert merge_rows(path, new, "another suite") == new  # rows of another suite are not comparable


def test_strict_bounds_recommend_nothing_and_say_which_bound(toy_run, evaluated):
    from lookalike.config import load_config
    from lookalike.evaluate.recommend import recommend

    strict = load_config(None, overrides=["eval.min_preservation=1.0"]).eval
    rows = [r for r in evaluated["checkpoints"] if r["scores"]["preservation"] < 1.0]
    assert rows, "the LoRA changed nothing at all"
    rec = recommend(rows, strict)
    assert rec["step"] is None and "eval.min_preservation 1" in rec["reason"]


def test_empty_prompt_experiment(toy_run, experiments):
    rd, _ = toy_run
    empty, _ = experiments
    folder = rd.root / "experiments" / "empty"
    assert empty["seeds"] == [0, 1, 2] and len(empty["found"]) == 3
    assert empty["share_lora"] == sum(empty["found"]) / 3
    recommended = json.loads((rd.root / "eval" / "metrics.json").read_text())["recommendation"]["name"]
    assert empty["checkpoint"] == (recommended or "step-000008")  # none recommended after 8 steps: the last
    from PIL import Image

    with Image.open(folder / "lora-grid.png") as im:
        assert im.size == (3 * 64, 64)
    assert len(list((folder / "base").glob("*.png"))) == 3


def test_replay_experiment_sets_each_photo_beside_its_caption_redrawn(toy_run, experiments):
    rd, _ = toy_run
    _, replay = experiments
    assert replay["photos"] == 16 and len(replay["rows"]) == 16
    assert replay["found_in_photos"] >= 0.9  # the judge finds Arthur in his own photos
    first = replay["rows"][0]
    assert first["photo"] == "arthur-000.png" and first["caption"].startswith("Arthur")
    assert first["others"] == max(0, len(first["people"]) - 1)
    assert replay["others"] == sum(r["others"] for r in replay["rows"])
    assert (rd.root / "experiments" / "replay" / "pairs.png").is_file()


def test_cli_eval_names_the_problem(tmp_path, toy_run):
    not_run = run_cli(["eval", tmp_path], cwd=tmp_path)
    assert not_run.returncode == 2 and "is not a run folder (no config.yaml)" in not_run.stderr
    wrong = run_cli(["eval", toy_run[0].root, "--step", "5"], cwd=tmp_path)
    assert wrong.returncode == 2 and "saved steps: 4, 8" in wrong.stderr


def test_report_is_one_self_contained_file(toy_run, evaluated, experiments):
    rd, _ = toy_run
    r = run_cli(["report", rd.root], cwd=rd.root)
    assert r.returncode == 0, r.stderr
    page = (rd.root / "report.html").read_text()
    for section in ("recommendation", "metrics", "gallery", "experiments", "training", "dataset"):
        assert f'id="{section}"' in page
    sources = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(sources) == page.count("<img ") > 20
    assert all(s.startswith("data:image/") for s in sources)  # nothing read from disk or the network
    assert page.count("<svg") == 6  # four headline metrics and prompt following against the step; the losses
    assert page.count("data:image/gif") == 2  # the progress GIFs, one per preview prompt
    assert "Use <b>" in page or "No checkpoint recommended" in page


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (.ci/run installs it)")
def test_report_renders_in_chromium(toy_run, evaluated, experiments, tmp_path):
    from PIL import Image

    from lookalike.evaluate.report import write_report

    rd, cfg = toy_run
    page = write_report(cfg, rd)
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=3000"]
    dom = subprocess.run(base + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    images = page.read_text().count("<img ")
    assert f'data-images="{images}/{images}"' in dom  # every embedded image decoded: none broken
    shot = tmp_path / "report.png"
    subprocess.run(base + ["--window-size=1280,1600", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, check=True)
    with Image.open(shot) as im:
        assert im.size == (1280, 1600)
        assert len(im.convert("L").getcolors(1 << 16)) > 50  # drawn, not a blank page
