"""What the web app shows and the few small writes it makes, from and to the files of one run folder.

Every number and image here is read from the files the stages wrote (RUN/ingest/doctor.json,
RUN/caption/captions.jsonl, RUN/train/logs, samples, GIFs, RUN/eval/metrics.json); the HTML pieces are the
report's own sections where the report has them. The writes are the user's own files: a caption `.txt`
(a hand edit, which the caption stage never overwrites), RUN/photos.yaml and the run's config.
"""

from __future__ import annotations

import functools
import html
import json
from pathlib import Path

from lookalike.errors import ConfigError
from lookalike.rundir import RunDir, hold

# What each of the dataset doctor's flags means and what to do about it (its first words are the key).
FLAG_HELP = {
    "cannot be read": "The file is not an image Pillow can open (or it is truncated, empty, or a decompression "
                      "bomb). It cannot train; replace it with a JPEG, PNG, WebP or HEIC.",
    "duplicate": "The same bytes as another photo: one copy trains, the other is left out.",
    "same shot": "The same photo saved twice in two formats (IMG_1.HEIC + IMG_1.JPG): one trains.",
    "near duplicate": "Looks almost like another photo. Both train; near copies teach the model that one shot "
                      "and make it copy it. Untick one if they are the same moment.",
    "shares its name": "Two photos share a name with different extensions; each caption file is named after "
                       "the whole file name.",
    "no face found": "No face was found. Where faces are found in most photos, a photo without one is left "
                     "out; tick it to train it anyway (a body shot, the person from behind).",
    "person not found": "Faces were found but none is the person (the reference photo's face): somebody else, "
                        "or the person barely visible. Left out; tick it if it is the person.",
    "not used by training": "Not a photo format training reads; rename or convert it.",
    "blurry": "Too blurry to teach a face (the sharpness of the face, or of the photo, is under "
              "doctor.min_sharpness). Left out; tick it to train it anyway.",
    "small": "Smaller than the training size: enlarged, so it teaches a soft face. It trains; replace it with "
             "the original if you have it.",
}


def list_runs(runs: Path) -> list[str]:
    """Run folders under `runs` (those with a config.yaml), newest first."""
    if not runs.is_dir():
        return []
    found = [p for p in runs.iterdir() if (p / "config.yaml").is_file()]
    return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def run_config(rd: RunDir):
    from lookalike.config import load_config

    if not rd.config_path.is_file():
        raise ConfigError(f"{rd.root} is not a run yet: add photos first (tab Photos)")
    return load_config(rd.config_path)


@functools.lru_cache(maxsize=2048)
def _thumb_url(path: str, mtime_ns: int) -> str | None:
    """A photo's thumbnail as a data URL, made once per version of the file (phone photos are large)."""
    from lookalike.caption.review import thumbnail_url

    try:
        return thumbnail_url(Path(path))
    except Exception:  # noqa: BLE001 - a file the doctor could not read has no thumbnail
        return None


def _thumb(path: Path, side: int = 160) -> str:
    try:
        url = _thumb_url(str(path), path.stat().st_mtime_ns)
    except OSError:
        url = None
    return f'<img src="{url}" width="{side}" class="thumb" alt="{html.escape(path.name)}">' if url else "(no image)"


def _flag_help(flag: str) -> str:
    key = next((k for k in FLAG_HELP if flag.startswith(k)), None)
    return FLAG_HELP[key] if key else ""


# ---------------------------------------------------------------- photos


