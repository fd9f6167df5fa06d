"""One photo's request: the endpoint checked first, then the ask, the re-asks, and the repair or the flag.

Each request carries the reference photo first and the photo second. The `openai` SDK retries 429,
5xx and timeouts (`caption.retries`, honouring Retry-After); a reply that breaks a rule, or is not
valid JSON, is asked for again with the violation stated (`caption.reasks`); then what is safe is
repaired and the rest flagged. Nothing is asked once the run's stop event is set (Ctrl-C, or an
endpoint that cannot serve the run), not even the SDK's own retries.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from lookalike.caption.checks import repair, violations
from lookalike.caption.prompt import data_url, jpeg_for_request, messages
from lookalike.caption.providers import Endpoint, Redactor
from lookalike.caption.store import MODEL, Record
from lookalike.errors import LookalikeError


class EndpointError(LookalikeError):
    """The endpoint cannot serve this run at all: no answer, key refused, model unknown."""


class NotSent(Exception):
    """Raised by the HTTP client, before a request (or the SDK's retry of one) goes out after Ctrl-C."""

    def __init__(self, message: str, retry: bool):
        super().__init__(message)
        self.retry = retry  # True: the first try went out (and failed); False: nothing went out at all


@dataclass
class AskContext:
    """What every worker shares for one run."""

    client: object
    ep: Endpoint
    cc: object
    trigger: str
    system: str
    reference_url: str
    redact: Redactor
    stop: threading.Event = field(default_factory=threading.Event)  # Ctrl-C or a fatal error: ask nothing more
    sent: int = 0  # chat requests made (the SDK's transport retries not counted)
    lock: threading.Lock = field(default_factory=threading.Lock)
    others: list = field(default_factory=list)  # (trigger, reference image url) of each of dataset.people


def make_client(ep: Endpoint, cc, key: str, stop: threading.Event):
    """The SDK client for `ep`; it sends nothing, not even a retry, once `stop` is set."""
    import openai

    def refuse_after_stop(request) -> None:  # before every HTTP request, the SDK's own retries included
        if stop.is_set():
            retry = request.headers.get("x-stainless-retry-count", "0") != "0"  # the SDK numbers its tries
            raise NotSent(f"{request.method} {request.url} not sent: the run is stopping", retry)

    http = openai.DefaultHttpxClient(event_hooks={"request": [refuse_after_stop]})
    return openai.OpenAI(base_url=ep.base_url, api_key=key, timeout=cc.timeout, max_retries=cc.retries,
                         http_client=http)


def caption_photo(ctx: AskContext, path: Path, key: str | None) -> Record | None:
    """Ask for one photo's caption (re-asking on broken rules or garbage), then repair or flag it.

    None when the run stopped before anything was asked for this photo: there is nothing to store.
    """
    import openai

    from lookalike.ingest.decode import PhotoRejected, decode

    cc, rec = ctx.cc, Record(path.name, source=MODEL, key=key, usage={"prompt_tokens": 0, "completion_tokens": 0})
    try:
        image = decode(path, draft_side=cc.image_side).image
    except PhotoRejected as e:
        rec.flags.append(f"skipped: {e.reason}")
        return rec
    jpeg, _ = jpeg_for_request(image, cc.image_side, cc.jpeg_quality)
    chat = messages(ctx.system, ctx.reference_url, data_url(jpeg), ctx.trigger, cc.detail, ctx.others)
    reply, problem = None, None
    for _ in range(1 + cc.reasks):
        if ctx.stop.is_set():
            break  # Ctrl-C or a fatal error: ask nothing more; a reply in hand is paid for, so it is kept
        rec.asks += 1
        try:
            text, usage = _ask(ctx, chat)
        except NotSent as e:  # Ctrl-C came before this ask, or the SDK's retry of it, went out
            if not e.retry:  # nothing went out: the ask is not counted, and a photo never asked gets no record
                rec.asks -= 1
                with ctx.lock:
                    ctx.sent -= 1
            break
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            ctx.stop.set()  # no other worker should pay for the same answer
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
    if rec.asks == 0:
        return None
    if reply is None:
        rec.final = False  # the next run asks again
        rec.flags.append(f"no caption: {problem} on all {rec.asks} asks" if problem else
                         "no caption: the run stopped before the reply came")
        return rec
    return _settle(rec, reply, ctx)


def _settle(rec: Record, reply: str, ctx: AskContext) -> Record:
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


def _ask(ctx: AskContext, chat: list[dict]) -> tuple[str, dict]:
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


def _describe(ctx: AskContext, e: Exception) -> str:
    import openai

    if isinstance(e, openai.APITimeoutError):
        return f"no reply within caption.timeout = {ctx.cc.timeout:g} s"
    if isinstance(e, openai.APIConnectionError):
        return f"could not connect to {ctx.ep.base_url}"
    status = getattr(e, "status_code", None)
    message = ctx.redact(str(getattr(e, "message", e)))[:160]
    return f"HTTP {status}: {message}" if status else message


def _endpoint_error(ctx: AskContext, e: Exception) -> EndpointError:
    import openai

    ep = ctx.ep
    if isinstance(e, (openai.AuthenticationError, openai.PermissionDeniedError)) and ep.key_env is None:
        return EndpointError(
            f"{ep.base_url} wants an API key (HTTP {e.status_code}) and none was configured for the {ep.provider} "
            "provider: put the key in an environment variable (or a .env file, --env-file) and name that variable "
            "with --api-key-env VAR (caption.api_key_env)"
        )
    if isinstance(e, openai.AuthenticationError):
        return EndpointError(f"{ep.base_url} refused the API key from {ep.key_env} (HTTP 401); "
                             "check that the variable holds a valid key for this provider")
    if isinstance(e, openai.PermissionDeniedError):
        return EndpointError(f"{ep.base_url} denied access with this key (HTTP 403): {_describe(ctx, e)}; "
                             f"check the key's permissions for caption.model = {ep.model!r}")
    return EndpointError(f"caption.model = {ep.model!r} or the endpoint was not found at {ep.base_url} (HTTP 404); "
                         "check caption.model and caption.base_url")


def check_endpoint(ctx: AskContext) -> None:
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
