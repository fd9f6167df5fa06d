"""`lookalike report RUN`: one self-contained HTML page for a run, RUN/report.html.

Everything a run folder holds, in the order a reader asks: which checkpoint to use and why; the metrics
of every checkpoint against the base (table and plots against the step); the gallery drawn by the
recommended checkpoint beside the base; the two experiments; training (loss curves, progress GIFs); the
dataset (thumbnails, captions, doctor and caption flags). Images are embedded as data URIs and plots
are inline SVG, so the file opens from disk, offline, in any browser. A section whose stage has not
run says which command fills it.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from types import SimpleNamespace

from lookalike.evaluate.recommend import with_fixes
from lookalike.evaluate.run import BOUND_SETTINGS
from lookalike.evaluate.svg import Series, line_plot
from lookalike.rundir import RunDir

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:1200px;padding:0 1rem;color:#222;background:#fafafa}
h1{font-size:1.4rem;margin-bottom:.2rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
h3{font-size:1rem;margin:1rem 0 .3rem} .meta,.note{color:#666;font-size:.9rem}
.rec{border:1px solid;border-radius:6px;padding:.7rem 1rem;margin:1rem 0} .rec ul{margin:.3rem 0 0}
.rec.ok{background:#eef7ee;border-color:#7b7} .rec.none{background:#fdf0e8;border-color:#d96}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0} td,th{border:1px solid #ddd;padding:.25rem .5rem}
th{background:#f0f0f0} td.num{text-align:right;font-variant-numeric:tabular-nums} tr.pick td{background:#eef7ee}
td.bad{color:#b00;font-weight:600} .row{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
figure{margin:0} figcaption{font-size:.8rem;color:#555;max-width:520px}
img.grid{image-rendering:pixelated;max-width:100%;height:auto;border:1px solid #ddd}
img.gif{image-rendering:pixelated;width:192px;border:1px solid #ddd}
.photos{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:.6rem}
.photo{background:#fff;border:1px solid #ddd;border-radius:4px;padding:.3rem;font-size:.75rem}
.photo img{width:100%;image-rendering:pixelated} .flags{color:#b00} .trigger{background:#fff3b0;font-weight:600}
"""

# Counts the images the browser could decode, so a headless browser can confirm the page renders.
_SCRIPT = """
window.addEventListener('load',()=>{const imgs=[...document.querySelectorAll('img')];
const ok=imgs.filter(i=>i.complete&&i.naturalWidth>0).length;
document.body.dataset.images=ok+'/'+imgs.length;});
"""


# ---------------------------------------------------------------- embedding


