"""The ingest stage: run the doctor over dataset.photos and hand its record to later stages.

    RUN/ingest/doctor.json    one record per file (usable?, why not, size, hashes, faces, flags) + summary
    RUN/ingest/manifest.json  when, which folder, which settings

The caption review page and the evaluation report read doctor.json; nothing is copied or deleted
from the photo folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from lookalike.ingest.doctor import DoctorReport, PhotoCheck, examine, resolve_reference
from lookalike.rundir import RunDir, write_json_atomic

STAGE = "ingest"
RECORD = "doctor.json"


def ingest_stage(cfg, rd: RunDir, on_photo: Callable[[PhotoCheck], None] | None = None) -> tuple[DoctorReport, Path]:
    """Examine cfg.dataset.photos; write RUN/ingest/doctor.json and the manifest. Returns the report and its path."""
    from lookalike.config.loading import flat_settings

    started = time.time()
    report = examine(cfg.dataset.photos, cfg, resolve_reference(cfg), on_photo=on_photo)
    folder = rd.stage(STAGE)
    path = folder / RECORD
    write_json_atomic(path, report.to_json())
    rd.write_manifest(folder, STAGE, photos=cfg.dataset.photos, record=RECORD, summary=report.summary(),
                      settings=flat_settings(cfg, ("doctor", "dataset")), seconds=round(time.time() - started, 2))
    return report, path


def read_record(rd: RunDir) -> dict | None:
    """RUN/ingest/doctor.json as written, or None when ingest has not run."""
    import json

    path = rd.root / STAGE / RECORD
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
        table.add_row(escape(p.file), f"{p.width}x{p.height}", str(p.faces), person, f"{p.sharpness:.0f}",
                      f"[{style}]{escape(problems)}[/{style}]" if problems else "")
    console.print(table)
    s = report.summary()
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(s["flags"].items())) or "none"
    console.print(f"{s['usable']} of {s['files']} files usable, {s['rejected']} skipped; the person ({s['person_from']}) "
                  f"found in {s['person_found']}; flags: {kinds}")
