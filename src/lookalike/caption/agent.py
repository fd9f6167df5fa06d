"""The captioning agent: every photo of dataset.photos gets a caption, or a flag saying why not.

For each photo the agent decides, from the files alone, whether a request is needed at all:

    .txt beside the photo, written by us, same request key   -> nothing to do (cached)
    .txt beside the photo, not what we wrote                  -> the user's caption, used as it is
    no .txt, a record with the same request key               -> the .txt is restored from the record
    otherwise                                                 -> ask the model

Requests run `caption.concurrency` at a time. The `openai` SDK retries 429, 5xx and timeouts
(`caption.retries`, honouring Retry-After); the agent re-asks, stating the violation, when a reply
breaks a rule or is not valid JSON (`caption.reasks`), then repairs what is safe or flags the photo.
A wrong key, an unknown model or a dead endpoint stops the run with a message naming the setting;
captions already received stay on disk.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from lookalike.caption.checks import repair, violations
from lookalike.caption.prompt import (
    OUTPUT_TOKENS_GUESS, data_url, image_tokens, jpeg_for_request, messages, request_key, system_prompt, text_tokens,
)
from lookalike.caption.providers import Endpoint, Redactor, api_key, endpoint
from lookalike.caption.store import EDITED, EXISTING, MODEL, CaptionStore, Record, caption_path, text_sha
from lookalike.data.photos import IMAGE_SUFFIXES, has_trigger
from lookalike.errors import ConfigError, LookalikeError
from lookalike.rundir import RunDir

log = logging.getLogger(__name__)

STAGE = "caption"
RECORDS = "captions.jsonl"
REVIEW = "review.html"


class EndpointError(LookalikeError):
    """The endpoint cannot serve this run at all: no answer, key refused, model unknown."""


@dataclass
class Job:
    """One photo and the key of the request that would caption it."""

    path: Path
    sha256: str
    key: str
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

    @property
    def flagged(self) -> list[Record]:
        return [r for r in self.records if r.flags or r.caption is None]


@dataclass
class _Context:
    """What every worker shares for one run."""

    client: object
    ep: Endpoint
    cc: object
    trigger: str
    system: str
    reference_url: str
    redact: Redactor
    stop: threading.Event = field(default_factory=threading.Event)
    sent: int = 0  # chat requests made (the SDK's transport retries not counted)
    lock: threading.Lock = field(default_factory=threading.Lock)


# ---------------------------------------------------------------- deciding what to do


def photo_files(folder: Path) -> list[Path]:
    from lookalike.ingest.doctor import candidate_files, check_folder

    files = [p for p in candidate_files(check_folder(folder)) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ConfigError(f"dataset.photos = {str(folder)!r} holds no photos ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                          "point it at the folder of the person's photos")
    return files


def decide(job: Job, record: Record | None) -> str:
    """What a photo needs, from its .txt and its record (see the module docstring)."""
    txt = caption_path(job.path)
    if txt.is_file():
        ours = record is not None and record.source == MODEL and record.txt_sha256 == text_sha(txt.read_text(encoding="utf-8"))
        if ours:
            return "cached" if record.key == job.key else "request"
        return "user"
    if record is not None and record.source == MODEL and record.key == job.key and record.caption is not None:
        return "restore"
    if record is not None and record.key == job.key and record.final:
        return "cached"  # answered before (a refusal, a skipped file): its flag stands, nothing is paid again
    return "request"


def user_record(job: Job, record: Record | None, trigger: str) -> Record:
    """The record of a caption the user wrote (or edited): used as it is, trigger-checked."""
    text = caption_path(job.path).read_text(encoding="utf-8")
    caption = text.strip()
    source = EDITED if record is not None and record.source in (MODEL, EDITED) else EXISTING
    flags = [] if has_trigger(caption, trigger) else [f"no trigger: the caption does not name {trigger}; add it by hand"]
    if not caption:
        flags = ["empty caption file: write a caption or delete the file to have one made"]
    return Record(job.path.name, caption or None, source, key=record.key if record else None, flags=flags,
                  txt_sha256=text_sha(text))


# ---------------------------------------------------------------- one photo


def caption_photo(ctx: _Context, job: Job) -> Record:
    """Ask for one photo's caption (re-asking on broken rules or garbage), then repair or flag it."""
    import openai

    from lookalike.ingest.decode import PhotoRejected, decode

    cc, rec = ctx.cc, Record(job.path.name, source=MODEL, key=job.key, usage={"prompt_tokens": 0, "completion_tokens": 0})
    try:
        image = decode(job.path, draft_side=cc.image_side).image
    except PhotoRejected as e:
        rec.flags.append(f"skipped: {e.reason}")
        return rec
    jpeg, _ = jpeg_for_request(image, cc.image_side, cc.jpeg_quality)
    chat = messages(ctx.system, ctx.reference_url, data_url(jpeg), ctx.trigger, cc.detail)
    reply, problem = None, None
    for _ in range(1 + cc.reasks):
        if ctx.stop.is_set():
            rec.final, rec.flags = False, ["not asked: the run stopped early"]
            return rec
        rec.asks += 1
        try:
            text, usage = _ask(ctx, chat)
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            raise _endpoint_error(ctx, e) from None
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as e:
            rec.final = False  # transient: the next run asks again
            rec.flags.append(f"request failed after {cc.retries} retries: {_describe(ctx, e)}")
            return rec
        except openai.APIStatusError as e:
            rec.flags.append(f"the server refused the request: {_describe(ctx, e)}")
            return rec
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, openai.APIResponseValidationError) as e:
            problem = f"malformed reply from {ctx.ep.base_url} ({ctx.redact(type(e).__name__)})"
            continue  # garbage: ask again
        for k in rec.usage:
            rec.usage[k] += usage.get(k) or 0
        reply = text
        broken = violations(text, ctx.trigger, cc.min_chars, cc.max_chars)
        if not broken:
            rec.caption = text.strip()
            return rec
        chat = chat + [
            {"role": "assistant", "content": text},
            {"role": "user", "content": f"That caption breaks the rules: {'; '.join(broken)}. Write it again: "
                                        f"one caption that starts with {ctx.trigger}, following every rule. "
                                        "Reply with the caption only."},
        ]
    if reply is None:
        rec.final = False
        rec.flags.append(f"no caption: {problem} on all {rec.asks} asks")
        return rec
    return _settle(rec, reply, ctx)


