"""`lookalike caption` stopped by Ctrl-C, refused before it pays, and settled without a key or a reference.

The server is the real loopback chat-completions server of vlm_server.py; the CLI runs in a subprocess.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from PIL import Image

from helpers import astronaut, make_photos, run_cli
from lookalike.caption.pool import run_pool
from vlm_server import Script, VLMServer, colour_photos, identify_colour

KEY = "sk-test-SECRET-7f3a9c"


def caption_args(run, photos, ref, url, *extra, key_env=True):
    args = ["caption", run, "--photos", photos, "--reference", ref, "--provider", "custom", "--base-url", url,
            "--model", "test-vlm", *extra]
    return args + (["--set", "caption.api_key_env=TEST_VLM_KEY"] if key_env else [])


def stopped_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("stopped:", "error:"))]


def test_ctrl_c_stops_sending_keeps_every_answer_and_the_rerun_asks_each_photo_once(tmp_path):
    colour_photos(tmp_path / "photos", 12)
    astronaut().save(tmp_path / "ref.jpg")
    run, photos = tmp_path / "run", tmp_path / "photos"
    with VLMServer(Script(identify=identify_colour, latency=1.0)) as server:
        args = caption_args(run, photos, tmp_path / "ref.jpg", server.url, "--concurrency", "2")
        proc = subprocess.Popen([sys.executable, "-m", "lookalike", *map(str, args)], cwd=tmp_path, text=True,
                                env={**os.environ, "TEST_VLM_KEY": KEY}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while time.time() < deadline and len(server.seen) < 3 and proc.poll() is None:
            time.sleep(0.02)
        assert len(server.seen) >= 3, proc.communicate()[1]
        signalled = time.time()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        exited = time.time()

        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr
        assert exited - signalled < 5  # the two requests in flight (1 s each), not the 8 photos left (~4 s more)
        time.sleep(0.5)  # the test server records a request's status just after answering it
        late = [s.photo for s in server.seen if s.at > signalled + 0.5]
        assert late == []  # nothing started after Ctrl-C
        answered = [s.photo for s in server.seen if s.status == 200]
        assert 3 <= len(answered) <= 5 and len(answered) == len(server.seen)  # the in-flight ones finished too
        for photo in answered:  # every answer paid for is kept
            assert (photos / f"{photo}.txt").read_text().startswith("Arthur standing"), photo

        (line,) = stopped_lines(stderr)
        assert f"kept the {len(answered)} caption(s) received" in line
        assert f"{12 - len(answered)} photo(s) still to caption" in line
        assert "run the same command again" in line
        records = [json.loads(x) for x in (run / "caption/captions.jsonl").read_text().splitlines()]
        assert sorted(r["photo"][:-4] for r in records) == sorted(answered)
        manifest = json.loads((run / "caption/manifest.json").read_text())
        assert manifest["interrupted"] is True and manifest["requests"] == len(answered)
        assert (run / "caption/review.html").read_text().count('<div class="card') == 12

        server.script.latency = 0.0
        again = run_cli(args, cwd=tmp_path, TEST_VLM_KEY=KEY)
        assert again.returncode == 0, again.stderr
        asked = Counter(s.photo for s in server.seen)
        assert set(asked) == {f"p{i}" for i in range(12)} and set(asked.values()) == {1}  # no photo paid for twice
        assert json.loads((run / "caption/manifest.json").read_text())["interrupted"] is False


@pytest.fixture
def read_only_photos(tmp_path):
    """A folder of 3 photos that cannot be written to: a read-only bind mount as root (who ignores chmod)."""
    src, dst = tmp_path / "photos-rw", tmp_path / "photos"
    if os.geteuid() != 0:
        colour_photos(dst, 3)
        dst.chmod(0o555)
        yield dst
        dst.chmod(0o755)
        return
    colour_photos(src, 3)
    dst.mkdir()
    bound = subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True, text=True)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount a read-only folder here: {bound.stderr.strip()}")
    try:
        ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(dst)], capture_output=True, text=True)
        if ro.returncode != 0:
            pytest.skip(f"cannot remount a bind mount read-only here: {ro.stderr.strip()}")
        yield dst
    finally:
        subprocess.run(["umount", str(dst)], check=True)


def test_a_read_only_photo_folder_is_refused_before_the_first_request(tmp_path, read_only_photos):
    astronaut().save(tmp_path / "ref.jpg")
    with VLMServer(Script(identify=identify_colour)) as server:
        r = run_cli(caption_args(tmp_path / "run", read_only_photos, tmp_path / "ref.jpg", server.url), cwd=tmp_path,
                    TEST_VLM_KEY=KEY)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        (line,) = stopped_lines(r.stderr)
        assert f"dataset.photos '{read_only_photos}' is not writable" in line
        assert "copy the photos to a writable folder" in line and "--photos" in line
        assert server.seen == []  # nothing was paid for


def test_a_custom_endpoint_that_wants_a_key_when_none_is_configured_says_so(tmp_path):
    colour_photos(tmp_path / "photos", 3)
    astronaut().save(tmp_path / "ref.jpg")
    with VLMServer(Script(identify=identify_colour, api_key=KEY)) as server:
        r = run_cli(caption_args(tmp_path / "run", tmp_path / "photos", tmp_path / "ref.jpg", server.url, key_env=False),
                    cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        (line,) = stopped_lines(r.stderr)
        assert f"{server.url} wants an API key (HTTP 401) and none was configured" in line
        assert "--api-key-env VAR" in line and "caption.api_key_env" in line
        assert "refused the API key" not in line
        assert 1 <= len(server.seen) <= 3


def test_photos_that_all_have_captions_need_no_reference_key_or_endpoint(tmp_path):
    photos = make_photos(tmp_path / "photos", n=3)
    no_server = "http://127.0.0.1:9/v1"
    r = run_cli(["caption", tmp_path / "run", "--photos", photos, "--provider", "custom", "--base-url", no_server,
                 "--model", "test-vlm", "--set", "caption.api_key_env=TEST_VLM_KEY"], cwd=tmp_path, TEST_VLM_KEY="")
    assert r.returncode == 0, r.stderr
    records = [json.loads(x) for x in (tmp_path / "run/caption/captions.jsonl").read_text().splitlines()]
    assert [r["source"] for r in records] == ["existing"] * 3
    assert (tmp_path / "run/caption/review.html").is_file()

    Image.new("RGB", (200, 200), "grey").save(tmp_path / "wall.jpg")  # no face: no matter, nothing is asked
    r = run_cli(["caption", tmp_path / "run", "--reference", tmp_path / "wall.jpg"], cwd=tmp_path, TEST_VLM_KEY="")
    assert r.returncode == 0, r.stderr

    (photos / "IMG_0001.txt").unlink()  # now one photo must be asked for: the reference is required again
    r = run_cli(["caption", tmp_path / "run", "--set", "caption.reference=null"], cwd=tmp_path, TEST_VLM_KEY="")
    assert r.returncode == 2 and "caption.reference is not set" in r.stderr


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_in_the_pool_starts_nothing_new_and_a_second_one_abandons_what_is_in_flight(presses):
    began, release, started, results = threading.Event(), threading.Event(), [], []

    def work(item):  # "slow" is a request in flight when Ctrl-C comes
        started.append(item)
        began.set()
        release.wait(10)
        return item

    def press():
        began.wait(10)
        for _ in range(presses):
            os.kill(os.getpid(), signal.SIGINT)  # the pool's handler is in place while "slow" runs
            time.sleep(0.2)
        if presses == 1:
            release.set()  # the answer in flight arrives after the Ctrl-C

    stop = threading.Event()
    threading.Thread(target=press, daemon=True).start()
    t0 = time.time()
    try:  # with two presses "slow" is still running when the pool returns: never before the second press
        seen = run_pool(work, ["slow", "queued"], 1, stop, lambda item, value, error: results.append(value))
    finally:
        release.set()
    assert time.time() - t0 < 2 and stop.is_set() and started == ["slow"]  # "queued" never started
    assert seen.count == presses
    if presses == 1:  # the answer in flight is waited for and handed on
        assert results == ["slow"] and seen.abandoned == 0
    else:
        assert results == [] and seen.abandoned == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C raises again afterwards


class StopAfter(threading.Event):
    """A stop event that reads unset for its first `n` checks, then set: Ctrl-C landing between two of them."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0


