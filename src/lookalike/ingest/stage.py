"""The ingest stage: run the doctor over dataset.photos and hand its record to later stages.

    RUN/ingest/doctor.json    one record per file (usable?, why not, size, hashes, faces, flags, left out
                              by default and why) + summary, and the photo chosen as the reference
    RUN/ingest/manifest.json  when, which folder, which settings, and the fingerprint of what it read
    RUN/photos.yaml           the user's include / exclude lists (a commented template; never overwritten)

Later stages train on the doctor's selection (lookalike.data.selection); the caption review page
and the evaluation report show its flags. Nothing is copied or deleted from the photo folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from lookalike.ingest.doctor import DoctorReport, PhotoCheck, examine, resolve_reference
from lookalike.rundir import RunDir, write_json_atomic

STAGE = "ingest"
RECORD = "doctor.json"


def inputs_fingerprint(cfg) -> str:
    """What the doctor's record depends on: every file of the photo folder (name, size, modification
    time), the reference photo and the settings it reads. Another value means the record is stale."""
    import hashlib

    from lookalike.config.loading import flat_settings
    from lookalike.ingest.doctor import candidate_files, check_folder

    folder = check_folder(cfg.dataset.photos)
    files = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in candidate_files(folder)]
    reference = resolve_reference(cfg)
    ref = (str(reference), reference.stat().st_size, reference.stat().st_mtime_ns) if reference else None
    settings = flat_settings(cfg, ("doctor", "dataset.resolution", "dataset.aspect"))
    return hashlib.sha256(repr((files, ref, sorted(settings.items()))).encode()).hexdigest()[:16]


def is_current(cfg, rd: RunDir) -> bool:
    """Whether RUN/ingest/doctor.json was made from the photo folder and settings as they are now."""
    manifest = RunDir.read_manifest(rd.doctor_record.parent)
    return (rd.doctor_record.is_file() and manifest is not None
            and manifest.get("photos") == cfg.dataset.photos and manifest.get("inputs") == inputs_fingerprint(cfg))


def ingest_stage(cfg, rd: RunDir, on_photo: Callable[[PhotoCheck], None] | None = None) -> tuple[DoctorReport, Path]:
    """Examine cfg.dataset.photos; write RUN/ingest/doctor.json, the manifest and (once) RUN/photos.yaml.
    Returns the report and the record's path."""
    from lookalike.config.loading import flat_settings
    from lookalike.data.selection import write_lists_template
    from lookalike.rundir import ensure_writable

    started = time.time()
    ensure_writable(rd.root, "the run folder", "choose a run folder you can write to (--run)")
    fingerprint = inputs_fingerprint(cfg)
    report = examine(cfg.dataset.photos, cfg, resolve_reference(cfg), on_photo=on_photo)
    folder = rd.stage(STAGE)
    path = rd.doctor_record
    write_json_atomic(path, report.to_json())
    write_lists_template(rd)
    rd.write_manifest(folder, STAGE, photos=cfg.dataset.photos, record=RECORD, summary=report.summary(),
                      settings=flat_settings(cfg, ("doctor", "dataset")), inputs=fingerprint,
                      seconds=round(time.time() - started, 2))
    return report, path


def read_record(rd: RunDir) -> dict | None:
    """RUN/ingest/doctor.json as written, or None when ingest has not run."""
    import json

    path = rd.doctor_record
    return json.loads(path.read_text()) if path.is_file() else None


def print_report(report: DoctorReport, console) -> None:
    """The doctor's table: one row per file, problems in the last column, then the summary."""
    from rich.markup import escape
    from rich.table import Table

    table = Table("photo", "size", "faces", "person", "sharp", "problems", title=f"dataset doctor: {report.folder}")
    for p in report.photos:
        if not p.usable:
            table.add_row(escape(p.file), "-", "-", "-", "-", f"[red]skipped: {escape(p.reason or '')}[/red]")
            continue
        person = "-" if p.person is None else (f"yes ({p.position})" if p.person else "[yellow]no[/yellow]")
        problems = "; ".join(p.flags + p.notes) if p.flags else "; ".join(p.notes)
        style = "yellow" if p.flags else "dim"
        if p.leave_out:
            problems, style = f"left out: {'; '.join(p.flags)}", "red"
        table.add_row(escape(p.file), f"{p.width}x{p.height}", str(p.faces), person, f"{p.sharpness:.0f}",
                      f"[{style}]{escape(problems)}[/{style}]" if problems else "")
    console.print(table)
    s = report.summary()
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(s["flags"].items())) or "none"
    console.print(f"{s['usable']} of {s['files']} files usable, {s['rejected']} skipped; the person ({s['person_from']}) "
                  f"found in {s['person_found']}; flags: {kinds}")
    if not report.faces_checked:
        console.print(f"faces found in fewer than half of the {s['usable']} usable photos (drawings, tiny or "
                      "faraway faces): no photo is left out on face grounds")
    if s["small"]:
        worst = max(p.enlarged for p in report.photos if p.enlarged)
        console.print(f"{len(s['small'])} photo(s) smaller than the training size are enlarged (up to {worst:.1f}x): "
                      f"{escape(', '.join(s['small'][:8]))}{' ...' if len(s['small']) > 8 else ''}")