def _settle(rec: Record, reply: str, ctx: _Context) -> Record:
    """After the last ask: repair what is safe, flag what is left."""
    cc = ctx.cc
    broken = violations(reply, ctx.trigger, cc.min_chars, cc.max_chars)
    if any(v.startswith(("the reply refused", "the reply was empty")) for v in broken):
        rec.flags.append(f"no caption: {broken[0]} on all {rec.asks} asks (last reply: {ctx.redact(reply.strip())[:120]!r})")
        return rec
    fixed, done = repair(reply, ctx.trigger)
    rec.caption = fixed
    rec.flags += [f"repaired: {d}" for d in done]
    rec.flags += violations(fixed, ctx.trigger, cc.min_chars, cc.max_chars)
    return rec


def _ask(ctx: _Context, chat: list[dict]) -> tuple[str, dict]:
    """One chat request; returns the reply text and its token usage. Garbage raises ValueError and kin."""
    with ctx.lock:
        ctx.sent += 1
    resp = ctx.client.chat.completions.create(
        model=ctx.ep.model, messages=chat, max_tokens=ctx.cc.max_tokens, temperature=ctx.cc.temperature,
    )
    if isinstance(resp, (str, bytes)) or not resp.choices:
        raise ValueError("no choices in the reply")
    content = resp.choices[0].message.content
    if content is not None and not isinstance(content, str):
        raise TypeError("reply content is not text")
    usage = resp.usage.model_dump() if getattr(resp, "usage", None) is not None else {}
    return content or "", usage