def doctor_table(rd: RunDir) -> tuple[str, list[str], list[str], str | None]:
    """(HTML table, photos that can be chosen, photos that train now, the doctor's reference pick)."""
    from lookalike.data.selection import current_selection
    from lookalike.ingest.stage import read_record

    record = read_record(rd)
    if record is None:
        return '<p class="note">No photos checked yet: upload photos or give a folder, then press Check.</p>', [], [], None
    cfg = run_config(rd)
    selection = current_selection(cfg, rd, refresh=False)
    folder = Path(record["folder"])
    rows = []
    for p in record["photos"]:
        trains = p["file"] in selection.used
        flags = list(p.get("flags") or [])
        if p.get("enlarged") and p["enlarged"] > 1:
            flags.append(f"small: enlarged {p['enlarged']:.1f}x to the training size")
        if not p["usable"]:
            flags.insert(0, f"cannot be read: {p.get('reason')}")
        flag_html = "".join(f'<div class="flag"><b>{html.escape(f)}</b><br><span class="why">{html.escape(_flag_help(f))}'
                            f"</span></div>" for f in flags) or "-"
        status = "trains" if trains else f"left out: {selection.left_out.get(p['file'], '')}"
        size = f"{p.get('width')}x{p.get('height')}" if p.get("width") else "-"
        person = {True: "yes", False: "no", None: "-"}[p.get("person")]
        rows.append(f'<tr class="{"in" if trains else "out"}" data-photo="{html.escape(p["file"])}">'
                    f"<td>{_thumb(folder / p['file'])}</td><td>{html.escape(p['file'])}</td>"
                    f"<td>{html.escape(status)}</td><td>{size}</td><td>{p.get('faces') if p.get('faces') is not None else '-'}"
                    f"</td><td>{person}</td><td>{html.escape(str(p.get('position') or '-'))}</td><td>{flag_html}</td></tr>")
    s = record.get("summary", {})
    head = (f'<p>{s.get("files", 0)} files, {s.get("usable", 0)} readable; the person ({html.escape(str(s.get("person_from")))})'
            f" found in {s.get('person_found', 0)}; <b>{len(selection.used)} train</b>. "
            f"Reference photo: {html.escape(str(record.get('reference')))}.</p>")
    if selection.note:
        head += f'<p class="note">{html.escape(selection.note)}</p>'
    table = (f'<table id="doctor-table"><tr><th>photo</th><th>file</th><th>trains?</th><th>size</th><th>faces</th>'
             f"<th>person</th><th>where</th><th>flags</th></tr>{''.join(rows)}</table>")
    choosable = [p["file"] for p in record["photos"] if p["usable"]]
    return head + table, choosable, selection.used, record.get("reference")


def save_selection(rd: RunDir, chosen: list[str]) -> str:
    """RUN/photos.yaml from the ticked photos: `include` what the doctor left out but is ticked, `exclude`
    what it kept but is not. The same file `lookalike caption/train` read."""
    from lookalike.data.selection import choose, write_lists
    from lookalike.ingest.stage import read_record

    record = read_record(rd)
    if record is None:
        raise ConfigError("no photos checked yet: press Check first")
    doctor = choose(record, [], [])
    kept = set(doctor.used)
    readable = {p["file"] for p in record["photos"] if p["usable"]}
    chosen_set = set(chosen) & readable
    include = sorted(chosen_set - kept)
    exclude = sorted(kept - chosen_set)
    with hold(rd.root, "lookalike app: photo selection"):
        write_lists(rd, include, exclude)
    return f"saved {rd.selection_path}: {len(chosen_set)} photos train (include {len(include)}, exclude {len(exclude)})"


def set_setting(rd: RunDir, key: str, value) -> None:
    """Change one setting of the run's config.yaml the way `--set` would (refused once it is fixed)."""
    from lookalike.config.run import prepare_run

    with hold(rd.root, "lookalike app: settings"):
        _, prepared = prepare_run(rd.root, overrides=[f"{key}={json.dumps(value)}"], training=False)
        prepared.save_config()


# ---------------------------------------------------------------- captions


def caption_rows(rd: RunDir) -> list[dict]:
    """One row per photo that trains: its caption as on disk, where it came from and its flags; flagged first."""
    from lookalike.caption.agent import photo_files
    from lookalike.caption.store import EDITED, CaptionStore, caption_path, text_sha
    from lookalike.data.photos import has_trigger

    cfg = run_config(rd)
    try:
        files = photo_files(cfg, rd)
    except ConfigError:
        return []
    store = CaptionStore(rd.captions_record)
    rows = []
    for path in files:
        txt = caption_path(path)
        raw = txt.read_text(encoding="utf-8", errors="replace") if txt.is_file() else None
        text = (raw or "").strip()
        record = store.get(path.name)
        flags = list(record.flags) if record else []
        if record is None:
            source = "your caption" if text else "none yet"
        elif raw is not None and record.txt_sha256 != text_sha(raw):
            source = "edited by you"
        else:
            source = {"model": "model", EDITED: "edited by you", "existing": "your caption"}.get(record.source or "", "-")
        if text and not has_trigger(text, cfg.dataset.trigger) and not any("trigger" in f for f in flags):
            flags.append(f"no trigger: the caption does not name {cfg.dataset.trigger}")
        if not text and not flags:
            flags.append("no caption yet")
        rows.append({"photo": path.name, "caption": text, "source": source, "flags": "; ".join(flags), "path": path})
    return sorted(rows, key=lambda r: (not r["flags"], r["photo"]))


