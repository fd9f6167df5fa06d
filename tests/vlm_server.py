"""A real chat-completions server on loopback, scripted to misbehave, for the caption tests and benchmark.

It speaks the OpenAI protocol over HTTP (`GET /v1/models`, `POST /v1/chat/completions`), decodes the
images each request carries, and answers each photo by a script: a list of behaviours consumed one
request at a time (then "ok"):

    "ok"          a caption that follows the rules ("Arthur standing in a park, photo p3")
    ("429", s)    429 Too Many Requests with Retry-After: s
    "500"         500 Internal Server Error
    ("slow", s)   sleep s seconds before answering "ok" (longer than the client's timeout)
    "no-trigger"  a caption that does not start with the trigger
    "refusal"     "I'm sorry, I can't help with identifying people."
    "garbage"     a 200 whose body is not valid JSON
    "markdown"    the caption wrapped in **"..."**

Every request is recorded (its images decoded, its messages, its headers, when it came and when it was
answered) for the tests to inspect. `Script.latency` makes every answer take that long (the Ctrl-C
tests use 1 s, so that requests are still in flight when the signal comes).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


@dataclass
class Seen:
    """One request as the server received it."""

    photo: str
    images: list  # PIL images, in the order the request carried them
    messages: list
    authorization: str | None
    at: float  # when the request came (time.time())
    status: int = 0
    done: float = 0.0  # when the answer had been sent; 0 while in flight


@dataclass
class Script:
    trigger: str = "Arthur"
    identify: object = None  # image -> photo id; default "?"
    plan: dict = field(default_factory=dict)  # photo id -> list of behaviours
    latency: float = 0.0  # added to every answer (the benchmark's fixed 0.5 s)
    models: tuple = ("test-vlm",)
    api_key: str | None = None  # when set, other keys get 401
    prompt_tokens: int = 100
    completion_tokens: int = 20


class VLMServer:
    """`with VLMServer(script) as s:` serves on s.url until the block ends."""

    def __init__(self, script: Script | None = None):
        self.script = script or Script()
        self.seen: list[Seen] = []
        self.usage_sent = {"prompt_tokens": 0, "completion_tokens": 0}  # of replies a waiting client received
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def requests_for(self, photo: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.photo == photo]

    def _next(self, photo: str):
        with self.lock:
            steps = self.script.plan.get(photo)
            return steps.pop(0) if steps else "ok"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): nothing to answer

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    data = [{"id": m, "object": "model", "owned_by": "test"} for m in server.script.models]
                    self._send(200, json.dumps({"object": "list", "data": data}).encode())
                else:
                    self._send(404, b'{"error": {"message": "no such route"}}')

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, b'{"error": {"message": "no such route"}}')
                body = json.loads(raw)
                images = [_decode(part["image_url"]["url"]) for m in body["messages"] if isinstance(m["content"], list)
                          for part in m["content"] if part.get("type") == "image_url"]
                identify = server.script.identify or (lambda im: "?")
                photo = identify(images[-1]) if len(images) > 1 else "?"  # the photo comes last
                seen = Seen(photo, images, body["messages"], self.headers.get("Authorization"), time.time())
                with server.lock:
                    server.seen.append(seen)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer(seen, body)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                        seen.done = time.time()

            def _answer(self, seen: Seen, body: dict):
                script = server.script
                if script.api_key is not None and seen.authorization != f"Bearer {script.api_key}":
                    seen.status = 401
                    return self._send(401, b'{"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}')
                if body.get("model") not in script.models:
                    seen.status = 404
                    return self._send(404, json.dumps({"error": {"message": f"model {body.get('model')} not found"}}).encode())
                if script.latency:
                    time.sleep(script.latency)
                step = server._next(seen.photo)
                kind, arg = (step, None) if isinstance(step, str) else step
                t = script.trigger
                text = f"{t} standing in a sunny park with trees behind, photo {seen.photo}"
                if kind == "429":
                    seen.status = 429
                    return self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": str(arg)})
                if kind == "500":
                    seen.status = 500
                    return self._send(500, b'{"error": {"message": "internal error"}}')
                if kind == "slow":
                    time.sleep(arg)
                if kind == "garbage":
                    seen.status = 200
                    return self._send(200, b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "Arth')
                if kind == "no-trigger":
                    text = f"A man standing in a sunny park with trees behind, photo {seen.photo}"
                elif kind == "refusal":
                    text = "I'm sorry, I can't help with identifying people in photos."
                elif kind == "markdown":
                    text = f'**"{text}"**'
                seen.status = 200
                if kind != "slow":  # a slow reply comes after the client gave up: no client ever receives it,
                    with server.lock:  # and counting it when it wakes would race the test's check
                        server.usage_sent["prompt_tokens"] += script.prompt_tokens
                        server.usage_sent["completion_tokens"] += script.completion_tokens
                reply = {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                    "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": script.prompt_tokens, "completion_tokens": script.completion_tokens,
                              "total_tokens": script.prompt_tokens + script.completion_tokens},
                }
                self._send(200, json.dumps(reply).encode())

        return Handler


def _decode(url: str):
    header, _, data = url.partition(",")
    assert header == "data:image/jpeg;base64", header[:40]
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def colour_photos(folder, n: int, size=(96, 128)) -> dict:
    """n flat-colour photos p0..p{n-1}.png, each told apart by its red level; returns {name: id}."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = {}
    for i in range(n):
        Image.new("RGB", size, (10 + 12 * i, 90, 160)).save(folder / f"p{i}.png")
        ids[f"p{i}.png"] = f"p{i}"
    return ids


def identify_colour(image) -> str:
    """The id of a colour_photos image from its mean red level."""
    red = sum(image.resize((8, 8)).getdata(0)) / 64
    return f"p{round((red - 10) / 12)}"