def _describe(ctx: _Context, e: Exception) -> str:
    import openai

    if isinstance(e, openai.APITimeoutError):
        return f"no reply within caption.timeout = {ctx.cc.timeout:g} s"
    if isinstance(e, openai.APIConnectionError):
        return f"could not connect to {ctx.ep.base_url}"
    status = getattr(e, "status_code", None)
    message = ctx.redact(str(getattr(e, "message", e)))[:160]
    return f"HTTP {status}: {message}" if status else message


def _endpoint_error(ctx: _Context, e: Exception) -> EndpointError:
    import openai

    ep = ctx.ep
    if isinstance(e, openai.AuthenticationError):
        return EndpointError(f"{ep.base_url} refused the API key from {ep.key_env or 'caption.api_key_env'} (HTTP 401); "
                             "check that the variable holds a valid key for this provider")
    if isinstance(e, openai.PermissionDeniedError):
        return EndpointError(f"{ep.base_url} denied access with this key (HTTP 403): {_describe(ctx, e)}; "
                             f"check the key's permissions for caption.model = {ep.model!r}")
    return EndpointError(f"caption.model = {ep.model!r} or the endpoint was not found at {ep.base_url} (HTTP 404); "
                         "check caption.model and caption.base_url")


def check_endpoint(ctx: _Context) -> None:
    """Before any photo: is the endpoint there, is the key accepted, is the model served? Names the setting."""
    import openai

    ep = ctx.ep
    try:
        page = ctx.client.with_options(max_retries=1, timeout=min(10.0, ctx.cc.timeout)).models.list()
        served = [m.id for m in page.data]
    except openai.APIConnectionError as e:
        raise EndpointError(f"no answer from {ep.base_url} ({_describe(ctx, e)}); is the server running and "
                            "caption.base_url right?") from None
    except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
        raise _endpoint_error(ctx, e) from None
    except Exception:  # noqa: BLE001  endpoints that cannot list models still caption
        return
    if served and not any(m == ep.model or m.endswith("/" + ep.model) for m in served):
        shown = ", ".join(served[:8]) + (" ..." if len(served) > 8 else "")
        raise EndpointError(f"caption.model = {ep.model!r} is not served by {ep.base_url}; it serves: {shown}")


# ---------------------------------------------------------------- the stage


def caption_stage(cfg, rd: RunDir, env_file: Path | None = None, dry_run: bool = False,
                  on_photo: Callable[[Record], None] | None = None) -> CaptionReport:
    """Caption every photo of cfg.dataset.photos that needs it; write records, .txt files and the review page."""
    from lookalike.ingest.doctor import reference_face, resolve_reference

    started = time.time()
    cc, trigger = cfg.caption, cfg.dataset.trigger
    if cfg.dataset.photos is None:
        raise ConfigError("dataset.photos is not set: give the folder of photos, e.g. --photos ~/photos/arthur")
    files = photo_files(Path(cfg.dataset.photos))
    reference = resolve_reference(cfg)
    if reference is None:
        raise ConfigError("caption.reference is not set: name a clear photo of the person, sent with every request "
                          "(e.g. --reference selfie.jpg, a file or one of the photos)")
    reference_face(reference, cfg)  # a reference without a face would make every caption a guess
    ep = endpoint(cc)
    system = system_prompt(cc.rules, trigger)
    ref_sha = hashlib.sha256(reference.read_bytes()).hexdigest()
    folder = rd.stage(STAGE)
    store = CaptionStore(folder / RECORDS)

    jobs = []
    for path in files:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        job = Job(path, sha, request_key(sha, ref_sha, ep.base_url, ep.model, system, cc))
        job.action = decide(job, store.get(path.name))
        jobs.append(job)
    actions = {a: sum(j.action == a for j in jobs) for a in ("cached", "restore", "user", "request")}
    report = CaptionReport(folder, ep, actions)
    todo = [j for j in jobs if j.action == "request"]
    if dry_run:
        report.estimate = estimate(todo, reference, system, ep, cc)
        report.records = [store.get(j.path.name) or Record(j.path.name) for j in jobs]
        return report

    for job in jobs:  # no request needed: settle these first
        record = store.get(job.path.name)
        if job.action == "user":
            store.put(user_record(job, record, trigger))
        elif job.action == "restore":
            store.put(record, caption_path(job.path))
    if todo:
        key = api_key(ep, env_file)
        ctx = _Context(_client(ep, cc, key), ep, cc, trigger, system, "", Redactor(key))
        check_endpoint(ctx)
        ref_jpeg, _ = jpeg_for_request(_decode_reference(reference, cc.image_side), cc.image_side, cc.jpeg_quality)
        ctx.reference_url = data_url(ref_jpeg)
        sending = time.time()
        try:
            _run_jobs(ctx, todo, store, on_photo)
        finally:  # a run stopped by the endpoint still leaves its review page and manifest
            report.request_seconds = round(time.time() - sending, 2)
            report.requests = ctx.sent
            _finish(cfg, rd, report, jobs, todo, store, started)
    else:
        _finish(cfg, rd, report, jobs, todo, store, started)
    got = [r for r in report.records if r.photo in {j.path.name for j in todo}]
    if got and not any(r.caption for r in got):
        raise EndpointError(
            f"{ep.base_url} gave no usable caption for any of the {len(got)} photo(s) sent; the first: {got[0].photo}: "
            f"{'; '.join(got[0].flags)}. Check that caption.base_url is a chat-completions endpoint and caption.model "
            f"= {ep.model!r} takes images (records and the review page are in {report.folder})"
        )
    return report