def save_caption(rd: RunDir, photo: str, text: str) -> Path:
    """Write the caption `.txt` of `photo` as the user's hand edit (the caption stage keeps it as it is)."""
    from lookalike.caption.store import caption_path, write_text_atomic

    cfg = run_config(rd)
    path = _photo_path(cfg, photo)
    text = " ".join(text.split())
    if not text:
        raise ConfigError(f"the caption of {photo} is empty; write one, or press Re-caption to have one made")
    with hold(rd.root, "lookalike app: caption edit"):
        txt = caption_path(path)
        write_text_atomic(txt, text + "\n")
    return txt


def forget_caption(rd: RunDir, photo: str) -> None:
    """Delete the photo's caption and record, so the next caption job asks for it again (and only it)."""
    from lookalike.caption.store import CaptionStore, caption_path

    cfg = run_config(rd)
    path = _photo_path(cfg, photo)
    with hold(rd.root, "lookalike app: re-caption"):
        store = CaptionStore(rd.captions_record)
        store.forget(path.name)
        caption_path(path).unlink(missing_ok=True)


def _photo_path(cfg, photo: str) -> Path:
    folder = Path(cfg.dataset.photos)
    path = folder / Path(photo).name
    if Path(photo).name != photo or not path.is_file():
        raise ConfigError(f"{photo!r} is not a photo of {folder}")
    return path


def key_status(cfg, env_file: str | None) -> str:
    """Whether the captioning key is set, and where: never the key itself."""
    import os

    from lookalike.caption.providers import endpoint

    ep = endpoint(cfg.caption)
    if not ep.key_env:
        return f"{ep.provider}: no key needed ({ep.base_url})"
    if os.environ.get(ep.key_env):
        return f"{ep.key_env} is set in the environment"
    if env_file:
        from dotenv import dotenv_values

        path = Path(env_file).expanduser()
        if not path.is_file():
            return f"{path} does not exist"
        if dotenv_values(path).get(ep.key_env):
            return f"{ep.key_env} is set in {path}"
        return f"{ep.key_env} is not in {path}"
    return f"{ep.key_env} is not set: export it before `lookalike app`, or name a .env file that sets it"


# ---------------------------------------------------------------- training


def training_status(rd: RunDir) -> dict:
    """Steps done and planned, from the resume state, the CSV log and the manifest."""
    from lookalike.evaluate.report import read_losses

    losses = read_losses(rd.train_dir / "logs" / "csv") if rd.train_dir.is_dir() else {}
    manifest = RunDir.read_manifest(rd.train_dir) or {}
    logged = losses.get("train/loss", [])
    return {"step": int(logged[-1][0]) + 1 if logged else 0, "finished": bool(manifest.get("steps")),
            "final_steps": manifest.get("steps"), "started": rd.training_started,
            "loss": logged[-1][1] if logged else None}


def curves_html(rd: RunDir) -> str:
    """The loss and validation curves (the report's training plot) and the progress GIFs, enlarged."""
    from lookalike.evaluate.report import training_section

    if not (rd.train_dir / "logs" / "csv").is_dir():
        return '<p class="note">No training yet.</p>'
    return training_section(rd).replace('<h2 id="training">Training</h2>', "")


def preview_epochs(rd: RunDir) -> list[tuple[int, Path]]:
    from lookalike.train.previews import EPOCH_DIR

    samples = rd.train_dir / "samples"
    if not samples.is_dir():
        return []
    return sorted((int(m.group(1)), d) for d in samples.iterdir() if d.is_dir() and (m := EPOCH_DIR.search(d.name)))


def previews_html(rd: RunDir, epochs: int = 3) -> str:
    """The newest sampling epochs' preview images, newest first, each shown at least 256 pixels wide."""
    from lookalike.evaluate.report import image_url

    found = preview_epochs(rd)
    if not found:
        return '<p class="note">No preview yet: previews are drawn every train.sample_every epochs.</p>'
    out = []
    for epoch, folder in reversed(found[-epochs:]):
        images = sorted(folder.glob("*.png"))
        figures = "".join(f'<figure><img class="preview" src="{image_url(p)}" alt="{html.escape(p.name)}">'
                          f"<figcaption>{html.escape(p.stem)}</figcaption></figure>" for p in images)
        out.append(f'<h4>epoch {epoch}</h4><div class="row previews">{figures}</div>')
    return "".join(out)


