"""Service logs: JSON (one event per line) or console lines, with the ids of what they are
about, and no secret in them."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from runner import logs
from runner.settings import load_settings
from tests.test_serve import free_port, wait_for


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers, root.level = handlers, level


def test_json_lines_carry_the_context_ids(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(format="json", level="info")
    log = logging.getLogger("runner.test")
    with logs.context(run_id=7, workflow="nightly"), logs.context(step="scan"):
        log.info("step %s started", "scan")
    log.debug("not written at info")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert {k: event[k] for k in ("level", "logger", "message", "run_id", "step", "workflow")} == {
        "level": "INFO",
        "logger": "runner.test",
        "message": "step scan started",
        "run_id": 7,
        "step": "scan",
        "workflow": "nightly",
    }
    assert "time" in event


def test_console_lines_and_secrets_masked(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(format="console", level="warning", secrets=["gh-s3cret-token"])
    with logs.context(delivery="d-1"):
        logging.getLogger("runner.x").warning("calling with %s", "gh-s3cret-token")
        try:
            raise RuntimeError("refused token gh-s3cret-token")
        except RuntimeError:
            logging.getLogger("runner.x").exception("the call failed")
    out = capsys.readouterr().err
    assert "gh-s3cret-token" not in out  # not in messages, nor in exception text
    line = out.strip().splitlines()[0]
    assert line.endswith("runner.x: calling with *** [delivery=d-1]")
    assert "RuntimeError: refused token ***" in out


def test_json_lines_mask_secrets_the_encoder_would_escape(
    capsys: pytest.CaptureFixture[str],
) -> None:
    secrets = ['pa"ss\\word-1', "clé-secrète-42"]
    logs.configure(format="json", level="info", secrets=secrets)
    logging.getLogger("runner.x").warning("login with %s and %s", *secrets)
    out = capsys.readouterr().err
    event = json.loads(out)
    assert event["message"] == "login with *** and ***"
    assert "word-1" not in out
    assert "secr" not in out


def test_service_logs_mask_encoded_forms_of_every_known_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = "wh4t"  # 4 characters: the shortest value a secret may have
    encoded = base64.b64encode(f"user:{secret}".encode()).decode()  # a Basic auth header
    url_secret = "p@ss/w0rd"
    logs.configure(format="json", level="info", secrets=[secret, url_secret, "abc"])
    log = logging.getLogger("runner.x")
    log.warning("auth %s hex %s url %s", encoded, secret.encode().hex(), quote(url_secret, safe=""))
    log.warning("abc is too short to be masked")
    out = capsys.readouterr().err
    first, second = (json.loads(line)["message"] for line in out.splitlines())
    assert first == "auth dXNlcjp*** hex *** url ***"
    assert second == "abc is too short to be masked"


def test_logging_settings_from_file_and_environment(tmp_path: Path) -> None:
    (tmp_path / "runner.yaml").write_text("logging: {format: json, level: debug}\n")
    settings = load_settings(str(tmp_path / "runner.yaml"), env={})
    assert (settings.logging.format, settings.logging.level) == ("json", "debug")
    from_env = load_settings(None, env={"RUNNER_LOGGING_FORMAT": "json"})
    assert from_env.logging.format == "json"


def test_the_service_writes_json_lines_without_secrets(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "runner.yaml").write_text(
        f"listen: {{port: {port}}}\nlogging: {{format: json}}\n"
        "forges: [{name: github, kind: github, webhook_secret_env: GH_SECRET}]\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "serve", "--role", "web"],
        cwd=tmp_path,
        env={**os.environ, "GH_SECRET": "whsec-abcdef123"},
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(base + "/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up)
        forged = httpx.post(
            base + "/hooks/github",
            content=b"{}",
            headers={"Content-Type": "application/json", "X-Hub-Signature-256": "sha256=00"},
        )
        assert forged.status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any("wrong signature" in e["message"] for e in events)
    assert all(e["level"] in ("INFO", "WARNING", "ERROR") for e in events)
    assert "whsec-abcdef123" not in err
