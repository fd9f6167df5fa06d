"""The `lookalike` command: cheap import, real runs in a subprocess, and user errors without tracebacks."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import TINY, draw


def _run(args, cwd, **env):
    return subprocess.run(
        [sys.executable, "-m", "lookalike", *args], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, **env}, timeout=300,
    )


def test_import_loads_no_model_and_creates_no_folder(tmp_path):
    home = tmp_path / "home"
    code = (
        "import sys, lookalike, lookalike.cli, lookalike.config, lookalike.generate, lookalike.rundir, "
        "lookalike.runtime, lookalike.models.source, lookalike.models.lora, lookalike.models.twin, "
        "lookalike.models.family, lookalike.models.flux1, lookalike.models.flux2\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    work = tmp_path / "cwd"
    work.mkdir()
    out = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True,
                         env={**os.environ, "LOOKALIKE_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    assert list(work.iterdir()) == [] and not home.exists()


def test_generate_writes_pngs_with_metadata_grid_and_manifest(twin_dir, twin_pipe, tmp_path):
    run = tmp_path / "run"
    out = _run(["generate", "--preset", "tiny", "Arthur as a wizard", "", "--seed", "0", "--seed", "7",
                "--set", f"model.source={twin_dir}", "--run", str(run)], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (folder,) = (run / "generate").iterdir()
    pngs = sorted(folder.glob("0*.png"))
    assert [p.name for p in pngs] == [
        "000-arthur-as-a-wizard-s0.png", "001-arthur-as-a-wizard-s7.png", "002-empty-s0.png", "003-empty-s7.png"]
    meta = Image.open(pngs[1]).text
    assert meta["prompt"] == "Arthur as a wizard" and meta["seed"] == "7"
    assert meta["model"] == str(twin_dir) and json.loads(meta["loras"]) == []
    assert int(meta["steps"]) == TINY.steps
    # Same seed in another process gives the very same image.
    assert np.array_equal(np.asarray(Image.open(pngs[1]), dtype=np.float64), draw(twin_pipe, "Arthur as a wizard", 7))
    grid = Image.open(folder / "grid.png")
    assert grid.width >= 2 * 64 and grid.height >= 2 * 64
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["stage"] == "generate" and len(manifest["images"]) == 4
    assert (folder / "config.yaml").exists()


def test_run_config_is_reused_and_nothing_is_overwritten(twin_dir, tmp_path):
    from lookalike.config import load_config, save_config

    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(preset="tiny", overrides=[f"model.source={twin_dir}", "generate.seeds=[3]"])
    save_config(cfg, run / "config.yaml")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\nArthur at the beach\n\n")
    for _ in range(2):
        out = _run(["generate", "-f", str(prompts), "--run", str(run)], cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "LoRA: none yet in" in " ".join(out.stderr.split())  # a run that has not trained: the base model
    folders = sorted((run / "generate").iterdir())
    assert len(folders) == 2
    for f in folders:
        assert [p.name for p in sorted(f.glob("0*.png"))] == ["000-arthur-at-the-beach-s3.png"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["generate", "--preset", "tiny", "x", "--width", "1000"], "generate.width = 1000: must be a multiple of 16"),
        (["generate", "--preset", "tiny", "-f", "missing.txt"], "prompt file 'missing.txt' not found"),
        (["generate", "--preset", "tiny", "x", "--lora", "a.safetensors:strong"], "'strong' is not a number"),
        (["generate", "--preset", "tiny", "x", "--lora", "nope.safetensors"], "LoRA file 'nope.safetensors' not found"),
        (["generate", "x", "--set", "model.source=./no-model"], "model.source = './no-model' does not exist"),
        (["generate", "--preset", "tiny", "x", "--set", "generate.stpes=3"], "did you mean 'generate.steps'"),
        (["generate", "x"], "not in the local hub cache"),
    ],
)
def test_user_errors_are_one_message_without_traceback(args, expected, tmp_path, monkeypatch, capsys):
    from lookalike import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lookalike", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert expected in " ".join(err.split()), err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.png"))