def presets() -> list[str]:
    from importlib import resources

    return sorted(p.name.removesuffix(".yaml") for p in resources.files("lookalike.presets").iterdir()
                  if p.name.endswith(".yaml"))


def estimate_line(rd: RunDir, cfg) -> str:
    """The CLI's own plan and estimate for `cfg` on this run: steps, time and GPU memory."""
    from lookalike.data.selection import person_selections
    from lookalike.estimate import training_estimate
    from lookalike.pipeline import _train_plan
    from lookalike.runtime import training_runtime

    photos = sum(len(selection.used) for _, _, selection in person_selections(cfg, rd, refresh=False))
    steps, resume = _train_plan(cfg, rd)
    if not steps:
        return "trained to the end of this recipe: nothing to do (raise the steps or epochs to go on)"
    runtime = training_runtime(cfg)
    gpu = None
    if runtime.device.type == "cuda":
        import torch

        gpu = torch.cuda.get_device_name(runtime.device)
    drawing = ""
    if cfg.ground.count:  # `train` draws the missing grounding images first (the FLUX presets: 40)
        from lookalike.data.ground import missing, plan
        from lookalike.errors import ConfigError
        from lookalike.estimate import drawing_estimate

        try:
            todo = len(missing(rd, plan(cfg, rd)))
        except ConfigError:  # captions not ready yet: all of them are still to draw
            todo = cfg.ground.count
        drawing = f"ground: {drawing_estimate(cfg, todo, runtime.device.type, gpu)}; " if todo else ""
    return (f"{'resume: ' if resume else ''}{photos} photos; {drawing}"
            f"{training_estimate(cfg, steps, runtime.device.type, gpu).line()} on {runtime.device}")


# ---------------------------------------------------------------- results


def results_html(rd: RunDir) -> str:
    """The report's recommendation, metrics table, plots and base-beside-checkpoint gallery."""
    from types import SimpleNamespace

    from lookalike.evaluate.report import gallery_section, metrics_section, recommendation_section
    from lookalike.evaluate.run import BOUND_SETTINGS

    if not rd.eval_metrics.is_file():
        return '<p class="note">No evaluation yet: press Evaluate when training has saved a checkpoint.</p>'
    metrics = json.loads(rd.eval_metrics.read_text())
    cfg = run_config(rd)
    saved = metrics.get("bounds", {})
    bounds = SimpleNamespace(**{k: saved.get(k, getattr(cfg.eval, k)) for k in BOUND_SETTINGS})
    return (recommendation_section(metrics, rd.root) + metrics_section(metrics, bounds, rd.root)
            + gallery_section(rd.eval_metrics.parent, metrics))


def downloads(rd: RunDir) -> list[str]:
    """The LoRA files a user takes away: diffusers and ComfyUI formats, and the recommended checkpoint."""
    from lookalike.evaluate.recommend import run_lora

    files = [p for p in (rd.lora, rd.lora_kohya) if p.is_file()]
    try:
        recommended, _ = run_lora(rd)
        if recommended.is_file() and recommended not in files:
            files.append(recommended)
    except Exception:  # noqa: BLE001 - nothing trained yet
        pass
    return [str(p) for p in files]


def generated(rd: RunDir) -> tuple[list[tuple[str, str]], str]:
    """The newest `generate` folder's images with labels, and its metadata (prompts, seeds, LoRAs)."""
    folder = rd.root / "generate"
    done = sorted((p for p in folder.iterdir() if (p / "manifest.json").is_file()), key=lambda p: p.name) \
        if folder.is_dir() else []
    if not done:
        return [], ""
    last = done[-1]
    manifest = json.loads((last / "manifest.json").read_text())
    images = []
    for name in manifest.get("images", []):
        meta = _png_text(last / name)
        images.append((str(last / name), meta.get("prompt", name)))
    info = {k: manifest.get(k) for k in ("prompts", "seeds", "seconds")}
    info["folder"] = str(last)
    first = _png_text(last / manifest["images"][0]) if manifest.get("images") else {}
    info.update({k: v for k, v in first.items() if k not in ("prompt", "seed")})
    return images, json.dumps(info, indent=1)


def _png_text(path: Path) -> dict:
    from PIL import Image

    try:
        with Image.open(path) as im:
            raw = dict(im.text) if hasattr(im, "text") else {}
    except OSError:
        return {}
    out = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    if "lookalike" in out and isinstance(out["lookalike"], dict):
        out = {**out.pop("lookalike"), **out}
    return out