def _client(ep: Endpoint, cc, key: str):
    import openai

    return openai.OpenAI(base_url=ep.base_url, api_key=key, timeout=cc.timeout, max_retries=cc.retries)


def _decode_reference(path: Path, side: int):
    from lookalike.ingest.decode import decode

    return decode(path, draft_side=side).image


def _run_jobs(ctx: _Context, todo: list[Job], store: CaptionStore, on_photo) -> None:
    """Caption `todo` with `caption.concurrency` workers; each record is saved the moment it arrives."""
    fatal: EndpointError | None = None
    with ThreadPoolExecutor(max_workers=ctx.cc.concurrency, thread_name_prefix="caption") as pool:
        futures = {pool.submit(caption_photo, ctx, job): job for job in todo}
        for future in as_completed(futures):
            job = futures[future]
            try:
                record = future.result()
            except EndpointError as e:
                fatal = fatal or e
                ctx.stop.set()
                continue
            store.put(record, caption_path(job.path))
            if on_photo:
                on_photo(record)
    if fatal is not None:
        raise fatal


def _finish(cfg, rd: RunDir, report: CaptionReport, jobs: list[Job], todo: list[Job], store: CaptionStore,
            started: float) -> None:
    """Sum the usage, then write the review page and the manifest (no key in either)."""
    from lookalike.caption.review import write_review
    from lookalike.ingest.stage import read_record

    report.records = [store.get(j.path.name) or Record(j.path.name, flags=["not captioned"], final=False) for j in jobs]
    for job in todo:
        usage = (store.get(job.path.name) or Record(job.path.name)).usage or {}
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
    )


def estimate(todo: list[Job], reference: Path, system: str, ep: Endpoint, cc) -> dict:
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

    ref_tokens = tokens_of(reference)
    prompt = text_tokens(system) + 40
    tokens_in = sum(prompt + ref_tokens + tokens_of(j.path) for j in todo)
    tokens_out = OUTPUT_TOKENS_GUESS * len(todo)
    cost = None
    if ep.price_in is not None and ep.price_out is not None:
        cost = round((tokens_in * ep.price_in + tokens_out * ep.price_out) / 1e6, 4)
    return {"requests": len(todo), "input_tokens": tokens_in, "output_tokens": tokens_out, "cost_usd": cost,
            "price_in": ep.price_in, "price_out": ep.price_out}