@pytest.mark.parametrize("lands", ["before the first try", "before the retry"])
def test_ctrl_c_between_the_workers_check_and_the_send_counts_only_what_went_out(tmp_path, lands):
    from lookalike.caption.ask import AskContext, caption_photo, make_client
    from lookalike.caption.prompt import data_url, jpeg_for_request
    from lookalike.caption.providers import Redactor, endpoint
    from lookalike.config import load_config

    colour_photos(tmp_path, 1)
    first = lands == "before the first try"
    with VLMServer(Script(identify=identify_colour, plan={"p0": ["500"]})) as server:
        cfg = load_config(overrides=[f"caption.base_url={server.url}", "caption.provider=custom",
                                     "caption.model=test-vlm", "caption.retries=1"])
        ep = endpoint(cfg.caption)
        stop = StopAfter(1 if first else 2)  # checks: the worker's, then one before each HTTP try
        ref = data_url(jpeg_for_request(astronaut(), 256, 90)[0])
        ctx = AskContext(make_client(ep, cfg.caption, "k", stop), ep, cfg.caption, "Arthur", "rules", ref,
                         Redactor("k"), stop)
        record = caption_photo(ctx, tmp_path / "p0.png", None)
    if first:  # nothing went out: nothing to store, nothing counted, and the next run asks this photo
        assert record is None and ctx.sent == 0 and server.seen == []
    else:  # the first try went out and got a 500; the SDK's retry did not
        assert [s.status for s in server.seen] == [500] and ctx.sent == 1
        assert record.asks == 1 and record.final is False and record.caption is None
        assert record.flags == ["no caption: the run stopped before the reply came"]
