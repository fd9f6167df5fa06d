"""The captions page: every photo with its caption and flags on one self-contained HTML file.

Thumbnails are embedded as data URLs, so the file opens from disk, offline, in any browser, and can
be mailed to someone. The trigger word is highlighted; flagged photos come first.
"""

from __future__ import annotations

import html
from pathlib import Path

THUMB_SIDE = 256

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#fafafa;color:#222}
h1{font-size:1.3rem;margin:0 0 .3rem} .meta{color:#555;margin-bottom:1rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:1rem}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6rem}
.card.flagged{border-color:#d33;box-shadow:0 0 0 1px #d33}
.card img{width:100%;height:200px;object-fit:contain;background:#eee;border-radius:4px}
.name{font-weight:600;font-size:.85rem;margin:.3rem 0} .source{color:#777;font-weight:400}
.caption{font-size:.9rem;line-height:1.35} .trigger{background:#fff3b0;font-weight:600}
.flags{margin:.4rem 0 0;padding-left:1.1rem;color:#b00;font-size:.8rem} .doctor{color:#a60}
.missing{color:#999;font-style:italic}
"""

# Counts the thumbnails the browser could decode, so a headless browser can confirm the page renders.
_SCRIPT = """
window.addEventListener('load',()=>{const imgs=[...document.querySelectorAll('img')];
const ok=imgs.filter(i=>i.complete&&i.naturalWidth>0).length;
document.body.dataset.thumbnails=ok+'/'+imgs.length;});
"""


def thumbnail_url(path: Path) -> str | None:
    """A small JPEG data URL of the upright photo, or None when it cannot be decoded."""
    from lookalike.caption.prompt import data_url, jpeg_for_request
    from lookalike.ingest.decode import PhotoRejected, decode

    try:
        image = decode(path, draft_side=THUMB_SIDE).image
    except PhotoRejected:
        return None
    return data_url(jpeg_for_request(image, THUMB_SIDE, 80)[0])


def _caption_html(caption: str | None, trigger: str) -> str:
    if not caption:
        return '<span class="missing">no caption</span>'
    return html.escape(caption).replace(html.escape(trigger), f'<span class="trigger">{html.escape(trigger)}</span>')


def write_review(path: Path, photos: list[Path], records: list, doctor: dict | None, report, trigger: str) -> Path:
    """Write the page to `path`; `doctor` is RUN/ingest/doctor.json when ingest ran (its flags are shown too)."""
    doctor_flags = {p["file"]: p["flags"] + ([f"skipped: {p['reason']}"] if p.get("reason") else [])
                    for p in (doctor or {}).get("photos", [])}
    cards = []
    for photo, record in sorted(zip(photos, records), key=lambda pr: (not (pr[1].flags or pr[1].caption is None), pr[0].name)):
        flags = record.flags + ([] if record.caption else ["no caption"] if not record.flags else [])
        extra = doctor_flags.get(photo.name, [])
        thumb = thumbnail_url(photo)
        image = f'<img alt="{html.escape(photo.name)}" src="{thumb}">' if thumb else '<div class="missing">cannot be shown</div>'
        items = "".join(f"<li>{html.escape(f)}</li>" for f in flags)
        items += "".join(f'<li class="doctor">doctor: {html.escape(f)}</li>' for f in extra)
        cls = "card flagged" if flags else "card"
        cards.append(
            f'<div class="{cls}" data-photo="{html.escape(photo.name)}">{image}'
            f'<div class="name">{html.escape(photo.name)} <span class="source">{html.escape(record.source or "")}</span></div>'
            f'<div class="caption">{_caption_html(record.caption, trigger)}</div>'
            + (f'<ul class="flags">{items}</ul>' if items else "") + "</div>"
        )
    ep = report.endpoint
    flagged = sum(1 for r in records if r.flags or r.caption is None)
    usage = report.usage
    meta = (f"{len(photos)} photos, {flagged} flagged &middot; {html.escape(ep.model)} at {html.escape(ep.base_url)} "
            f"&middot; {report.requests} requests this run, {usage['prompt_tokens']} input and "
            f"{usage['completion_tokens']} output tokens")
    page = (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>captions: {len(photos)} photos, {flagged} flagged</title><style>{_STYLE}</style>"
        f"<script>{_SCRIPT}</script></head><body>"
        f"<h1>Captions for {html.escape(trigger)}</h1><div class=\"meta\">{meta}</div>"
        f"<div class=\"grid\">{''.join(cards)}</div></body></html>\n"
    )
    from lookalike.caption.store import write_text_atomic

    write_text_atomic(path, page)
    return path
