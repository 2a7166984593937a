"""`runner serve` as a subprocess on 127.0.0.1 for the HTTP tests, with a given configuration
and environment; the caller may prepare its database first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.test_serve import free_port


@contextmanager
def serve(
    home: Path, config: str, env: dict[str, str], *, role: str = "web", ready: bool = False
) -> Iterator[str]:
    """Start `runner serve --role ROLE` in `home` with `config` (a `listen` line is added);
    yield its base URL once /healthz (or, with `ready`, /readyz) answers 200."""
    port = free_port()
    (home / "runner.yaml").write_text(f"listen: {{port: {port}}}\n{config}")
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "serve", "--role", role],
        cwd=home,
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    probe = "/readyz" if ready else "/healthz"
    while True:
        try:
            if httpx.get(base + probe, timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"runner serve did not start: {process.communicate()[1]}")
        time.sleep(0.1)
    try:
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
        for secret in env.values():
            assert secret not in errors, "a secret reached the service's log"
