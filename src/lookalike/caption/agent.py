"""The captioning agent: every photo of dataset.photos gets a caption, or a flag saying why not.

For each photo the agent decides, from the files alone, whether a request is needed at all:

    .txt beside the photo, written by us, same request key   -> nothing to do (cached)
    .txt beside the photo, not what we wrote                  -> the user's caption, used as it is
    no .txt, a record with the same request key               -> the .txt is restored from the record
    otherwise                                                 -> ask the model

Only what needs a request needs the reference photo, an API key and the endpoint: a folder whose
photos all have captions is settled without them. Before the first request the folders written to
are checked, then the endpoint. Requests run `caption.concurrency` at a time (see `pool`: Ctrl-C
stops sending at once and keeps every answer received). The `openai` SDK retries 429, 5xx and
timeouts (`caption.retries`, honouring Retry-After); the agent re-asks, stating the violation, when a
reply breaks a rule or is not valid JSON (`caption.reasks`), then repairs what is safe or flags the
photo. A wrong key, an unknown model or a dead endpoint stops the run with a message naming the
setting; captions already received stay on disk.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lookalike.caption.ask import AskContext, EndpointError, caption_photo, check_endpoint, make_client
from lookalike.caption.pool import Presses, run_pool
from lookalike.caption.prompt import (
    OUTPUT_TOKENS_GUESS, data_url, image_tokens, jpeg_for_request, references_sha, request_key, system_prompt,
    text_tokens,
)
from lookalike.caption.providers import Endpoint, Redactor, api_key, endpoint
from lookalike.caption.store import EDITED, EXISTING, MODEL, CaptionStore, Record, caption_path, text_sha
from lookalike.data.photos import IMAGE_SUFFIXES, has_trigger
from lookalike.errors import ConfigError, Interrupted
from lookalike.rundir import RunDir, ensure_writable

STAGE = "caption"
RECORDS = "captions.jsonl"
REVIEW = "review.html"
RESUME_HINT = "run the same command again: it asks only for the photos with no caption"


@dataclass
class Job:
    """One photo and the key of the request that would caption it."""

    path: Path
    sha256: str
    key: str | None  # None: no reference photo to key a request by, so a caption made under any key is kept
    action: str = "request"  # request, cached, restore, user


@dataclass
class CaptionReport:
    folder: Path
    endpoint: Endpoint
    actions: dict[str, int]  # how many photos were cached, restored, the user's, requested
    records: list[Record] = field(default_factory=list)
    requests: int = 0  # chat requests sent this run (re-asks included)
    usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    estimate: dict | None = None  # --dry-run: requests, tokens and cost
    seconds: float = 0.0  # the whole stage
    request_seconds: float = 0.0  # from the first request sent to the last reply
    review: Path | None = None
    answered: list[str] = field(default_factory=list)  # photos whose answer arrived this run (stored as it came)
    interrupted: bool = False  # Ctrl-C stopped the requests

    @property
    def flagged(self) -> list[Record]:
        return [r for r in self.records if r.flags or r.caption is None]


# ---------------------------------------------------------------- deciding what to do


def photo_files(cfg, rd: RunDir) -> list[Path]:
    """The photos to caption: those that will train (the doctor's selection with RUN/photos.yaml, when
    `lookalike ingest` has run; else every image of the folder less photos.yaml's `exclude:`). A photo
    left out is never paid for."""
    from lookalike.data.selection import current_selection
    from lookalike.ingest.doctor import candidate_files, check_folder

    folder = Path(cfg.dataset.photos).expanduser()
    selection = current_selection(cfg, rd, refresh=False)
    if selection.doctor:
        files = [folder / name for name in selection.used]
    else:
        files = [p for p in candidate_files(check_folder(folder))
                 if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in selection.left_out]
    selection.announce(rd, "caption")
    if not files:
        raise ConfigError(f"dataset.photos = {str(folder)!r} holds no photos to caption "
                          f"({', '.join(sorted(IMAGE_SUFFIXES))}, less those left out in {rd.selection_path}); "
                          "point it at the folder of the person's photos")
    return files


def decide(job: Job, record: Record | None) -> str:
    """What a photo needs, from its .txt and its record (see the module docstring)."""
    txt = caption_path(job.path)
    same_key = record is not None and job.key in (None, record.key)
    if txt.is_file():
        ours = (record is not None and record.source == MODEL
                and record.txt_sha256 == text_sha(txt.read_text(encoding="utf-8", errors="replace")))
        if ours:
            return "cached" if same_key else "request"
        return "user"
    if same_key and record.source == MODEL and record.caption is not None:
        return "restore"
    if same_key and record.source == MODEL and record.final:
        return "cached"  # answered before (a refusal, a skipped file): its flag stands, nothing is paid again
    return "request"  # includes a user's caption whose file was deleted: "delete the file to have one made"


def user_record(job: Job, record: Record | None, trigger: str) -> Record:
    """The record of a caption the user wrote (or edited): used as it is, trigger-checked."""
    from lookalike.data.photos import read_caption

    path = caption_path(job.path)
    text = path.read_text(encoding="utf-8", errors="replace")  # hashed to notice later edits
    caption = read_caption(path)  # not UTF-8: read as Windows-1252, with a warning naming the file
    source = EDITED if record is not None and record.source in (MODEL, EDITED) else EXISTING
    flags = [] if has_trigger(caption, trigger) else [f"no trigger: the caption does not name {trigger}; add it by hand"]
    if not caption:
        flags = ["empty caption file: write a caption or delete the file to have one made"]
    return Record(job.path.name, caption or None, source, key=record.key if record else None, flags=flags,
                  txt_sha256=text_sha(text))


# ---------------------------------------------------------------- the stage


def caption_stage(cfg, rd: RunDir, env_file: Path | None = None, dry_run: bool = False,
                  on_photo: Callable[[Record], None] | None = None, resume_hint: str = RESUME_HINT) -> CaptionReport:
    """Caption every photo of cfg.dataset.photos that needs it; write records, .txt files and the review page.

    Ctrl-C while requests are out stops sending, keeps every answer received, writes the records, the
    review page and the manifest, then raises `Interrupted`; its message ends with `resume_hint`, how
    the caller's user continues (a caller such as `fit` names its own command).
    """
    from lookalike.ingest.doctor import reference_face

    started = time.time()
    cc, trigger = cfg.caption, cfg.dataset.trigger
    if cfg.dataset.photos is None:
        raise ConfigError("dataset.photos is not set: give the folder of photos, e.g. --photos ~/photos/arthur")
    photos = Path(cfg.dataset.photos)
    files = photo_files(cfg, rd)
    reference, reference_problem = _reference(cfg, rd)
    others, others_problem = _other_references(cfg)
    ep = endpoint(cc)
    system = system_prompt(cc.rules, trigger, [p.trigger for p in cfg.dataset.people])
    folder = rd.root / STAGE
    store = CaptionStore(folder / RECORDS)
    jobs = _jobs(files, reference, ep, system, cc, store, [path for _, path in others])
    actions = {a: sum(j.action == a for j in jobs) for a in ("cached", "restore", "user", "request")}
    report = CaptionReport(folder, ep, actions)
    todo = [j for j in jobs if j.action == "request"]
    if todo:  # only what must be asked needs the reference photo(s)
        if reference_problem is not None or others_problem is not None:
            raise reference_problem or others_problem
        reference_face(reference, cfg)  # a reference without a face would make every caption a guess
        for k, (who, path) in enumerate(others):
            reference_face(path, cfg, setting=f"dataset.people[{k}].reference", who=who)
    if dry_run:
        report.estimate = estimate(todo, [reference, *(path for _, path in others)], system, ep, cc)
        report.records = [store.get(j.path.name) or Record(j.path.name) for j in jobs]
        return report

    _check_writable(folder, photos, photos_too=bool(todo or actions["restore"]))
    rd.stage(STAGE)
    for job in jobs:  # no request needed: settle these first
        record = store.get(job.path.name)
        if job.action == "user":
            store.put(user_record(job, record, trigger))
        elif job.action == "restore":
            store.put(record, caption_path(job.path))
    if not todo:
        _finish(cfg, rd, report, jobs, store, started)
        return report
    presses = _request(cfg, rd, report, jobs, todo, store, system, [(trigger, reference), *others], env_file,
                       on_photo, started)
    if presses.count:
        raise _interrupted(report, todo, store, presses, resume_hint)
    got = [r for r in report.records if r.photo in {j.path.name for j in todo}]
    if got and not any(r.caption for r in got):
        raise EndpointError(
            f"{ep.base_url} gave no usable caption for any of the {len(got)} photo(s) sent; the first: {got[0].photo}: "
            f"{'; '.join(got[0].flags)}. Check that caption.base_url is a chat-completions endpoint and caption.model "
            f"= {ep.model!r} takes images (records and the review page are in {report.folder})"
        )
    return report


def person_view(cfg, rd: RunDir, k: int):
    """(config, run folder) in which person k of `dataset.everyone()` is the one captioned (k = 0: `cfg`, `rd`).

    For one of dataset.people: their trigger, photos, class phrase and reference become dataset.* and
    caption.reference, everyone else (the main person with their reference) dataset.people, so each request
    carries every person's reference, theirs first; the records and review page go to RUN/people/<trigger>/.
    Every reference must be set: theirs is sent with each request, the others' beside it.
    """
    if k == 0:
        return cfg, rd
    main, problem = _reference(cfg, rd)
    if problem is not None:
        raise problem
    _, problem = _other_references(cfg)
    if problem is not None:
        raise problem
    return cfg.as_person(k, str(main)), rd.person(cfg.dataset.people[k - 1].trigger)


def people_views(cfg, rd: RunDir) -> list:
    """For `fit`: `person_view` of each of dataset.people, whose folders the caption stage then sees like the
    main one. Without every reference set, none: their folders must then be captioned already (by hand, or
    an earlier `caption --person`), else the missing reference is refused naming its setting."""
    if not cfg.dataset.people:
        return []
    try:
        return [person_view(cfg, rd, k) for k in range(1, len(cfg.dataset.people) + 1)]
    except ConfigError as missing:
        for k, person in enumerate(cfg.dataset.people, start=1):
            folder = Path(person.photos).expanduser()
            bare = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                          and not caption_path(p).is_file()) if folder.is_dir() else []
            if bare:
                raise ConfigError(f"{missing} ({cfg.dataset.setting(k, 'photos')} has {len(bare)} photo(s) without a "
                                  f"caption to ask for, e.g. {bare[0]})") from None
        return []


def _reference(cfg, rd: RunDir) -> tuple[Path | None, ConfigError | None]:
    """caption.reference as a file, else the photo the dataset doctor chose (the clearest photo of the
    person alone), or why there is none (an error only once something must be asked)."""
    from lookalike.ingest.doctor import resolve_reference
    from lookalike.ingest.stage import read_record

    try:
        reference = resolve_reference(cfg)
    except ConfigError as e:
        return None, e
    if reference is None:
        record = read_record(rd) or {}
        chosen = record.get("reference")
        if chosen and record.get("folder") == str(Path(cfg.dataset.photos).expanduser()) and Path(chosen).is_file():
            return Path(chosen), None
        found = "run `lookalike ingest` to have one chosen, or " if not record else "the doctor found no clear photo " \
            "of the person alone; "
        return None, ConfigError(f"caption.reference is not set: {found}name a clear photo of the person, sent with "
                                 "every request (e.g. --reference selfie.jpg, a file or one of the photos)")
    return reference, None


def _other_references(cfg) -> tuple[list[tuple[str, Path]], ConfigError | None]:
    """(trigger, reference photo) of each of dataset.people, or why one is missing (an error only once
    something must be asked)."""
    out = []
    for k, person in enumerate(cfg.dataset.people):
        setting = f"dataset.people[{k}].reference"
        if not person.reference:
            return out, ConfigError(f"{setting} is not set: name a clear photo of {person.trigger}'s face (a file); "
                                    "it is sent beside caption.reference with every request, so the caption model "
                                    "can tell the people apart")
        path = Path(person.reference).expanduser()
        if not path.is_file():
            return out, ConfigError(f"{setting} = {person.reference!r} is not a file; name a clear photo of "
                                    f"{person.trigger}'s face")
        out.append((person.trigger, path))
    return out, None


def _jobs(files: list[Path], reference: Path | None, ep: Endpoint, system: str, cc, store: CaptionStore,
          others: list[Path] = ()) -> list[Job]:
    """One job per photo, with its request key and what it needs (`decide`); `others`: more people's
    reference photos, sent (and keyed) after the person's own."""
    ref_sha = None
    if reference is not None:
        ref_sha = references_sha([hashlib.sha256(p.read_bytes()).hexdigest() for p in [reference, *others]])
    jobs = []
    for path in files:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        key = request_key(sha, ref_sha, ep.base_url, ep.model, system, cc) if ref_sha else None
        job = Job(path, sha, key)
        job.action = decide(job, store.get(path.name))
        jobs.append(job)
    return jobs


def _check_writable(folder: Path, photos: Path, photos_too: bool) -> None:
    """Refuse, before anything is paid for, a folder the captions cannot be written to."""
    ensure_writable(folder, "the run's caption folder", "captions.jsonl and the review page are written there: make "
                    "it writable, or give a run folder you can write to")
    if photos_too:
        ensure_writable(photos, "dataset.photos", "each caption is written beside its photo as a .txt: make the "
                        "folder writable, or copy the photos to a writable folder and point dataset.photos there "
                        "(--photos DIR)")


def _request(cfg, rd: RunDir, report: CaptionReport, jobs: list[Job], todo: list[Job], store: CaptionStore,
             system: str, references: list[tuple[str, Path]], env_file: Path | None, on_photo,
             started: float) -> Presses:
    """Check the endpoint, caption `todo` with the rules `system` (`references`: (trigger, photo) of the
    person, then of each of dataset.people), then write the review page and manifest however it ended."""
    cc, ep = cfg.caption, report.endpoint
    key = api_key(ep, env_file)
    stop = threading.Event()
    ctx = AskContext(make_client(ep, cc, key, stop), ep, cc, cfg.dataset.trigger, system, "", Redactor(key), stop)
    sending = time.time()
    presses = Presses()
    try:
        check_endpoint(ctx)
        urls = []
        for who, path in references:
            jpeg, _ = jpeg_for_request(_decode_reference(path, cc.image_side), cc.image_side, cc.jpeg_quality)
            urls.append((who, data_url(jpeg)))
        ctx.reference_url, ctx.others = urls[0][1], urls[1:]
        presses = _run_jobs(ctx, todo, store, report, on_photo)
    except KeyboardInterrupt:  # Ctrl-C before the pool took it over (checking the endpoint): nothing was sent
        presses = Presses(count=1)
    finally:  # a run stopped by the endpoint or by Ctrl-C still leaves its review page and manifest
        report.request_seconds = round(time.time() - sending, 2)
        report.requests = ctx.sent
        report.interrupted = presses.count > 0
        _finish(cfg, rd, report, jobs, store, started)
    return presses


def _decode_reference(path: Path, side: int):
    from lookalike.ingest.decode import decode

    return decode(path, draft_side=side).image


def _run_jobs(ctx: AskContext, todo: list[Job], store: CaptionStore, report: CaptionReport, on_photo) -> Presses:
    """Caption `todo` with `caption.concurrency` workers; each record is saved the moment it arrives."""
    fatal: list[EndpointError] = []

    def keep(job: Job, record: Record | None, error: BaseException | None) -> None:
        if isinstance(error, EndpointError):
            fatal.append(error)  # the worker has set ctx.stop: nothing more is sent
        elif error is not None:
            raise error
        elif record is not None:  # None: the run stopped before this photo was asked
            store.put(record, caption_path(job.path))
            report.answered.append(job.path.name)
            if on_photo:
                on_photo(record)

    workers = min(ctx.cc.concurrency, len(todo))
    presses = run_pool(lambda job: caption_photo(ctx, job.path, job.key), todo, workers, ctx.stop, keep)
    if fatal:
        raise fatal[0]
    return presses


def _interrupted(report: CaptionReport, todo: list[Job], store: CaptionStore, presses: Presses,
                 resume_hint: str) -> Interrupted:
    """The one line Ctrl-C ends with: what was kept, what is left, how to go on."""
    kept = sum(1 for name in report.answered if (store.get(name) or Record(name)).caption)
    left = sum(1 for j in todo if decide(j, store.get(j.path.name)) == "request")
    abandoned = f"; abandoned the {presses.abandoned} request(s) still in flight" if presses.abandoned else ""
    return Interrupted(f"Ctrl-C: kept the {kept} caption(s) received{abandoned}; {left} photo(s) still to caption "
                       f"(review so far: {report.review}); {resume_hint}")


def _finish(cfg, rd: RunDir, report: CaptionReport, jobs: list[Job], store: CaptionStore, started: float) -> None:
    """Sum the usage, then write the review page and the manifest (no key in either)."""
    from lookalike.caption.review import write_review
    from lookalike.ingest.stage import read_record

    report.records = [store.get(j.path.name) or Record(j.path.name, flags=["not captioned"], final=False) for j in jobs]
    for name in report.answered:
        usage = (store.get(name) or Record(name)).usage or {}
        for k in report.usage:
            report.usage[k] += usage.get(k) or 0
    report.seconds = round(time.time() - started, 2)
    report.review = write_review(report.folder / REVIEW, [j.path for j in jobs], report.records, read_record(rd),
                                 report, cfg.dataset.trigger)
    rd.write_manifest(
        report.folder, STAGE, photos=cfg.dataset.photos, provider=report.endpoint.provider,
        base_url=report.endpoint.base_url, model=report.endpoint.model, actions=report.actions,
        requests=report.requests, usage=report.usage, seconds=report.seconds, request_seconds=report.request_seconds,
        flagged={r.photo: r.flags for r in report.flagged}, records=RECORDS, review=REVIEW,
        interrupted=report.interrupted,
    )


def estimate(todo: list[Job], references: list[Path], system: str, ep: Endpoint, cc) -> dict:
    """--dry-run: requests, input and output tokens, and cost where the price is known."""
    from PIL import Image

    def tokens_of(path: Path) -> int:
        try:
            with Image.open(path) as im:
                w, h = im.size
        except Exception:  # noqa: BLE001  unreadable files are skipped, not sent
            return 0
        scale = min(1.0, cc.image_side / max(w, h))
        return image_tokens(round(w * scale), round(h * scale), ep.image_tokens, cc.detail)

    ref_tokens = sum(tokens_of(p) for p in references)
    prompt = text_tokens(system) + 40
    tokens_in = sum(prompt + ref_tokens + tokens_of(j.path) for j in todo)
    tokens_out = OUTPUT_TOKENS_GUESS * len(todo)
    cost = None
    if ep.price_in is not None and ep.price_out is not None:
        cost = round((tokens_in * ep.price_in + tokens_out * ep.price_out) / 1e6, 4)
    return {"requests": len(todo), "input_tokens": tokens_in, "output_tokens": tokens_out, "cost_usd": cost,
            "price_in": ep.price_in, "price_out": ep.price_out}
