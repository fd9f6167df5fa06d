"""A run folder's life: a refused command writes nothing, settings change freely until training starts."""

import json
from pathlib import Path

import pytest

from helpers import make_photos, run_cli
from lookalike.config import load_config
from lookalike.config.run import prepare_run
from lookalike.errors import ConfigError


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes (empty when the folder does not exist)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} \
        if folder.exists() else {}


def test_a_refused_train_writes_nothing_and_the_same_command_then_works(tmp_path):
    photos = make_photos(tmp_path / "photos", n=4)
    (photos / "IMG_0003.txt").unlink()
    run = tmp_path / "runs" / "arthur"
    command = ["train", run, "--photos", photos, "--preset", "tiny", "--set", "train.max_steps=2"]

    refused = run_cli(command, cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "IMG_0003.png (IMG_0003.txt)" in refused.stderr
    assert not run.exists()  # not even the folder

    (photos / "IMG_0003.txt").write_text("Arthur on a bench\n")
    done = run_cli(command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (run / "train" / "lora.safetensors").is_file()

    again = run_cli(command, cwd=tmp_path)  # after training: refused, and the run is left as it was
    before = snapshot(run)
    assert again.returncode == 2 and "--resume" in again.stderr
    assert snapshot(run) == before


def test_settings_change_until_training_starts(tmp_path):
    photos = make_photos(tmp_path / "photos", n=4)
    run = tmp_path / "run"
    cfg, rd = prepare_run(run, photos, "Arthur", None, None, ["doctor.min_sharpness=30"], training=False)
    rd.stage("ingest")  # a stage writes: the config with it
    assert load_config(rd.config_path).preset == "flux1-dev"

    # a later command may switch preset; what the user set stays unless set again
    cfg, rd = prepare_run(run, None, None, "tiny", None, ["lora.rank=8"])
    assert cfg.preset == "tiny" and cfg.dataset.resolution == 64 and cfg.lora.rank == 8
    assert cfg.doctor.min_sharpness == 30 and cfg.dataset.photos == str(photos.resolve())
    assert load_config(rd.config_path).preset == "flux1-dev"  # nothing written until a stage writes
    rd.stage("cache")
    assert load_config(rd.config_path).lora.rank == 8

    (run / "train" / "resume").mkdir(parents=True)  # training has started
    with pytest.raises(ConfigError, match="lora.rank: 8 -> 16"):
        prepare_run(run, None, None, None, None, ["lora.rank=16"], training=False)
    with pytest.raises(ConfigError, match="continue it with --resume"):
        prepare_run(run, None, None, None, None, [], training=True)
    cfg, _ = prepare_run(run, None, None, None, None, ["caption.model=other", "eval.seeds=[1]"], training=False)
    assert cfg.caption.model == "other"  # what other stages read may still change
    cfg, _ = prepare_run(run, None, None, None, None, ["train.learning_rate=1e-5"], resume=True)
    assert cfg.train.learning_rate == 1e-5


def test_ingest_then_train_with_a_preset_is_accepted(tmp_path):
    photos = make_photos(tmp_path / "photos", n=4)
    run = tmp_path / "run"
    assert run_cli(["ingest", photos, "--run", run], cwd=tmp_path).returncode == 0
    result = run_cli(["train", run, "--preset", "tiny", "--set", "train.max_steps=2"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert load_config(run / "config.yaml").preset == "tiny"
    # the doctor found no faces in these drawings: nothing left out on face grounds, and the stage says so
    assert "using 4 of 4 photo files" in " ".join(result.stderr.split())


def test_config_keys_show_the_presets_values(tmp_path):
    result = run_cli(["config", "--preset", "tiny", "--keys"], cwd=tmp_path, COLUMNS="300")
    assert result.returncode == 0
    rank = next(line for line in result.stdout.splitlines() if "│ lora.rank " in line)
    assert "│ 4 " in rank  # tiny's rank, not flux1-dev's 32
    resolution = next(line for line in result.stdout.splitlines() if "│ dataset.resolution " in line)
    assert "│ 64 " in resolution


def test_a_caption_file_that_is_not_utf8_is_read_with_a_message(tmp_path, caplog):
    from lookalike.data.photos import find_photos

    photos = make_photos(tmp_path / "photos", n=2)
    (photos / "IMG_0001.txt").write_bytes("Arthur at the caf\xe9\n".encode("cp1252"))
    with caplog.at_level("WARNING"):
        found = find_photos(photos, "Arthur")
    assert found[1].caption == "Arthur at the café"
    assert any("IMG_0001.txt is not UTF-8" in r.message for r in caplog.records)
    assert len([r for r in caplog.records if "UTF-8" in r.message]) == 1


def test_photos_that_share_a_stem_have_their_own_caption_files(tmp_path):
    from lookalike.data.photos import caption_file, find_photos

    photos = make_photos(tmp_path / "photos", n=2)
    (photos / "IMG_0001.png").rename(photos / "IMG_0000.jpg")
    (photos / "IMG_0001.txt").unlink()
    assert caption_file(photos / "IMG_0000.png").name == "IMG_0000.png.txt"
    with pytest.raises(ConfigError, match=r"IMG_0000.jpg \(IMG_0000.jpg.txt\)"):
        find_photos(photos, "Arthur")  # IMG_0000.txt could be either's: it is not used
    (photos / "IMG_0000.jpg.txt").write_text("Arthur in a park\n")
    (photos / "IMG_0000.png.txt").write_text("Arthur on a beach\n")
    assert [p.caption for p in find_photos(photos, "Arthur")] == ["Arthur in a park", "Arthur on a beach"]


def test_unreadable_photos_name_the_file_and_a_fix_that_works(tmp_path):
    photos = make_photos(tmp_path / "photos", n=3)
    (photos / "notes.jpg").write_text("a shopping list")  # no caption: the advice must not be "write a .txt"
    run = tmp_path / "run"
    result = run_cli(["cache", run, "--photos", photos, "--preset", "tiny"], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "notes.jpg" in result.stderr and "not an image" in result.stderr and "exclude" in result.stderr
    (run).mkdir(exist_ok=True)
    (run / "photos.yaml").write_text("include: []\nexclude: [notes.jpg]\n")
    result = run_cli(["cache", run, "--photos", photos, "--preset", "tiny"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    index = json.loads((run / "cache" / "index.json").read_text())
    assert sorted(Path(it["photo"]).name for it in index["items"]) == ["IMG_0000.png", "IMG_0001.png", "IMG_0002.png"]
    assert "notes.jpg (excluded in photos.yaml)" in " ".join(result.stderr.split())
