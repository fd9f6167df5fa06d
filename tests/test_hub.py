"""A hub id against a real HTTP server on loopback that answers like the hub does for gated repos."""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class _Hub(BaseHTTPRequestHandler):
    """Answers every request as the hub does for a gated repo the caller has no access to."""

    error_code = "GatedRepo"
    seen: list = []

    def _answer(self):
        self.seen.append((self.command, self.path, self.headers.get("Authorization")))
        body = json.dumps({"error": "Access to model is restricted."}).encode()
        self.send_response(403 if self.error_code == "GatedRepo" else 401)
        self.send_header("X-Error-Code", self.error_code)
        self.send_header("X-Error-Message", "Access to model is restricted.")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_server():
    _Hub.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.mark.parametrize("error_code, expected", [
    ("GatedRepo", "is gated and this account has not been granted access"),
    ("RepoNotFound", "was not found on the hub, or is private"),
])
def test_hub_without_access_says_how_to_fix_and_keeps_the_token_secret(hub_server, tmp_path, error_code, expected):
    _Hub.error_code = error_code
    token = "hf_test_secret_token_123"
    env = {
        **os.environ, "HF_HUB_OFFLINE": "0", "HF_TOKEN": token, "HF_HUB_CACHE": str(tmp_path / "cache"),
        "HF_ENDPOINT": f"http://127.0.0.1:{hub_server.server_port}", "HF_HUB_ETAG_TIMEOUT": "5",
    }
    out = subprocess.run(
        [sys.executable, "-m", "lookalike", "generate", "Arthur", "--set", "model.source=black-forest-labs/FLUX.1-dev",
         "--device", "cpu"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120,
    )
    text = " ".join(out.stderr.split())
    assert out.returncode == 2, out.stderr
    assert expected in text
    assert "https://huggingface.co/black-forest-labs/FLUX.1-dev" in text and "HF_TOKEN" in text
    assert "Traceback" not in out.stderr and token not in out.stderr + out.stdout
    # The request really reached the server, carrying the token from HF_TOKEN.
    assert any("FLUX.1-dev" in path for _, path, _ in _Hub.seen)
    assert any(auth == f"Bearer {token}" for _, _, auth in _Hub.seen)
