"""`lookalike caption` against a real chat-completions server on loopback that misbehaves on purpose."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import astronaut, grace_hopper, run_cli
from vlm_server import Script, VLMServer, colour_photos, identify_colour

KEY = "sk-test-SECRET-7f3a9c"  # must never reach a file or a log


def caption_args(run, photos, ref, url, *extra):
    return ["caption", run, "--photos", photos, "--reference", ref, "--provider", "custom", "--base-url", url,
            "--model", "test-vlm", "--set", "caption.api_key_env=TEST_VLM_KEY", *extra]


def caption(tmp_path, url, *extra, key=KEY, photos=None, ref=None, timeout=120):
    env = {"TEST_VLM_KEY": key} if key else {"TEST_VLM_KEY": ""}
    return run_cli(caption_args(tmp_path / "run", photos or tmp_path / "photos", ref or tmp_path / "ref.jpg", url, *extra),
                   cwd=tmp_path, timeout=timeout, **env)


@pytest.fixture
def setup(tmp_path):
    ids = colour_photos(tmp_path / "photos", 10)
    astronaut().save(tmp_path / "ref.jpg")
    return ids


def files_text(*folders) -> str:
    return "".join(p.read_bytes().decode("latin-1") for f in folders for p in Path(f).rglob("*") if p.is_file())


def test_misbehaving_server_every_photo_ends_captioned_or_flagged(tmp_path, setup):
    photos = tmp_path / "photos"
    (photos / "p9.txt").write_text("Arthur reading by the window, a caption he wrote himself\n")
    plan = {
        "p1": [("429", 1)], "p2": ["500"], "p3": [("slow", 3)], "p4": ["no-trigger"] * 3, "p5": ["refusal"] * 3,
        "p6": ["garbage"], "p7": ["markdown"], "p8": ["no-trigger"],
    }
    with VLMServer(Script(identify=identify_colour, plan=plan, api_key=KEY)) as server:
        result = caption(tmp_path, server.url, "--set", "caption.timeout=1.5")
        assert result.returncode == 0, result.stderr

        seen = list(server.seen)
        ref = np.asarray(astronaut().resize((64, 64)), dtype=float)
        for s in seen:  # the reference image first, the photo second, in every request
            assert len(s.images) == 2
            assert np.abs(np.asarray(s.images[0].resize((64, 64)), dtype=float) - ref).mean() < 8
            assert s.authorization == f"Bearer {KEY}"
        assert {s.photo for s in seen} == {f"p{i}" for i in range(9)}  # p9 has the user's caption: not sent

        # 429 with Retry-After: 1 -> the retry comes at least 1 s later
        first, second = server.requests_for("p1")[:2]
        assert first.status == 429 and second.status == 200 and second.at - first.at >= 0.95
        assert [s.status for s in server.requests_for("p2")] == [500, 200]
        assert len(server.requests_for("p3")) == 2  # timed out once, then answered
        # a broken rule is asked again, the violation stated
        reask = server.requests_for("p8")[1].messages
        assert reask[-2]["role"] == "assistant" and "does not start with Arthur" in reask[-1]["content"]
        assert "wrapped in quotes or markdown" in server.requests_for("p7")[1].messages[-1]["content"]
        assert len(server.requests_for("p4")) == 3 and len(server.requests_for("p5")) == 3  # 1 + caption.reasks

        records = {json.loads(line)["photo"]: json.loads(line)
                   for line in (tmp_path / "run/caption/captions.jsonl").read_text().splitlines()}
        assert len(records) == 10
        for name, r in records.items():  # a valid caption or a flag, for every photo
            txt = photos / name.replace(".png", ".txt")
            if r["caption"]:
                assert r["caption"].startswith("Arthur") and txt.read_text().strip() == r["caption"]
            else:
                assert r["flags"] and not txt.exists()
        assert records["p4.png"]["caption"].startswith("Arthur, a man standing") and "repaired: trigger prefixed" in records["p4.png"]["flags"]
        assert records["p5.png"]["caption"] is None and records["p5.png"]["flags"][0].startswith("no caption: the reply refused")
        assert records["p6.png"]["caption"] and records["p7.png"]["caption"] == "Arthur standing in a sunny park with trees behind, photo p7"
        assert records["p9.png"]["source"] == "existing" and (photos / "p9.txt").read_text().startswith("Arthur reading")
        for name in ("p0.png", "p1.png", "p2.png", "p3.png", "p6.png", "p7.png", "p8.png"):
            assert records[name]["flags"] == [], (name, records[name])

        manifest = json.loads((tmp_path / "run/caption/manifest.json").read_text())
        assert manifest["usage"] == server.usage_sent  # token usage summed over every reply
        assert manifest["requests"] == len(seen) - 3  # chat requests; the SDK's 3 transport retries come on top
        assert "p5.png" in manifest["flagged"] and "p4.png" in manifest["flagged"]
        assert "p5.png" in result.stderr and "refused" in result.stderr

        review = (tmp_path / "run/caption/review.html").read_text()
        assert review.count('<div class="card') == 10 and review.count("data:image/jpeg;base64,") == 10
        assert "repaired: trigger prefixed" in review and "reading by the window" in review

        # the key is in no file written and in no output
        assert KEY not in files_text(tmp_path / "run", photos) and KEY not in result.stdout + result.stderr

        # a re-run sends nothing
        before = len(server.seen)
        again = caption(tmp_path, server.url)
        assert again.returncode == 0, again.stderr
        assert len(server.seen) == before and "0 sent" in again.stderr

        # a hand-edited caption is never overwritten; changing a rule re-captions only the model's captions
        (photos / "p0.txt").write_text("Arthur, as I remember that day\n")
        changed = caption(tmp_path, server.url, "--set", 'caption.rules=["Always start with {trigger}", "Be brief"]')
        assert changed.returncode == 0, changed.stderr
        resent = {s.photo for s in server.seen[before:]}
        assert resent == {"p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"}
        assert (photos / "p0.txt").read_text() == "Arthur, as I remember that day\n"
        records = {json.loads(x)["photo"]: json.loads(x) for x in (tmp_path / "run/caption/captions.jsonl").read_text().splitlines()}
        assert records["p0.png"]["source"] == "edited" and records["p9.png"]["source"] == "existing"
        assert "- Be brief" in server.seen[-1].messages[0]["content"]


def test_a_killed_run_asks_again_only_for_the_missing_photos(tmp_path, setup):
    with VLMServer(Script(identify=identify_colour, latency=0.4)) as server:
        args = caption_args(tmp_path / "run", tmp_path / "photos", tmp_path / "ref.jpg", server.url, "--concurrency", "2")
        proc = subprocess.Popen([sys.executable, "-m", "lookalike", *map(str, args)], cwd=tmp_path,
                                env={**os.environ, "TEST_VLM_KEY": KEY}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        records = tmp_path / "run/caption/captions.jsonl"
        deadline = time.time() + 60
        while time.time() < deadline and (not records.exists() or len(records.read_text().splitlines()) < 4):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = {json.loads(x)["photo"][:-4] for x in records.read_text().splitlines()}
        assert 4 <= len(done) < 10
        before = len(server.seen)
        result = caption(tmp_path, server.url)
        assert result.returncode == 0, result.stderr
        asked = [s.photo for s in server.seen[before:]]
        assert sorted(asked) == sorted({f"p{i}" for i in range(10)} - done)  # only the missing ones, once each
        assert all((tmp_path / "photos" / f"p{i}.txt").is_file() for i in range(10))


def test_dry_run_counts_requests_tokens_and_cost_and_sends_nothing(tmp_path, setup):
    with VLMServer(Script(identify=identify_colour)) as server:
        result = caption(tmp_path, server.url, "--dry-run", "--set", "caption.price_in=2", "--set", "caption.price_out=10",
                         key=None)
        assert result.returncode == 0, result.stderr
        assert server.seen == []
        est = json.loads(result.stdout.strip().splitlines()[-1])
        assert est["requests"] == 10
        # each request: the rules (~200 tokens) + two images (85 + 170 per 512-px tile: 255 each here)
        assert 10 * (255 + 255) < est["input_tokens"] < 10 * (255 + 255 + 400)
        assert est["cost_usd"] == pytest.approx((est["input_tokens"] * 2 + est["output_tokens"] * 10) / 1e6, abs=1e-4)
        assert "Nothing was sent" in result.stderr


def test_every_persons_reference_goes_with_each_request_and_keys_it(tmp_path, setup):
    """With dataset.people, each request carries the person's reference, then each other person's, then the
    photo; the rules name them all; and since the references shape the caption, they key the request."""
    grace_hopper().save(tmp_path / "grace.jpg")
    people = ["--set", f"dataset.people=[{{trigger: Grace, photos: '{tmp_path / 'grace'}', "
                       f"reference: '{tmp_path / 'grace.jpg'}'}}]"]
    with VLMServer(Script(identify=identify_colour, api_key=KEY)) as server:
        r = caption(tmp_path, server.url, *people[:1], people[1].replace(", reference: '" + str(tmp_path / "grace.jpg")
                                                                            + "'", ""))
        assert r.returncode == 2 and "dataset.people[0].reference is not set" in r.stderr, r.stderr
        assert server.seen == [] and "Traceback" not in r.stderr

        assert caption(tmp_path, server.url).returncode == 0  # one person: two images per request
        assert {len(s.images) for s in server.seen} == {2}
        before = len(server.seen)
        r = caption(tmp_path, server.url, *people)
        assert r.returncode == 0, r.stderr
        seen = server.seen[before:]
        assert sorted(s.photo for s in seen) == sorted(f"p{i}" for i in range(10))  # new references: asked again
        astro, grace = (np.asarray(im.resize((64, 64)), dtype=float) for im in (astronaut(), grace_hopper()))
        for s in seen:
            assert len(s.images) == 3
            assert np.abs(np.asarray(s.images[0].resize((64, 64)), dtype=float) - astro).mean() < 8
            assert np.abs(np.asarray(s.images[1].resize((64, 64)), dtype=float) - grace).mean() < 8
            texts = [part["text"] for part in s.messages[1]["content"] if part["type"] == "text"]
            assert texts == ["Image 1: the reference photo of Arthur.", "Image 2: the reference photo of Grace.",
                             "Image 3: the photo to caption. Start the caption with Arthur."]
            assert "Name each of Arthur and Grace who appears" in s.messages[0]["content"]
        again = len(server.seen)
        assert caption(tmp_path, server.url, *people).returncode == 0
        assert len(server.seen) == again  # the same references: nothing asked twice


def test_bad_input_gets_a_message_naming_the_setting(tmp_path, setup):
    with VLMServer(Script(identify=identify_colour, api_key=KEY)) as server:
        r = caption(tmp_path, server.url, key=None)
        assert r.returncode == 2 and "TEST_VLM_KEY" in r.stderr and "not set" in r.stderr and "Traceback" not in r.stderr

        r = caption(tmp_path, server.url, key="sk-wrong-key-000")
        assert r.returncode == 2 and "refused the API key from TEST_VLM_KEY" in r.stderr
        assert "sk-wrong-key-000" not in r.stderr + files_text(tmp_path / "run")

        r = caption(tmp_path, server.url, "--model", "no-such-vlm")
        assert r.returncode == 2 and "caption.model = 'no-such-vlm' is not served by " + server.url in r.stderr
        assert "test-vlm" in r.stderr

        Image.new("RGB", (200, 200), "grey").save(tmp_path / "wall.jpg")
        r = caption(tmp_path, server.url, ref=tmp_path / "wall.jpg")
        assert r.returncode == 2 and "no face found" in r.stderr and "caption.reference" in r.stderr
        r = caption(tmp_path, server.url, ref=tmp_path / "nobody.jpg")
        assert r.returncode == 2 and "nobody.jpg" in r.stderr and "neither a file" in r.stderr
    assert not list((tmp_path / "photos").glob("*.txt"))  # nothing was captioned by any of these

    dead = server.url  # the server is gone: nothing answers there now
    r = caption(tmp_path, dead)
    assert r.returncode == 2 and f"no answer from {dead}" in r.stderr

    with VLMServer(Script(identify=identify_colour, plan={f"p{i}": ["garbage"] * 9 for i in range(10)})) as server:
        r = caption(tmp_path, server.url)
        assert r.returncode == 2 and f"{server.url} gave no usable caption for any of the 10 photo(s)" in r.stderr
        assert "malformed reply" in r.stderr
        assert (tmp_path / "run/caption/review.html").is_file()  # the records and the page are kept

    empty = tmp_path / "empty"
    empty.mkdir()
    r = caption(tmp_path, "http://127.0.0.1:9/v1", photos=empty)
    assert r.returncode == 2 and "is empty" in r.stderr


def test_real_photos_the_reference_can_be_a_photo_of_the_folder(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    astronaut().save(photos / "selfie.jpg")
    grace_hopper().save(photos / "friend.jpg")
    (photos / "broken.jpg").write_text("not a photo")
    with VLMServer(Script(models=("test-vlm",))) as server:
        r = run_cli(caption_args(tmp_path / "run", photos, "selfie.jpg", server.url), cwd=tmp_path, TEST_VLM_KEY=KEY)
        assert r.returncode == 0, r.stderr
        assert len(server.seen) == 2  # the broken file is not sent
    records = {json.loads(x)["photo"]: json.loads(x) for x in (tmp_path / "run/caption/captions.jsonl").read_text().splitlines()}
    assert records["broken.jpg"]["flags"][0].startswith("skipped: not an image")
    assert (photos / "selfie.txt").is_file() and (photos / "friend.txt").is_file()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (.ci/run installs it)")
def test_review_page_renders_in_a_browser(tmp_path, setup):
    with VLMServer(Script(identify=identify_colour, plan={"p3": ["refusal"] * 3})) as server:
        assert caption(tmp_path, server.url).returncode == 0
    page = tmp_path / "run/caption/review.html"
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'data-thumbnails="10/10"' in dom  # every embedded thumbnail decoded in the browser
    assert dom.index('data-photo="p3.png"') < dom.index('data-photo="p0.png"')  # flagged photos first
    assert dom.count('class="trigger"') == 9


def test_another_persons_folder_is_captioned_with_their_reference_first(tmp_path, setup):
    """`caption --person Grace`: her photos, her reference first and Arthur's beside it, captions starting with
    her trigger; records in RUN/people/Grace/, Arthur's folder untouched."""
    grace_hopper().save(tmp_path / "grace.jpg")
    colour_photos(tmp_path / "grace", 3)
    people = ["--set", f"dataset.people=[{{trigger: Grace, photos: '{tmp_path / 'grace'}', "
                       f"reference: '{tmp_path / 'grace.jpg'}'}}]"]
    with VLMServer(Script(trigger="Grace", identify=identify_colour, api_key=KEY)) as server:
        r = caption(tmp_path, server.url, *people, "--person", "Ida")
        assert r.returncode == 2 and "--person Ida: no one in this run is called that" in r.stderr
        assert "Arthur, Grace" in r.stderr and "Traceback" not in r.stderr
        r = caption(tmp_path, server.url, *people, "--person", "grace")
        assert r.returncode == 0, r.stderr
        assert sorted(s.photo for s in server.seen) == ["p0", "p1", "p2"]
        grace, astro = (np.asarray(im.resize((64, 64)), dtype=float) for im in (grace_hopper(), astronaut()))
        for s in server.seen:
            assert np.abs(np.asarray(s.images[0].resize((64, 64)), dtype=float) - grace).mean() < 8
            assert np.abs(np.asarray(s.images[1].resize((64, 64)), dtype=float) - astro).mean() < 8
            texts = [part["text"] for part in s.messages[1]["content"] if part["type"] == "text"]
            assert texts == ["Image 1: the reference photo of Grace.", "Image 2: the reference photo of Arthur.",
                             "Image 3: the photo to caption. Start the caption with Grace."]
    assert (tmp_path / "grace/p0.txt").read_text().startswith("Grace standing")
    assert (tmp_path / "run/people/Grace/caption/review.html").is_file()
    assert not list((tmp_path / "photos").glob("*.txt"))
