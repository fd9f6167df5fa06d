"""`lookalike fit` through the real CLI on real files: photos to a report, interrupted and continued."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from helpers import astronaut, grace_hopper, make_photos, png_bomb, run_cli
from vlm_server import Script, VLMServer

KEY = "sk-fit-test-4242"


def words(text: str) -> str:
    """Output with Rich's line wrapping undone, for phrase checks."""
    return " ".join(text.split())


def start_cli(args, cwd, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lookalike", *[str(a) for a in args]], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the command ended (rc {proc.returncode}) before the moment to interrupt it:\n{err[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("timed out waiting for the moment to interrupt")


def interrupt(proc: subprocess.Popen) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.slow
def test_fit_toy_from_captioned_photos_to_report_interrupted_in_training(tmp_path):
    """The toy preset from photos with .txt captions and 4 grounding images drawn by the base model: Ctrl-C in
    training, then the same command finishes (drawing nothing again)."""
    from lookalike.toy.demo import write_dataset

    photos = tmp_path / "photos"
    write_dataset(photos, 16, 0)
    run = tmp_path / "run"
    command = ["fit", photos, "--trigger", "Arthur", "--run", run, "--preset", "toy", "--steps", "24", "--yes",
               "--set", "train.checkpoint_every=12", "--set", "train.sample_every=24",
               "--set", "eval.toy_plain=2", "--set", "eval.toy_trigger=2", "--set", "eval.seeds=[0]",
               "--set", "ground.count=4", "--set", "dataset.class_phrase=a man"]
    proc = start_cli(command, tmp_path)
    wait_for(lambda: (run / "train" / "checkpoints" / "step-000012.safetensors").is_file(), 300, proc)
    rc, out, err = interrupt(proc)
    assert rc == 130, err[-2000:]
    assert "Traceback" not in err and "lookalike fit" in words(err)
    assert (run / "train" / "resume" / "last.ckpt").is_file() and not (run / "train" / "lora.safetensors").exists()

    done = run_cli(command, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    said = words(done.stderr)
    assert "ingest: up to date" in said and "caption: every photo has a caption (16 written by you" in said
    assert "train: resume" in said and "eval: drawing" in said
    assert "ground: 4 grounding images (0 drawn, 4 kept)" in said
    index = json.loads((run / "cache" / "index.json").read_text())
    assert sum(it["grounding"] for it in index["items"]) == 4 and len(index["items"]) == 20
    report = Path(done.stdout.strip().splitlines()[-1])
    assert report == run / "report.html" and report.is_file()
    assert "LoRA:" in said or "no checkpoint recommended" in said
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert [r["step"] for r in metrics["checkpoints"]] == [12, 24]
    manifest = json.loads((run / "train" / "manifest.json").read_text())
    assert manifest["steps"] == 24 and manifest["resumed"] is True

    again = run_cli(command, cwd=tmp_path, timeout=300)  # everything current: nothing is redone
    assert again.returncode == 0, again.stderr[-2000:]
    said = words(again.stderr)
    assert "train: done (24 steps)" in said and "eval: up to date (2 checkpoints)" in said

    drawn = run_cli(["generate", "--run", run, "Arthur on a beach", "--seed", "0"], cwd=tmp_path, timeout=300)
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    rec = metrics["recommendation"]
    chosen = run / "train" / "checkpoints" / f"{rec['name']}.safetensors" if rec["name"] else run / "train" / "lora.safetensors"
    assert f"LoRA: {chosen}" in words(drawn.stderr)  # the run's own LoRA, without --lora

    # our own kohya/ComfyUI export draws what the diffusers file draws (the toy FLUX's widths, not FLUX.1-dev's)
    made = run_cli(["generate", "--run", run, "--lora", run / "train" / "lora-kohya.safetensors", "Arthur on a beach",
                    "--seed", "0", "--out", tmp_path / "kohya"], cwd=tmp_path, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    (kohya,) = (tmp_path / "kohya").glob("0*.png")
    from lookalike.config import load_config
    from lookalike.generate import generate_to_folder
    from lookalike.models.lora import LoraSpec

    cfg = load_config(run / "config.yaml", overrides=["generate.seeds=[0]"])
    cfg.generate.loras = [LoraSpec(path=str(run / "train" / "lora.safetensors"))]
    (diffusers,) = generate_to_folder(cfg, ["Arthur on a beach"], tmp_path / "diffusers")
    gap = np.abs(np.asarray(Image.open(kohya), dtype=np.float64) - np.asarray(Image.open(diffusers), dtype=np.float64))
    assert gap.max() <= 1.0


def face_photos(folder: Path) -> None:
    """Photos of one person (the astronaut) as a phone export and a friend leave them, each with a caption."""
    folder.mkdir(parents=True)
    a = astronaut()
    looks = {
        "a.jpg": a,
        "a.png": ImageOps.mirror(a).rotate(8),  # another photo that shares the stem a
        "beach.jpg": ImageEnhance.Brightness(a.crop((40, 0, 472, 512))).enhance(1.3),
        "city.jpg": ImageOps.mirror(a.crop((0, 30, 480, 512))),
        "park.jpg": ImageEnhance.Contrast(a.rotate(-6)).enhance(0.8),
    }
    for name, image in looks.items():
        image.convert("RGB").save(folder / name)
    (folder / "beach copy.jpg").write_bytes((folder / "beach.jpg").read_bytes())  # the same bytes
    grace_hopper().save(folder / "grace.jpg")  # somebody else
    png_bomb(folder / "bomb.png", 100_000, 100_000)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("buy milk")
    for name in ("beach.jpg", "city.jpg", "park.jpg", "beach copy.jpg", "grace.jpg", "bomb.png", "empty.png", "notes.jpg"):
        (folder / Path(name).with_suffix(".txt").name).write_text(f"Arthur in a photo called {name}\n")
    (folder / "a.jpg.txt").write_text("Arthur smiling in a space suit\n")
    (folder / "a.png.txt").write_text("Arthur in a space suit, the picture tilted\n")


@pytest.mark.slow
def test_fit_trains_on_exactly_the_usable_photos_of_the_person(tmp_path):
    photos = tmp_path / "photos"
    face_photos(photos)
    run = tmp_path / "run"
    result = run_cli(["fit", photos, "--trigger", "Arthur", "--run", run, "--preset", "tiny", "--steps", "4", "--yes",
                      "--set", "dataset.resolution=128"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    index = json.loads((run / "cache" / "index.json").read_text())
    trained = sorted(Path(it["photo"]).name for it in index["items"])
    assert trained == ["a.jpg", "a.png", "beach.jpg", "city.jpg", "park.jpg"]
    captions = {Path(it["photo"]).name: it["caption"] for it in index["items"]}
    assert captions["a.png"] == "Arthur in a space suit, the picture tilted"  # its own caption file
    said = words(result.stderr)
    for name, why in (("beach copy.jpg", "duplicate"), ("grace.jpg", "person not found"), ("bomb.png", "cannot be read"),
                      ("empty.png", "cannot be read"), ("notes.jpg", "cannot be read")):
        assert f"{name} ({why}" in said, (name, said[:3000])
    assert "using 5 of 10 photo files" in said
    assert (run / "report.html").is_file()


def distinct_photos(folder: Path, n: int) -> dict:
    """n sharp photos with no caption; returns {photo id: array} for the server to tell them apart."""
    make_photos(folder, n=n)
    for txt in folder.glob("*.txt"):
        txt.unlink()
    return {p.stem: np.asarray(Image.open(p).convert("RGB").resize((16, 16)), dtype=float) for p in folder.glob("*.png")}


@pytest.mark.slow
def test_fit_interrupted_while_captioning_pays_for_no_photo_twice(tmp_path):
    photos = tmp_path / "photos"
    known = distinct_photos(photos, 8)
    astronaut().save(tmp_path / "me.jpg")

    def identify(image):
        small = np.asarray(image.resize((16, 16)), dtype=float)
        return min(known, key=lambda k: np.abs(known[k] - small).mean())

    run = tmp_path / "run"
    command = ["fit", photos, "--trigger", "Arthur", "--run", run, "--preset", "tiny", "--steps", "4", "--yes",
               "--reference", tmp_path / "me.jpg", "--provider", "custom", "--model", "test-vlm",
               "--api-key-env", "FIT_TEST_KEY", "--set", "caption.concurrency=2"]
    with VLMServer(Script(identify=identify, api_key=KEY, latency=0.8)) as server:
        command[command.index("--provider"):command.index("--provider")] = ["--base-url", server.url]
        proc = start_cli(command, tmp_path, FIT_TEST_KEY=KEY)
        wait_for(lambda: len(server.seen) >= 3, 120, proc)
        signalled = time.time()
        rc, out, err = interrupt(proc)
        assert rc == 130, err[-2000:]
        assert "Traceback" not in err and "lookalike fit" in words(err)
        late = [s for s in server.seen if s.at > signalled + 0.5]
        assert not late, "requests sent after Ctrl-C"
        first = {s.photo for s in server.seen if s.status == 200}
        for photo in first:  # every answer received is kept
            assert (photos / f"{photo}.txt").is_file()
        assert len(first) < 8

        done = run_cli(command, cwd=tmp_path, timeout=600, FIT_TEST_KEY=KEY)
        assert done.returncode == 0, done.stderr[-3000:]
        asked = [s.photo for s in server.seen if s.status == 200]
        assert sorted(asked) == sorted(known)  # every photo asked exactly once across both runs
    said = words(done.stderr)
    # drawn shapes, no faces: said before anything was paid for, and the LoRA is made all the same
    assert said.index("eval: cannot measure likeness (the dataset doctor found no face") < said.index("captioned by test-vlm")
    assert done.stdout.strip().splitlines()[-1] == str(run / "train" / "lora.safetensors")
    assert not (run / "report.html").exists()
    assert KEY not in "".join(p.read_text(errors="ignore") for p in run.rglob("*") if p.is_file() and p.suffix in
                             (".json", ".jsonl", ".yaml", ".html", ".md", ".txt"))


def test_fit_redraws_only_checkpoints_without_a_current_evaluation(tmp_path):
    """Evaluated rows count only for the same suite and for checkpoint files not saved again since."""
    from lookalike.config import load_config
    from lookalike.evaluate.run import Checkpoint
    from lookalike.evaluate.suite import suite_of
    from lookalike.pipeline import unevaluated
    from lookalike.rundir import RunDir, write_json_atomic

    rd = RunDir(tmp_path / "run")
    cfg = load_config(None, preset="toy")
    checkpoints = []
    for step in (12, 24):
        rd.checkpoint(step).parent.mkdir(parents=True, exist_ok=True)
        rd.checkpoint(step).write_bytes(b"")
        checkpoints.append(Checkpoint(step, rd.checkpoint(step)))
    assert unevaluated(cfg, rd, checkpoints) == [12, 24]  # no eval yet
    write_json_atomic(rd.eval_metrics, {"suite": {"fingerprint": suite_of(cfg).fingerprint()},
                                        "checkpoints": [{"step": 12}]})
    assert unevaluated(cfg, rd, checkpoints) == [24]
    other_seeds = load_config(None, preset="toy", overrides=["eval.seeds=[7]"])
    assert unevaluated(other_seeds, rd, checkpoints) == [12, 24]  # another suite: its rows do not compare
    later = rd.eval_metrics.stat().st_mtime + 60
    os.utime(rd.checkpoint(12), (later, later))  # step 12 saved again after the evaluation
    assert unevaluated(cfg, rd, checkpoints) == [12, 24]


def test_ctrl_c_in_a_stage_without_its_own_handling_says_how_to_continue(tmp_path, monkeypatch):
    from lookalike import pipeline
    from lookalike.config import load_config
    from lookalike.errors import Interrupted
    from lookalike.rundir import RunDir

    def pressed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_ingest", pressed)
    opts = pipeline.FitOptions(command="lookalike fit photos --trigger Arthur")
    with pytest.raises(Interrupted, match=r"to continue, run the same command again: `lookalike fit photos --trigger Arthur`"):
        pipeline.fit(load_config(None, preset="toy"), RunDir(tmp_path / "run"), opts, print)


def test_fit_counts_grounding_images_in_what_it_asks_to_spend(tmp_path):
    """Drawing grounding images costs GPU time: said with an estimate and asked before, like training."""
    from lookalike import pipeline
    from lookalike.config import load_config
    from lookalike.errors import ConfigError

    cfg = load_config(None, preset="toy", overrides=["ground.count=40", "dataset.class_phrase=a man"])
    said = []
    with pytest.raises(ConfigError, match=r"fit would now spend 40 grounding image\(s\) and 800 training steps; add --yes"):
        pipeline._confirm(cfg, pipeline.FitOptions(command="lookalike fit"), [], 40, 800, False, said.append)
    assert said[0].startswith("ground: 40 images of 20 steps, ~15 s (estimate: the toy model's measured speed")
    assert said[1].startswith("train: 800 training steps")
    no_phrase = load_config(None, preset="toy", overrides=["ground.count=40"])
    with pytest.raises(ConfigError, match="dataset.class_phrase"):  # refused before anything is paid for
        pipeline._ground_plan(no_phrase, None, [(no_phrase, None, {"requests": 3})])


def test_fit_plans_captions_for_every_persons_folder(tmp_path):
    """With dataset.people, fit's caption plan covers each other person's folder too (their reference first),
    counts their uncaptioned photos in the training steps, and without their reference refuses naming it,
    before anything is paid for."""
    from lookalike import pipeline
    from lookalike.config import load_config
    from lookalike.errors import ConfigError
    from lookalike.rundir import RunDir

    make_photos(tmp_path / "arthur", n=4)
    distinct_photos(tmp_path / "grace", 3)
    astronaut().save(tmp_path / "me.jpg")
    grace_hopper().save(tmp_path / "grace.jpg")
    people = f"dataset.people=[{{trigger: Grace, photos: '{tmp_path / 'grace'}', reference: '{tmp_path / 'grace.jpg'}'}}]"
    cfg = load_config(None, preset="tiny", overrides=[f"dataset.photos={tmp_path / 'arthur'}", people,
                                                      f"caption.reference={tmp_path / 'me.jpg'}", "dataset.resolution=64",
                                                      "train.epochs=1", "train.batch_size=1"])
    rd, said = RunDir(tmp_path / "run"), []
    opts = pipeline.FitOptions(command="lookalike fit")
    todo = pipeline._caption_plan(cfg, rd, opts, said.append)
    assert said[0].startswith("caption: every photo has a caption (4 written by you")
    assert said[1].startswith("caption: 3 photo(s) of Grace to caption with ")
    [(view, sub, est)] = todo
    assert (view.dataset.trigger, view.dataset.people[0].trigger, est["requests"]) == ("Grace", "Arthur", 3)
    assert sub.root == rd.root / "people" / "Grace"
    pipeline._ingest(cfg, rd, lambda _: None)
    assert pipeline._train_plan(cfg, rd) == (7, False)  # 4 of Arthur, 3 of Grace, batch 1
    with pytest.raises(ConfigError, match=r"dataset.people\[0\].reference is not set.*has 3 photo\(s\) without a caption"):
        pipeline._caption_plan(load_config(None, preset="tiny", overrides=[
            f"dataset.photos={tmp_path / 'arthur'}", people.replace(f", reference: '{tmp_path / 'grace.jpg'}'", "")]),
            rd, opts, said.append)
    assert not list((tmp_path / "grace").glob("*.txt"))


def test_the_doctor_checks_every_persons_folder_and_each_trains_its_own_selection(tmp_path):
    """With dataset.people, fit's doctor checks each other person's folder too (record in RUN/people/<trigger>/),
    and cache, ground and the step count use each person's own selection and photos.yaml."""
    import shutil

    from lookalike import pipeline
    from lookalike.config import load_config
    from lookalike.data.selection import everyones_photos, write_lists
    from lookalike.rundir import RunDir

    make_photos(tmp_path / "arthur", n=4)
    grace = make_photos(tmp_path / "grace", n=3, trigger="Grace")
    shutil.copy(grace / "IMG_0001.png", grace / "IMG_0001 copy.png")  # the same file twice: a phone's copy
    shutil.copy(grace / "IMG_0001.txt", grace / "IMG_0001 copy.txt")
    cfg = load_config(None, preset="tiny", overrides=[
        f"dataset.photos={tmp_path / 'arthur'}", f"dataset.people=[{{trigger: Grace, photos: '{grace}'}}]",
        "dataset.resolution=64", "train.epochs=1", "train.batch_size=1"])
    rd, said = RunDir(tmp_path / "run"), []
    pipeline._ingest(cfg, rd, said.append)

    record = json.loads((rd.root / "people" / "Grace" / "ingest" / "doctor.json").read_text())
    assert sorted(p["file"] for p in record["photos"]) == ["IMG_0000.png", "IMG_0001 copy.png", "IMG_0001.png",
                                                         "IMG_0002.png"]
    assert len(json.loads(rd.doctor_record.read_text())["photos"]) == 4  # Arthur's record holds only his
    assert next(line for line in said if line.startswith("ingest of Grace:")).startswith("ingest of Grace: 4 files")
    line = next(line for line in said if line.startswith("photos of Grace:"))
    assert "using 3 of 4 photo files" in line and "IMG_0001 copy.png (duplicate" in line
    assert str(rd.root / "people" / "Grace" / "photos.yaml") in line

    def graces():
        return sorted(p.path.name for k, p in everyones_photos(cfg, rd) if k == 1)

    assert graces() == ["IMG_0000.png", "IMG_0001.png", "IMG_0002.png"]
    assert pipeline._train_plan(cfg, rd) == (7, False)  # 4 of Arthur, 3 of Grace, batch 1
    write_lists(rd.person("Grace"), [], ["IMG_0000.png"])  # her own photos.yaml
    assert graces() == ["IMG_0001.png", "IMG_0002.png"]
    assert pipeline._train_plan(cfg, rd) == (6, False)
    said.clear()
    pipeline._ingest(cfg, rd, said.append)  # nothing changed: nothing is checked again
    assert "ingest: up to date (the photos of Grace have not changed since the doctor checked them)" in said


def test_ingest_person_checks_that_persons_folder(tmp_path):
    make_photos(tmp_path / "arthur", n=3)
    make_photos(tmp_path / "grace", n=3, trigger="Grace")
    run = tmp_path / "run"
    people = f"dataset.people=[{{trigger: Grace, photos: '{tmp_path / 'grace'}'}}]"
    done = run_cli(["ingest", tmp_path / "arthur", "--run", run, "--preset", "tiny", "--set", people,
                    "--person", "grace"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads((run / "people" / "Grace" / "ingest" / "doctor.json").read_text())
    assert record["folder"] == str(tmp_path / "grace") and len(record["photos"]) == 3
    assert not (run / "ingest").exists()  # Arthur's folder was not checked
    wrong = run_cli(["ingest", tmp_path / "arthur", "--run", run, "--person", "Bob"], cwd=tmp_path)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "--person Bob: no one in this run is called that; the run's people: Arthur, Grace" in wrong.stderr
