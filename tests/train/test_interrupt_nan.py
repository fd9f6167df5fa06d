"""Ctrl-C during `lookalike train` (a real SIGINT to a real process) and what a NaN loss's message offers."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import make_photos, run_cli
from lookalike.config import load_config
from lookalike.rundir import RunDir
from lookalike.train.module import TrainingDiverged
from lookalike.train.run import diverged_error



@pytest.mark.slow
def test_ctrl_c_saves_the_step_says_how_to_continue_and_the_resume_finishes(tmp_path):
    photos = make_photos(tmp_path / "photos", 6)
    run = tmp_path / "run"
    # 3 steps per epoch, 20 epochs = 60 steps: long enough that Ctrl-C lands mid-run
    args = ["--photos", photos, "--preset", "tiny", "--set", "train.epochs=20", "--set", "train.checkpoint_every=1000",
            "--set", "train.sample_every=1000"]
    started = time.time()
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lookalike", "train", run, *map(str, args)],
                                cwd=tmp_path, stdout=log, stderr=log)
        while not (run / "train" / "logs").exists():  # the trainer exists: its loggers made the folder
            assert proc.poll() is None and time.time() - started < 300
            time.sleep(0.05)
        time.sleep(1.5)
        os.kill(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=300)
    err = " ".join((tmp_path / "log.txt").read_text().split())
    assert rc == 130, err[-2000:]
    assert "Traceback" not in err
    state = torch.load(run / "train" / "resume" / "last.ckpt", weights_only=False)
    step = state["global_step"]
    assert 0 < step < 60
    assert f"Ctrl-C at step {step} of 60: the state at that step is saved in {run / 'train' / 'resume' / 'last.ckpt'}" in err
    assert f"to continue, run `lookalike train {run} --resume`" in err
    assert not (run / "train" / "lora.safetensors").exists()

    resumed = run_cli(["train", run, "--resume"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run / "train" / "manifest.json").read_text())["steps"] == 60


def _saved(rd: RunDir, step: int) -> None:
    rd.resume_checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step}, rd.resume_checkpoint)


@pytest.fixture
def fp32(tmp_path):
    return load_config(None, preset="tiny"), RunDir(tmp_path / "run")


def test_nan_at_step_zero_blames_no_learning_rate(fp32):
    cfg, rd = fp32
    text = str(diverged_error(cfg, rd, TrainingDiverged(float("nan"), 0), "32-true"))
    assert "became nan at step 0" in text and "the learning rate is not the cause" in text
    assert "model.source" in text and "kept" not in text


def test_nan_with_nothing_saved_promises_no_checkpoint_and_no_bf16_on_fp32(fp32):
    cfg, rd = fp32
    text = str(diverged_error(cfg, rd, TrainingDiverged(float("nan"), 1), "32-true"))
    assert "No state was saved before it, so there is nothing to resume" in text
    assert f"train.learning_rate={cfg.train.learning_rate / 2:g}" in text
    assert "bf16" not in text and "last good checkpoint" not in text


def test_nan_after_an_earlier_save_offers_that_step(fp32):
    cfg, rd = fp32
    _saved(rd, 4)
    text = str(diverged_error(cfg, rd, TrainingDiverged(float("inf"), 6), "32-true"))
    assert f"Step 4 is saved in {rd.resume_checkpoint}" in text
    assert f"lookalike train {rd.root} --resume --set train.learning_rate=" in text
    fit = str(diverged_error(cfg, rd, TrainingDiverged(float("inf"), 6), "32-true", "run `lookalike fit p` again"))
    assert "run `lookalike fit p` again with `--set train.learning_rate=" in fit


def test_nan_right_after_the_save_does_not_offer_to_resume_it(fp32):
    cfg, rd = fp32
    _saved(rd, 6)
    text = str(diverged_error(cfg, rd, TrainingDiverged(float("nan"), 6), "32-true"))
    assert "the weights whose loss diverged" in text and "--resume" not in text and "new run folder" in text


def test_fp16_overflow_suggests_bf16(fp32):
    cfg, rd = fp32
    _saved(rd, 4)
    text = str(diverged_error(cfg, rd, TrainingDiverged(float("inf"), 6), "16-mixed"))
    assert "train.precision=bf16" in text and "fp16 overflows" in text
