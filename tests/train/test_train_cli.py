"""`lookalike train` end to end on the twin, in subprocesses: outputs, export, resume after kill -9, DDP."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers import make_photos, run_cli
from lookalike.export import read_header

QUICK = ["--preset", "tiny", "--set", "train.epochs=4", "--set", "train.sample_every=2",
         "--set", "train.checkpoint_every=5", "--set", "dataset.holdout=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run: 6 photos (portrait, landscape, square), batch 2 -> 3 steps per epoch, 4 epochs."""
    tmp = tmp_path_factory.mktemp("train")
    photos = make_photos(tmp / "photos", 6)
    out = run_cli(["train", tmp / "run", "--photos", photos, *QUICK], cwd=tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "run", out


def test_first_lines_state_device_precision_trainable_and_cadences(trained):
    _, out = trained
    head = out.stderr[: out.stderr.index("training:")]  # everything before the progress bar
    for expected in ("5 training photos (1 held out)", "training on cpu", "Lightning precision 32-true", "3,584 trainable parameters",
                     "3 steps per epoch", "4 epochs = 12 steps", "checkpoint every 5 steps", "previews every 2 epochs"):
        assert expected in " ".join(head.split()), expected
    assert "Traceback" not in out.stderr


def test_checkpoints_are_lora_only_and_resumable(trained):
    run, _ = trained
    train = run / "train"
    assert sorted(p.name for p in (train / "checkpoints").iterdir()) == [
        "step-000005.safetensors", "step-000010.safetensors", "step-000012.safetensors"]
    state = torch.load(train / "resume" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 12 and "optimizer_states" in state and state["lr_schedulers"]
    assert state["state_dict"] and all("lora_" in k for k in state["state_dict"])  # no frozen base weights
    assert (train / "resume" / "last.ckpt").stat().st_size < 1_000_000
    manifest = json.loads((train / "manifest.json").read_text())
    assert manifest["steps"] == 12 and manifest["epochs"] == 4 and manifest["trainable"] == 3584


def test_progress_gif_has_one_labelled_frame_per_sampling_epoch(trained):
    run, _ = trained
    train = run / "train"
    assert sorted(p.name for p in (train / "samples").iterdir()) == ["epoch-0000", "epoch-0002", "epoch-0004"]
    gif = train / "progress-arthur-wearing-a-tuxedo-s0.gif"
    frames = []
    with Image.open(gif) as im:
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB"), dtype=np.int16))
    assert len(frames) == 3
    h = 64  # the sample; below it the label strip
    first = np.asarray(Image.open(train / "samples/epoch-0000/000-arthur-wearing-a-tuxedo-s0.png").convert("RGB"))
    assert np.abs(frames[0][:h] - first).mean() < 8  # the frame is that epoch's sample (GIF palette aside)
    strips = [f[h:] for f in frames]
    assert all((s < 128).any() for s in strips)  # text is written on every strip
    assert not np.array_equal(strips[0], strips[1]) and not np.array_equal(strips[1], strips[2])  # labels differ


def test_losses_go_to_csv_and_tensorboard(trained):
    run, _ = trained
    logs = run / "train" / "logs"
    rows = list(csv.DictReader(open(logs / "csv" / "attempt-1" / "metrics.csv")))
    assert {"train/loss", "train/sigma", "train/lr", "val/train_fixed_loss", "val/loss"} <= set(rows[0])
    losses = [float(r["train/loss"]) for r in rows if r["train/loss"]]
    assert len(losses) == 12 and all(np.isfinite(losses))
    lrs = [float(r["train/lr"]) for r in rows if r["train/lr"]]
    assert lrs[0] < lrs[-1] == pytest.approx(1e-3)  # warm-up, then the set rate
    assert len([r for r in rows if r["val/train_fixed_loss"]]) >= 4  # once per epoch
    held_out = [float(r["val/loss"]) for r in rows if r["val/loss"]]
    assert len(held_out) >= 4 and all(np.isfinite(held_out))
    assert list((logs / "tensorboard" / "attempt-1").glob("events.out.tfevents.*"))


def test_exported_lora_reproduces_the_trained_model_in_a_fresh_process(trained, tmp_path):
    run, _ = trained
    lora = run / "train" / "lora.safetensors"
    assert read_header(lora) == {"trigger": "Arthur", "rank": "4", "alpha": "2.0", "base_model": "lookalike:tiny-twin",
                                 "steps": "12", "targets": json.dumps(["to_q", "to_k", "to_v", "to_out.0"])}
    out = run_cli(["generate", "--preset", "tiny", "Arthur wearing a tuxedo", "--seed", "0", "--lora", lora,
                   "--out", tmp_path / "with", ], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    base = run_cli(["generate", "--preset", "tiny", "Arthur wearing a tuxedo", "--seed", "0", "--out", tmp_path / "base"],
                   cwd=tmp_path)
    assert base.returncode == 0, base.stderr[-2000:]

    def img(path):
        return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)

    samples = run / "train" / "samples"
    final = img(samples / "epoch-0004" / "000-arthur-wearing-a-tuxedo-s0.png")
    assert np.abs(img(tmp_path / "with" / "000-arthur-wearing-a-tuxedo-s0.png") - final).max() <= 1
    # and the epoch-0 preview is the base model: training changed the picture
    start = img(samples / "epoch-0000" / "000-arthur-wearing-a-tuxedo-s0.png")
    assert np.abs(img(tmp_path / "base" / "000-arthur-wearing-a-tuxedo-s0.png") - start).max() <= 1
    assert (final != start).any()


def test_kohya_export_round_trips(trained, twin_pipe):
    from lookalike.models.flux_keys import lora_from_kohya, module_out_features

    train = trained[0] / "train"
    diffusers = {k.removeprefix("transformer."): v for k, v in load_file(train / "lora.safetensors").items()}
    back, alphas = lora_from_kohya(load_file(train / "lora-kohya.safetensors"), module_out_features(twin_pipe.transformer))
    back = {k.removeprefix("transformer."): v for k, v in back.items()}
    assert back.keys() == diffusers.keys()
    # the diffusers file has alpha / rank (2 / 4) folded into lora_B, so that every reader applies it at 1.0
    for k in back:
        fold = 0.5 if ".lora_B." in k else 1.0
        torch.testing.assert_close(back[k] * fold, diffusers[k], rtol=0, atol=1e-6)
    assert set(alphas.values()) == {2.0}
    assert read_header(train / "lora-kohya.safetensors")["steps"] == "12"


def _wait_for(path, proc, timeout=300):
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "the run ended before the checkpoint appeared"
        assert time.time() < end
        time.sleep(0.01)


# FLUX.1 and FLUX.2 (klein). FLUX.2 [dev] shares klein's transformer, loss and resume path (only the guidance
# input differs, checked in-process by tests/models/test_family_contract.py): a third 50 s run would add nothing.
@pytest.mark.parametrize("preset", ["tiny", "tiny-flux2-klein"])
def test_run_killed_mid_way_resumes_to_the_same_lora(tmp_path, preset):
    """... and to the same average of the weights (train.ema_decay): the average is in the resumable state."""
    photos = make_photos(tmp_path / "photos", 6)
    # 3 steps per epoch, 10 epochs = 30 steps; checkpoints every 4 steps are mid-epoch
    args = ["--photos", photos, "--preset", preset, "--set", "train.epochs=10", "--set", "train.checkpoint_every=4",
            "--set", "train.sample_every=1000", "--set", "train.caption_dropout=0.3", "--set", "train.ema_decay=0.8"]
    whole = run_cli(["train", tmp_path / "whole", *args], cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = tmp_path / "killed"
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lookalike", "train", killed, *map(str, args)],
                                cwd=tmp_path, stdout=log, stderr=log)
        _wait_for(killed / "train" / "checkpoints" / "step-000004.safetensors", proc)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    assert not (killed / "train" / "lora.safetensors").exists()
    step_at_kill = torch.load(killed / "train" / "resume" / "last.ckpt", weights_only=False)["global_step"]
    assert 4 <= step_at_kill < 30

    again = run_cli(["train", killed], cwd=tmp_path)  # without --resume: refused, nothing deleted
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr
    resumed = run_cli(["train", killed, "--resume"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((killed / "train" / "manifest.json").read_text())["resumed"] is True
    for name in ("lora.safetensors", "lora-raw.safetensors"):  # the average, and the last raw weights
        a, b = load_file(tmp_path / "whole" / "train" / name), load_file(killed / "train" / name)
        assert a.keys() == b.keys()
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6, name
        assert max(a[k].abs().max().item() for k in a if "lora_B" in k) > 0  # it did train
    average, raw = load_file(killed / "train" / "lora.safetensors"), load_file(killed / "train" / "lora-raw.safetensors")
    assert max((average[k] - raw[k]).abs().max().item() for k in raw) > 1e-4  # two different sets of weights
    assert (killed / "train" / "logs" / "csv" / "attempt-2" / "metrics.csv").exists()


def test_resume_refuses_settings_that_change_what_is_learned(trained, tmp_path):
    run, _ = trained
    out = run_cli(["train", run, "--resume", "--set", "lora.rank=8"], cwd=tmp_path)
    assert out.returncode == 2 and "lora.rank: 4 -> 8" in " ".join(out.stderr.split()) and "Traceback" not in out.stderr
    out = run_cli(["train", tmp_path / "empty", "--resume"], cwd=tmp_path)
    assert out.returncode == 2 and "no config.yaml" in out.stderr


def test_nan_loss_stops_keeps_the_last_good_checkpoint_and_a_lower_rate_resumes(tmp_path):
    photos = make_photos(tmp_path / "photos", 4, sizes=((64, 64),))
    run = tmp_path / "run"
    # 4 photos, batch 2: 2 steps per epoch. Two good epochs, a checkpoint after every step.
    out = run_cli(["train", run, "--photos", photos, "--preset", "tiny", "--set", "train.epochs=2",
                   "--set", "train.checkpoint_every=1", "--set", "train.sample_every=1000"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    # Go on with an absurd learning rate: step 5 is finite (on good weights) but leaves them ~1e30,
    # so the loss at step 6 overflows. The step-5 checkpoint holds those weights and must not survive.
    out = run_cli(["train", run, "--resume", "--set", "train.epochs=4", "--set", "train.learning_rate=1e30"],
                  cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    message = " ".join(out.stderr.split())
    assert "resuming with a changed recipe (train.epochs: 2 -> 4; train.learning_rate: 0.001 -> 1e+30)" in message
    assert "the training loss became" in message and "at step 5" in message and "Traceback" not in out.stderr
    state = torch.load(run / "train" / "resume" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 4 and all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not (run / "train" / "checkpoints" / "step-000005.safetensors").exists()
    # The message's way out works: a lower rate continues from step 4 to the end.
    out = run_cli(["train", run, "--resume", "--set", "train.learning_rate=1e-3"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((run / "train" / "manifest.json").read_text())["steps"] == 8


def test_two_process_ddp_ends_with_identical_lora_on_both_ranks(tmp_path):
    photos = make_photos(tmp_path / "photos", 8)
    out = run_cli(["train", tmp_path / "run", "--photos", photos, "--preset", "tiny", "--set", "train.devices=2",
                   "--set", "train.strategy=ddp", "--set", "train.epochs=3", "--set", "train.sample_every=1000"],
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    manifest = json.loads((tmp_path / "run" / "train" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["steps"] > 0
    digests = manifest["rank_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]


def test_out_of_memory_names_the_settings_to_lower():
    from lookalike.config import load_config
    from lookalike.train.run import out_of_memory_error

    cfg = load_config(None, preset="flux1-dev", overrides=["train.gradient_checkpointing=false"])
    err = out_of_memory_error(cfg, torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    text = str(err)
    assert "Tried to allocate 2.00 GiB" in text
    for tip in ("train.batch_size=4 with train.gradient_accumulation=2", "train.gradient_checkpointing=true",
                "dataset.resolution=768", "lora.rank=16"):
        assert tip in text


def test_train_draws_the_missing_grounding_images_first(tmp_path):
    """With ground.count (the FLUX presets set 40), `train` draws what `ground` would, then trains on them too."""
    photos = make_photos(tmp_path / "photos", 4)
    args = ["--photos", photos, "--preset", "tiny", "--set", "train.epochs=1", "--set", "train.sample_every=100",
            "--set", "ground.count=2", "--set", "dataset.class_phrase=a man"]
    out = run_cli(["train", tmp_path / "run", *args], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "drew 2 grounding image(s)" in out.stderr
    assert len(list((tmp_path / "run" / "ground").glob("*.png"))) == 2
    index = json.loads((tmp_path / "run" / "cache" / "index.json").read_text())
    assert sum(bool(it.get("grounding")) for it in index["items"]) == 2 and len(index["items"]) == 6
