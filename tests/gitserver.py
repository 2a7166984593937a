"""Git over smart HTTP on 127.0.0.1, served by `git http-backend` (the real thing), for the
source tests: pygit2 clones and fetches from it like from any forge."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


def _backend() -> str:
    out = subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True)
    return str(Path(out.stdout.strip()) / "git-http-backend")


class _Handler(BaseHTTPRequestHandler):
    root: Path
    down = False
    status = 0  # every request answered with this HTTP status (0: served normally)
    hang = 0.0  # seconds to stall before answering (a hung remote)
    auth: str | None = None  # the Authorization header every request must carry

    def _cgi(self) -> None:
        if self.hang:
            time.sleep(self.hang)
        if self.down:
            self.send_error(503, "down for the test")
            return
        if self.status:
            self.send_error(self.status, "failing for the test")
            return
        if self.auth is not None and self.headers.get("Authorization") != self.auth:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ.get("PATH", ""),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": parts.path,
            "QUERY_STRING": parts.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1",
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        done = subprocess.run([_backend()], input=body, env=env, capture_output=True, check=False)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").split("\r\n"):
            if not line:
                continue
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            else:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))  # git clients need it
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _cgi
    do_POST = _cgi

    def log_message(self, *args: object) -> None:
        pass


class GitServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        handler = type(
            "Handler", (_Handler,), {"root": root, "down": False, "status": 0, "hang": 0.0}
        )
        self.handler = handler
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{name}"

    def set_down(self, down: bool) -> None:
        self.handler.down = down

    def set_status(self, status: int) -> None:
        """Answer every request with `status` (0: serve normally again)."""
        self.handler.status = status

    def set_hang(self, seconds: float) -> None:
        self.handler.hang = seconds

    def require_basic(self, user: str, password: str) -> None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.handler.auth = f"Basic {token}"


@contextmanager
def git_server(root: Path) -> Iterator[GitServer]:
    server = GitServer(root)
    server.thread.start()
    try:
        yield server
    finally:
        server.set_hang(0)
        server.httpd.shutdown()
        shutil.rmtree(root / "tmp", ignore_errors=True)
