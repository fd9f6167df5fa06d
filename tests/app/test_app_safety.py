"""`lookalike app`'s guards, without a browser: the address, upload names and sizes, one writer per run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from helpers import run_cli


def test_any_address_but_loopback_needs_a_password(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LOOKALIKE_APP_PASSWORD"}
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "lookalike", "app", "--host", "0.0.0.0", "--runs", "r"],
                            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) <= 2 and "Traceback" not in result.stderr  # one message (rich may wrap it)
    assert "--host 0.0.0.0" in result.stderr and "LOOKALIKE_APP_PASSWORD" in result.stderr
    assert not (tmp_path / "r").exists(), "refused before anything was created"
    assert time.time() - started < 30


def test_the_address_check():
    from lookalike.app.ui import check_host
    from lookalike.errors import ConfigError

    check_host("127.0.0.1", None)
    check_host("localhost", None)
    check_host("0.0.0.0", "a password")
    with pytest.raises(ConfigError, match="password"):
        check_host("0.0.0.0", None)
    with pytest.raises(ConfigError, match="password"):
        check_host("192.168.1.20", "")


@pytest.mark.parametrize("name, expected", [
    ("../../evil.png", "evil.png"), ("..\\..\\win.png", "win.png"), ("/etc/passwd", "passwd"),
    (".hidden.png", "hidden.png"), ("..", "upload"), ("a b/c;d|e.JPG", "c_d_e.JPG"), ("IMG_0001.HEIC", "IMG_0001.HEIC"),
])
def test_upload_names_are_plain_file_names(name, expected):
    from lookalike.app.files import safe_name

    assert safe_name(name) == expected


def test_uploads_and_zip_members_land_inside_the_photo_folder(tmp_path):
    from lookalike.app.files import save_uploads

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(b"\x89PNG fake")
    with zipfile.ZipFile(src / "photos.zip", "w") as z:
        z.writestr("../../../outside.png", b"one")
        z.writestr("/abs/path/abs.jpg", b"two")
        z.writestr("nested/dir/b.txt", "Arthur on a beach\n")
        z.writestr("__MACOSX/._b.png", b"junk")
        z.writestr("notes.exe", b"no")
    dest = tmp_path / "run" / "photos"
    saved = save_uploads([("../../a.png", src / "a.png"), ("../photos.zip", src / "photos.zip")], dest, 2**20)
    assert sorted(saved.written) == ["a.png", "abs.jpg", "b.txt", "outside.png"]
    assert sorted(p.name for p in dest.iterdir()) == ["a.png", "abs.jpg", "b.txt", "outside.png"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "run/photos/a.png", "run/photos/abs.jpg", "run/photos/b.txt", "run/photos/outside.png",
        "src/a.png", "src/photos.zip"]
    again = save_uploads([("a.png", src / "a.png")], dest, 2**20)
    assert again.written == [] and again.skipped == ["a.png: already there"]


def test_uploads_over_the_limit_are_refused_before_writing(tmp_path):
    from lookalike.app.files import save_uploads
    from lookalike.errors import ConfigError

    big = tmp_path / "big.png"
    big.write_bytes(b"x" * 3000)
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("huge.png", b"\0" * 50_000)  # small zipped, large unpacked
    dest = tmp_path / "photos"
    with pytest.raises(ConfigError, match="big.png is 0.0 MB, over the upload limit"):
        save_uploads([("big.png", big)], dest, 2000)
    assert (tmp_path / "bomb.zip").stat().st_size < 2000
    with pytest.raises(ConfigError, match="bomb.zip unpacks to .* over the upload limit"):
        save_uploads([("bomb.zip", tmp_path / "bomb.zip")], dest, 2000)
    assert list(dest.iterdir()) == []


def test_one_writer_per_run_folder(tmp_path):
    """A job holds the run; a second job, and a CLI verb on the same run, are refused with the reason."""
    from lookalike.app import jobs
    from lookalike.errors import ConfigError
    from lookalike.rundir import RunBusy, RunDir, hold, lock_holder

    rd = RunDir(tmp_path / "run")
    rd.root.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom lookalike.rundir import hold\n"
                               f"with hold({str(rd.root)!r}, 'lookalike train run'):\n"
                               "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(rd.root)["command"] == "lookalike train run"
        with pytest.raises(RunBusy, match=r"is being written by `lookalike train run` \(pid \d+"):
            with hold(rd.root, "lookalike eval run"):
                pass
        with pytest.raises(ConfigError, match="is being written by `lookalike train run`"):
            jobs.start(rd, ["eval", str(rd.root)])
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(rd.root) is None, "the lock went with the process (killed, it could not clean up)"
    with hold(rd.root, "lookalike eval run"):
        assert lock_holder(rd.root)["command"] == "lookalike eval run"
    assert not (rd.root / ".lock").exists()


def test_a_cli_verb_is_refused_while_a_job_writes_the_run(tmp_path):
    """Two jobs never write one run: `lookalike ingest` from a terminal while the app's job holds it."""
    from helpers import make_photos
    from lookalike.rundir import hold

    photos = make_photos(tmp_path / "photos", n=2)
    run = tmp_path / "run"
    first = run_cli(["ingest", photos, "--run", run, "--trigger", "Arthur", "--preset", "tiny"], tmp_path)
    assert first.returncode == 0, first.stderr
    before = sorted(p.name for p in run.rglob("*"))
    with hold(run, "lookalike app: caption edit"):
        second = run_cli(["ingest", photos, "--run", run, "--trigger", "Arthur", "--preset", "tiny"], tmp_path)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert "is being written by `lookalike app: caption edit`" in " ".join(second.stderr.split())
    assert sorted(p.name for p in run.rglob("*")) == before  # the refusal wrote nothing (RUN/.lock is gone too)


