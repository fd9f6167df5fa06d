"""`lookalike app` in a real browser: Debian's chromium driven by Playwright against the real server.

One toy-world run from upload to generated image, as a person would click it: upload the toy photos and
their captions, read the doctor's table, edit a caption (and find it in the .txt), start a short toy
training, see a preview and the loss curve while it runs, stop it, resume it, let it finish, evaluate,
read the recommendation, generate with the LoRA. A screenshot of each tab is saved (into
$LOOKALIKE_SCREENSHOTS when set: the README's come from there).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

CHROMIUM = shutil.which("chromium")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run)")]

SETTINGS = ["train.sample_every=2", "train.checkpoint_every=20", "generate.steps=4", "generate.seeds=[0]",
            "eval.toy_plain=2", "eval.toy_trigger=2", "eval.seeds=[0]"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free loopback port, as `lookalike app` starts it."""
    work = tmp_path_factory.mktemp("app")
    port = free_port()
    args = [sys.executable, "-m", "lookalike", "app", "--port", str(port), "--runs", str(work / "runs")]
    for s in SETTINGS:
        args += ["--set", s]
    log = open(work / "app.log", "w")
    proc = subprocess.Popen(args, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, (work / "app.log").read_text()
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/", work
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def shots() -> Path:
    folder = Path(os.environ.get("LOOKALIKE_SCREENSHOTS") or "")
    return folder


def choose(page, elem_id: str, value: str) -> None:
    """Pick `value` in a Gradio dropdown."""
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(value)
    page.get_by_role("option", name=value, exact=True).click()


def test_a_toy_run_from_upload_to_generated_image(server, browser, tmp_path):
    from playwright.sync_api import expect

    from lookalike.toy.demo import write_dataset

    url, work = server
    screenshots = shots() if os.environ.get("LOOKALIKE_SCREENSHOTS") else tmp_path
    screenshots.mkdir(parents=True, exist_ok=True)
    photos = write_dataset(tmp_path / "toy", n=16)
    (tmp_path / "broken.jpg").write_bytes(b"not a photo")
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as z:  # a member that tries to climb out of the folder
        z.writestr("../../copy.png", photos[1].read_bytes())
    files = [str(p) for p in photos] + [str(p.with_suffix(".txt")) for p in photos] + \
        [str(tmp_path / "broken.jpg"), str(tmp_path / "more.zip")]
    run = work / "runs" / "arthur"

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    expect.set_options(timeout=60_000)  # the first estimate, eval or draw loads torch in the app or its job
    page.goto(url)
    expect(page.locator("#job-state")).to_contain_text("No run chosen")  # the page has loaded its state
    page.locator("#run input").fill("arthur")
    page.locator("#run input").press("Enter")
    page.locator("#trigger textarea, #trigger input").first.fill("Arthur")
    choose(page, "preset", "toy")

    t0 = time.time()
    lap = lambda what: print(f"{what}: {time.time() - t0:.1f} s", flush=True)  # noqa: E731
    # Photos: upload, check, the doctor's table
    page.locator("#uploads input[type=file]").set_input_files(files)
    expect(page.locator("#uploads")).to_contain_text("arthur-015", timeout=60_000)
    expect(page.locator("#uploads")).not_to_contain_text("Uploading", timeout=60_000)
    page.locator("#add-uploads").click()
    expect(page.locator("#doctor-table")).to_contain_text("arthur-015.png", timeout=90_000)
    table = page.locator("#doctor-table")
    # each flag with what it means beside it
    expect(table).to_contain_text("duplicate: the same file as")  # copy.png and arthur-001.png: one is left out
    expect(table).to_contain_text("one copy trains")
    expect(table.locator('tr[data-photo="broken.jpg"]')).to_contain_text("cannot be read")
    expect(table.locator('tr[data-photo="broken.jpg"]')).to_contain_text("replace it with a JPEG")
    expect(table.locator("img.thumb").first).to_be_visible()
    assert sorted(p.name for p in (run / "photos").glob("*.png")) == sorted([p.name for p in photos] + ["copy.png"])
    assert not list(work.glob("**/copy.png"))[1:], "the zip member landed once, inside RUN/photos"
    # keep the original, leave the copy out: RUN/photos.yaml, the file the CLI reads
    page.locator("#chosen").get_by_label("copy.png", exact=True).uncheck()
    page.locator("#chosen").get_by_label("arthur-001.png", exact=True).check()
    page.locator("#save-selection").click()
    expect(page.locator("#message")).to_contain_text("16 photos train")
    lists = yaml.safe_load((run / "photos.yaml").read_text())
    assert lists == {"include": ["arthur-001.png"], "exclude": ["copy.png"]}
    page.screenshot(path=str(screenshots / "app-photos.png"), full_page=True)

    lap("photos")
    # Captions: edit one in place; the edit is the photo's .txt
    page.get_by_role("tab", name="Captions").click()
    expect(page.locator("#captions-table")).to_contain_text("arthur-000.png")
    choose(page, "caption-photo-name", "arthur-003.png")
    expect(page.locator("#caption-text textarea")).to_have_value((run / "photos" / "arthur-003.txt").read_text().strip())
    edited = "Arthur wearing a tall wizard hat, edited in the app"
    page.locator("#caption-text textarea").fill(edited)
    page.locator("#caption-save").click()
    expect(page.locator("#caption-info")).to_contain_text("saved your caption")
    assert (run / "photos" / "arthur-003.txt").read_text() == edited + "\n"
    expect(page.locator("#captions-table")).to_contain_text("wizard hat")
    page.screenshot(path=str(screenshots / "app-captions.png"), full_page=True)

    lap("captions")
    # Training: start, watch a preview and the loss curve arrive, stop, resume, finish
    page.get_by_role("tab", name="Training").click()
    page.locator("#steps input").fill("40")
    page.locator("#train-estimate").click()
    expect(page.locator("#train-info")).to_contain_text("40 training steps")
    page.locator("#train-start").click()
    expect(page.locator("#job-state")).to_contain_text("running", timeout=30_000)
    expect(page.locator("#previews img.preview").first).to_be_visible(timeout=120_000)
    expect(page.locator("#curves svg polyline").first).to_be_attached(timeout=120_000)  # a loss curve with points
    page.screenshot(path=str(screenshots / "app-training.png"), full_page=True)
    page.reload()  # the job is a process of its own: the reloaded page finds the run and the running job
    expect(page.locator("#job-state")).to_contain_text("running", timeout=30_000)
    page.get_by_role("tab", name="Training").click()
    expect(page.locator("#previews img.preview").first).to_be_visible()
    lap("stop")
    page.locator("#train-stop").click()
    expect(page.locator("#job-state")).to_contain_text("stopped", timeout=120_000)
    assert (run / "train" / "resume" / "last.ckpt").is_file() and not (run / "train" / "lora.safetensors").exists()
    lap("resume")
    page.locator("#train-resume").click()
    expect(page.locator("#job-state")).to_contain_text("running", timeout=30_000)
    expect(page.locator("#job-state")).to_contain_text("finished", timeout=300_000)
    assert (run / "train" / "lora.safetensors").is_file() and (run / "train" / "lora-kohya.safetensors").is_file()
    expect(page.locator("#curves img.gif").first).to_be_visible()

    lap("trained")
    # Results: evaluate every checkpoint, the table and the recommendation
    page.get_by_role("tab", name="Results").click()
    page.locator("#evaluate").click()
    expect(page.locator("#job-state")).to_contain_text("finished", timeout=300_000)
    expect(page.locator("#results #recommendation")).to_be_visible(timeout=30_000)
    expect(page.locator("#results")).to_contain_text("step-000040")
    expect(page.locator("#open-report")).to_be_visible()
    report = page.request.get(url.rstrip("/") + page.locator("#open-report").get_attribute("href"))
    assert report.ok and "lookalike report: arthur" in report.text()  # one click away, served by the app
    expect(page.locator("#lora-files")).to_contain_text("lora-kohya")
    page.screenshot(path=str(screenshots / "app-results.png"), full_page=True)

    lap("evaluated")
    # Generate with the run's LoRA
    page.get_by_role("tab", name="Generate").click()
    page.locator("#prompts textarea").fill("Arthur as a wizard")
    page.locator("#seeds textarea, #seeds input").first.fill("3")
    page.locator("#generate-button").click()
    expect(page.locator("#gallery img").first).to_be_visible(timeout=120_000)
    expect(page.locator("#image-meta")).to_contain_text("lora.safetensors")
    drawn = list((run / "generate").glob("*/000-arthur-as-a-wizard-s3.png"))
    assert len(drawn) == 1
    page.screenshot(path=str(screenshots / "app-generate.png"), full_page=True)
    lap("done")
    page.close()