def embed(source, max_side: int = 1024) -> tuple[str, int]:
    """(data URI, width in pixels) of an image file or PIL image: PNG when it is small (pixel art stays
    crisp), else JPEG scaled so its long side is at most `max_side`."""
    from PIL import Image

    image = Image.open(source) if isinstance(source, (str, Path)) else source
    image = image.convert("RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    small = image.width * image.height <= 512 * 512
    image.save(buf, format="PNG" if small else "JPEG", **({} if small else {"quality": 85}))
    return f"data:image/{'png' if small else 'jpeg'};base64," + base64.b64encode(buf.getvalue()).decode(), image.width


def image_url(source, max_side: int = 1024) -> str:
    """The data URI of `embed`."""
    return embed(source, max_side)[0]


def gif_url(path: Path, max_side: int = 256) -> str:
    """A GIF as a data URI, its frames scaled down to `max_side` when larger (FLUX's 1024² previews)."""
    from PIL import Image, ImageSequence

    with Image.open(path) as gif:
        if max(gif.size) <= max_side:
            data = path.read_bytes()
        else:
            frames = [f.convert("RGB") for f in ImageSequence.Iterator(gif)]
            durations = [f.info.get("duration", 600) for f in ImageSequence.Iterator(gif)]
            for f in frames:
                f.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
            data = buf.getvalue()
    return "data:image/gif;base64," + base64.b64encode(data).decode()


def _img(url: str, cls: str = "grid", alt: str = "", width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return f'<img class="{cls}" alt="{html.escape(alt)}"{size} src="{url}">'


def _figure(source, caption: str, cls: str = "grid", max_side: int = 1024, fit: int = 520) -> str:
    """An embedded image with its caption; small images (the toy world's 64² scenes) shown enlarged,
    up to `fit` pixels wide."""
    url, width = embed(source, max_side)
    shown = min(fit, width * max(1, fit // (2 * width)))
    return f"<figure>{_img(url, cls, caption, shown)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _missing(what: str, command: str) -> str:
    return f'<p class="note">{html.escape(what)} not made yet: run <code>{html.escape(command)}</code>.</p>'


# ---------------------------------------------------------------- sections


def recommendation_section(metrics: dict | None, root: Path) -> str:
    """A green box naming the checkpoint to use and why; an orange one saying none is, why and what to try."""
    if metrics is None:
        return _missing("No evaluation", f"lookalike eval {root}")
    rec = metrics["recommendation"]
    if rec["name"]:
        return (f'<div class="rec ok" id="recommendation">Use <b>{html.escape(rec["name"])}</b>: '
                f"{html.escape(rec['reason'])}.</div>")
    fixes = rec.get("try") or []  # metrics.json of an older lookalike: the reason alone
    finding = rec["reason"].removesuffix(with_fixes("", fixes)) if fixes else rec["reason"]
    items = "".join(f"<li>{html.escape(f)}</li>" for f in fixes)
    return (f'<div class="rec none" id="recommendation"><b>No checkpoint recommended</b>: {html.escape(finding)}.'
            f'{f"<div>What to try:</div><ul>{items}</ul>" if items else ""}</div>')


HEADLINE = (("likeness", "likeness"), ("leakage", "leakage"), ("elsewhere", "person w/o trigger"),
            ("preservation", "preservation"))
BOUND_OF = {"likeness": ("min_likeness", False), "leakage": ("max_leakage", True),
            "elsewhere": ("max_elsewhere", True), "preservation": ("min_preservation", False)}


def metrics_section(metrics: dict | None, bounds, run: Path) -> str:
    """The table base vs every checkpoint (out-of-bounds cells in red), then one plot per headline number."""
    if metrics is None:
        return "<h2>Metrics</h2>" + _missing("No evaluation", f"lookalike eval {run}")
    rows, pick = metrics["checkpoints"], metrics["recommendation"]["name"]
    extra = _extra_columns(metrics)
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in HEADLINE) + "".join(
        f"<th>{html.escape(label)}</th>" for label, _ in extra)
    body = [_table_row("base", metrics["base"]["scores"], metrics["base"]["metrics"], extra, bounds, False)]
    body += [_table_row(r["name"], r["scores"], r["lora"], extra, bounds, r["name"] == pick) for r in rows]
    judge = metrics["judge"]
    note = (f'<p class="note">judge: {html.escape(judge["judge"])}; preservation: {html.escape(judge["preservation"])}; '
            f'{metrics["images"]} images; seeds per prompt: {len(metrics["suite"]["seeds"])}.</p>')
    table = f"<table><tr><th>model</th>{head}</tr>{''.join(body)}</table>"
    return f'<h2 id="metrics">Metrics, base vs LoRA</h2>{table}{note}<div class="row">{_plots(metrics, bounds)}</div>'


def _extra_columns(metrics: dict) -> list[tuple[str, object]]:
    """(label, value of a row's raw metrics) of the columns beside the headline: prompt following and the
    empty prompt where counted, the copy score with held-out photos, and with several people learned each
    one's likeness and confusion (the headline shows the worst of them)."""
    rows, base = metrics["checkpoints"], metrics["base"]["metrics"]
    out = [(k.replace("_", " "), lambda raw, k=k: raw.get(k)) for k in ("prompt_following", "empty") if k in base]
    if any(r["lora"].get("copy") is not None for r in rows):  # with held-out photos
        out.append(("copy", lambda raw: raw.get("copy")))
    if "people" in base:
        out.append((f"likeness of {metrics['judge'].get('main', 'the person')}", lambda raw: raw.get("likeness")))
        out += [(f"likeness of {name}", lambda raw, n=name: raw.get("people", {}).get(n, {}).get("likeness"))
                for name in base["people"]]
        out += [("both found", lambda raw: raw.get("likeness_both")), ("confusion", lambda raw: raw.get("confusion"))]
    return out


def _table_row(name, scores, raw, extra, bounds, pick: bool) -> str:
    cells = []
    for key, _ in HEADLINE:
        bad = False
        if key in BOUND_OF and scores[key] is not None and name != "base":
            setting, ceiling = BOUND_OF[key]
            limit = getattr(bounds, setting)
            bad = scores[key] > limit if ceiling else scores[key] < limit
        cells.append(f'<td class="num{" bad" if bad else ""}">{_num(scores[key])}</td>')
    cells += [f'<td class="num">{_num(value(raw))}</td>' for _, value in extra]
    return f'<tr{" class=pick" if pick else ""}><td>{html.escape(name)}</td>{"".join(cells)}</tr>'


def _plots(metrics: dict, bounds) -> str:
    """One plot per headline number against the step (the base as a dashed line, the bound dotted), and
    prompt following where the judge counts it (the toy world)."""
    rows, base = metrics["checkpoints"], metrics["base"]
    steps = [r["step"] for r in rows]
    panels = [(label, [(r["step"], r["scores"][key]) for r in rows], base["scores"][key],
               [(getattr(bounds, BOUND_OF[key][0]), "bound")] if key in BOUND_OF else []) for key, label in HEADLINE]
    if "prompt_following" in base["metrics"]:
        panels.append(("prompt following", [(r["step"], r["lora"]["prompt_following"]) for r in rows],
                       base["metrics"]["prompt_following"], []))
    out = []
    for label, points, base_value, hlines in panels:
        points = [(x, y) for x, y in points if y is not None]
        series = [Series("LoRA", points)]
        if base_value is not None and steps:
            series.append(Series("base", [(min(steps), base_value), (max(steps), base_value)], "#555", dash=True,
                                 dots=False))
        out.append(line_plot(series, title=label, x_label="step", y_range=(0, 1), hlines=hlines, width=220, height=200,
                             x_range=(min(steps), max(steps)) if steps else None))
    return "".join(out)


def gallery_section(folder: Path, metrics: dict | None) -> str:
    """Each suite group's grid: base beside the recommended (else the last) checkpoint."""
    if metrics is None or not metrics["checkpoints"]:
        return ""
    name = metrics["recommendation"]["name"] or metrics["checkpoints"][-1]["name"]
    shown = name if metrics["recommendation"]["name"] else f"{name} (the last; none is recommended)"
    figures = []
    for group in metrics["suite"]["groups"]:
        pair = [(folder / m / f"{group}-grid.png", f"{group} prompts, {m}") for m in ("base", name)]
        figures += [_figure(p, c) for p, c in pair if p.is_file()]
    return f'<h2 id="gallery">Gallery: {html.escape(shown)} beside the base</h2><div class="row">{"".join(figures)}</div>'


def experiments_section(root: Path) -> str:
    parts = ['<h2 id="experiments">Experiments</h2>']
    empty = _read_json(root / "experiments" / "empty" / "result.json")
    if empty is None:
        parts.append(_missing("The empty-prompt experiment", f"lookalike experiment empty {root}"))
    else:
        folder = root / "experiments" / "empty"
        parts.append(f"<h3>The empty prompt ({empty['checkpoint']}, {len(empty['seeds'])} seeds)</h3><p>The person is "
                     f"in <b>{_num(empty['share_lora'])}</b> of the LoRA's images of the empty prompt "
                     f"(base: {_num(empty['share_base'])}).</p><div class=row>"
                     + _figure(folder / "lora-grid.png", "LoRA, empty prompt")
                     + _figure(folder / "base-grid.png", "base, empty prompt") + "</div>")
    replay = _read_json(root / "experiments" / "replay" / "result.json")
    if replay is None:
        parts.append(_missing("The replay experiment", f"lookalike experiment replay {root}"))
    else:
        parts.append(_replay_html(replay, root / "experiments" / "replay"))
    return "".join(parts)


def _replay_html(replay: dict, folder: Path) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(r['photo'])}</td><td>{html.escape(r['caption'])}</td><td>{'yes' if r['found'] else 'no'}"
        f"</td><td class=num>{r['others']}</td><td class='num{' bad' if r['replaced'] else ''}'>{r['replaced']}</td></tr>"
        for r in replay["rows"])
    return (f"<h3>Replaying the training captions ({replay['checkpoint']}, seed {replay['seed']})</h3>"
            f"<p>The person is in <b>{_num(replay['likeness'])}</b> of the {replay['photos']} redrawn captions "
            f"(found by the judge in {_num(replay['found_in_photos'])} of the photos themselves); of the "
            f"{replay['others']} other people drawn, {replay['replaced']} look like the person (identity "
            f"replacement {_num(replay['replacement'])}).</p>"
            + _figure(folder / "pairs.png", "each photo (left of each pair) beside its caption redrawn (right)",
                      max_side=2048, fit=1150)
            + f"<details><summary>per photo</summary><table><tr><th>photo</th><th>caption</th><th>person</th>"
              f"<th>others</th><th>replaced</th></tr>{rows}</table></details>")


def read_losses(logs: Path) -> dict[str, list[tuple[float, float]]]:
    """{column: [(step, value)]} from every attempt's metrics.csv; a later attempt (a resume) wins a step.
    Per-epoch columns repeat their value on the following steps: only changes are kept."""
    series: dict[str, dict[float, float]] = {}
    for path in sorted(logs.glob("attempt-*/metrics.csv"), key=lambda p: int(p.parent.name.split("-")[1])):
        with path.open() as f:
            for row in csv.DictReader(f):
                for key in ("train/loss", "val/train_fixed_loss", "val/loss"):
                    if row.get(key) and row.get("step"):
                        series.setdefault(key, {})[float(row["step"])] = float(row[key])
    out = {}
    for key, points in series.items():
        ordered = sorted(points.items())
        if key.startswith("val/"):
            ordered = [p for i, p in enumerate(ordered) if i == 0 or p[1] != ordered[i - 1][1]]
        out[key] = ordered
    return out


def moving_average(points: list[tuple[float, float]], window: int) -> list[tuple[float, float]]:
    """Trailing mean of the y values over `window` points (the first points average what there is)."""
    ys = [y for _, y in points]
    return [(x, sum(ys[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1))) for i, (x, _) in enumerate(points)]


def training_section(run) -> str:
    train = run.train_dir
    if not train.is_dir():
        return '<h2 id="training">Training</h2>' + _missing("No training", f"lookalike train {run.root}")
    losses = read_losses(train / "logs" / "csv")
    raw = losses.get("train/loss", [])
    window = max(1, len(raw) // 20)
    series = [Series("train loss", raw, "#9bbbd9", dots=False, opacity=0.6),
              Series(f"mean of {window} steps", moving_average(raw, window), "#1f77b4", dots=False),
              Series("fixed-noise loss (training photos)", losses.get("val/train_fixed_loss", []), "#d62728"),
              Series("held-out photos", losses.get("val/loss", []), "#2ca02c")]
    plot = line_plot(series, title="loss", x_label="step", width=560, height=280)
    gifs = "".join(f"<figure>{_img(gif_url(p), 'gif', p.stem)}<figcaption>{html.escape(p.stem.removeprefix('progress-'))}"
                   "</figcaption></figure>" for p in sorted(train.glob("progress-*.gif")))
    return f'<h2 id="training">Training</h2><div class="row">{plot}</div><h3>Progress</h3><div class="row">{gifs}</div>'


def dataset_section(cfg, run) -> str:
    """Every training photo with its caption (trigger highlighted) and the doctor's and captioner's flags."""
    from lookalike.caption.review import thumbnail_url
    from lookalike.errors import LookalikeError
    from lookalike.evaluate.suite import training_photos

    try:
        photos = training_photos(cfg, run)
    except (LookalikeError, OSError) as e:  # a moved photo folder should not stop the report
        return f'<h2 id="dataset">Dataset</h2><p class="note">photos not found: {html.escape(str(e))}</p>'
    flags = _flags(run)
    trigger = html.escape(cfg.dataset.trigger)
    cards = []
    for path, caption in photos:
        thumb = thumbnail_url(path) if path.is_file() else None  # upright, as the caption review shows it
        text = html.escape(caption).replace(trigger, f'<span class="trigger">{trigger}</span>')
        items = "".join(f"<div class=flags>{html.escape(f)}</div>" for f in flags.get(path.name, []))
        cards.append(f'<div class="photo">{_img(thumb, "", path.name) if thumb else ""}<b>{html.escape(path.name)}</b>'
                     f"<div>{text}</div>{items}</div>")
    return f'<h2 id="dataset">Dataset ({len(photos)} photos)</h2><div class="photos">{"".join(cards)}</div>'


def _flags(run) -> dict[str, list[str]]:
    """{photo name: flags} from RUN/ingest/doctor.json and RUN/caption/captions.jsonl, when those ran."""
    out: dict[str, list[str]] = {}
    doctor = _read_json(run.doctor_record) or {}
    for p in doctor.get("photos", []):
        out.setdefault(p["file"], []).extend(f"doctor: {f}" for f in p.get("flags", []))
    captions = run.captions_record
    if captions.is_file():
        for line in captions.read_text().splitlines():
            record = json.loads(line) if line.strip() else {}
            if record.get("flags"):
                out.setdefault(record["photo"], []).extend(f"caption: {f}" for f in record["flags"])
    return out


def write_report(cfg, run) -> Path:
    """RUN/report.html from whatever RUN holds now."""
    from lookalike.caption.store import write_text_atomic

    root = run.root
    metrics = _read_json(run.eval_metrics)
    # the bounds the recommendation was made with (eval may have had --set overrides), else the config's
    saved = (metrics or {}).get("bounds", {})
    bounds = SimpleNamespace(**{k: saved.get(k, getattr(cfg.eval, k)) for k in BOUND_SETTINGS})
    manifest = RunDir.read_manifest(run.train_dir) or {}
    meta = (f"model {html.escape(cfg.model.source)} &middot; trigger {html.escape(cfg.dataset.trigger)} &middot; "
            f"{manifest.get('steps', '?')} training steps &middot; LoRA rank {cfg.lora.rank}, alpha {cfg.lora.alpha:g}")
    body = [f"<h1>lookalike: {html.escape(root.resolve().name)}</h1><div class=meta>{meta}</div>",
            recommendation_section(metrics, root), metrics_section(metrics, bounds, root),
            gallery_section(run.eval_metrics.parent, metrics), experiments_section(root), training_section(run),
            dataset_section(cfg, run)]
    page = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>lookalike report: {html.escape(root.resolve().name)}</title><style>{_STYLE}</style>"
            f"<script>{_SCRIPT}</script></head><body>{''.join(body)}</body></html>\n")
    write_text_atomic(run.report, page)
    return run.report