def test_a_job_runs_the_cli_verb_in_its_own_process_and_records_how_it_ended(tmp_path):
    from lookalike.app import jobs
    from lookalike.rundir import RunDir

    rd = RunDir(tmp_path / "run")
    rd.root.mkdir()
    job = jobs.start(rd, ["config", "--preset", "tiny"], ["report", str(rd.root)], ["config"])
    assert job.pid != os.getpid()
    with pytest.raises(Exception, match="already has a job running"):
        jobs.start(rd, ["config"])
    job = jobs.wait(job, 120)
    assert job.rc == 2 and job.state() == "refused"  # `report` on a folder that is not a run: exit 2, and the
    log = job.log.read_text()                         # third command never ran
    assert "$ lookalike config --preset tiny" in log and "is not a run folder" in log
    assert "$ lookalike config\n" not in log
    assert Path(job.path).parent == rd.root / "app" / "jobs"


def test_help_loads_neither_gradio_nor_torch(tmp_path):
    """`lookalike --help` stays instant: the app's imports (and torch's) load only for the verbs that need them."""
    code = ("import sys\nfrom lookalike.cli import app\nimport typer.testing\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('gradio', 'torch', 'diffusers', 'fastapi') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "app" in result.stdout and "web page" in result.stdout


def test_the_estimate_counts_the_grounding_images_train_will_draw(tmp_path):
    """The FLUX presets draw 40 grounding images before training: the app's estimate line says so."""
    from helpers import make_photos
    from lookalike.app.views import estimate_line
    from lookalike.config import load_config
    from lookalike.rundir import RunDir

    photos = make_photos(tmp_path / "photos", 4)
    sets = [f"dataset.photos={photos}", "dataset.class_phrase=a man", "train.epochs=1"]
    cfg = load_config(None, preset="toy", overrides=[*sets, "ground.count=3"])
    line = estimate_line(RunDir(tmp_path / "run"), cfg)
    assert "ground: 3 images of 20 steps" in line and "training steps" in line, line
    plain = estimate_line(RunDir(tmp_path / "run"), load_config(None, preset="toy", overrides=sets))
    assert "ground:" not in plain
