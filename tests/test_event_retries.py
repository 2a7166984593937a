"""Stored deliveries through the dispatcher of `runner serve`, on SQLite and PostgreSQL: a
passing failure (the forge's API answering 503) leaves the event pending with its attempts
counted and a time for the next one, and it is handled once the forge is back; a forge that
stays down fails the event after `events.max_attempts`, saying so; a payload without the fields
the runner reads (stored by an older runner, which did not check) fails at once with the field
named. Each outcome is on the event, in the log and in `runner_events_total{result}`."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from psycopg.rows import dict_row
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runner.store.base import open_store
from tests.fake_github import FakeGitHub, fake_github
from tests.npm import github_examples
from tests.test_serve import free_port, wait_for
from tests.web.service import serve

SECRET = "retries-webhook-secret"
SOURCE = (
    f"sources: [{{name: main, url: '{Path(__file__).parents[1] / 'workflows-repo-example'}'}}]\n"
)
ENV = {"GH_SECRET": SECRET, "GH_TOKEN": "gh-retries-t0ken"}


class Gateway:
    """GitHub's API as the runner reaches it: 503 for the first `failures` requests and for
    every request about a repository in `down`, else the fake GitHub's answer."""

    def __init__(self, upstream: str, failures: int, down: set[str]) -> None:
        self.upstream, self.failures, self.down = upstream, failures, down
        self.refused: list[str] = []

    async def forward(self, request: Request) -> Response:
        path = request.url.path
        if self.failures > 0 or any(f"/repos/{repo}/" in path for repo in self.down):
            self.failures -= 1
            self.refused.append(path)
            return Response(b'{"message": "Service Unavailable"}', status_code=503)
        async with httpx.AsyncClient(base_url=self.upstream) as client:
            answer = await client.request(
                request.method,
                path,
                params=request.query_params,
                content=await request.body(),
                headers={k: v for k, v in request.headers.items() if k != "host"},
            )
        return Response(answer.content, answer.status_code, {"content-type": "application/json"})


@contextmanager
def gateway(upstream: str, failures: int, down: set[str]) -> Iterator[tuple[Gateway, str]]:
    gate = Gateway(upstream, failures, down)
    app = Starlette(routes=[Route("/{rest:path}", gate.forward, methods=["GET", "POST", "PATCH"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield gate, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def deliver(base: str, event: str, delivery: str, payload: object) -> httpx.Response:
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return httpx.post(
        f"{base}/hooks/github",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": signature,
        },
    )


def help_comment(repo: str, number: int, comment_id: int) -> dict[str, object]:
    return {
        "action": "created",
        "issue": {"number": number, "pull_request": {"url": "u"}, "user": {"login": "dev"}},
        "comment": {
            "id": comment_id,
            "created_at": datetime.now(UTC).isoformat(),
            "body": "/help",
            "user": {"login": "dev", "type": "User"},
            "html_url": f"https://github.example/{repo}/pull/{number}#c{comment_id}",
        },
        "repository": {"full_name": repo, "clone_url": f"https://github.example/{repo}.git"},
        "sender": {"login": "dev", "type": "User"},
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/runner.db"
    return str(request.getfixturevalue("postgres_url"))


def event_row(database: str, delivery: str) -> dict[str, Any]:
    query = "SELECT status, attempts, error, not_before FROM events WHERE delivery_id = "
    if database.startswith("sqlite"):
        with sqlite3.connect(database.removeprefix("sqlite:///")) as db:
            db.row_factory = sqlite3.Row
            row = db.execute(query + "?", (delivery,)).fetchone()
        return dict(row) if row is not None else {}
    with psycopg.connect(database, row_factory=dict_row) as conn:
        found = conn.execute(query + "%s", (delivery,)).fetchone()
    return dict(found) if found is not None else {}


def events_counted(base: str, result: str) -> float:
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith(f'runner_events_total{{result="{result}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with fake_github() as fake:
        fake.pulls[("acme/app", 4)] = {"user": {"login": "dev"}}
        fake.pulls[("acme/down", 5)] = {"user": {"login": "dev"}}
        yield fake


def test_passing_forge_errors_are_retried_and_a_lasting_one_fails_after_max_attempts(
    tmp_path: Path, github: FakeGitHub, database: str
) -> None:
    # the runner's forge client tries each call 4 times itself: the first 4 requests failing
    # fail the first attempt of the first delivery; acme/down never answers
    with gateway(github.url, failures=4, down={"acme/down"}) as (gate, url):
        config = (
            f"database: {{url: '{database}'}}\n"
            + SOURCE
            + "events: {max_attempts: 3, retry_backoff: 1s, retry_max_backoff: 2s}\n"
            "forges:\n"
            f"  - {{name: github, kind: github, api_url: '{url}', token_env: GH_TOKEN,"
            " webhook_secret_env: GH_SECRET}\n"
        )
        with serve(tmp_path, config, ENV, role="all") as base:
            assert (
                deliver(base, "issue_comment", "c-1", help_comment("acme/app", 4, 11)).status_code
                == 202
            )

            def handled(delivery: str) -> bool:
                return event_row(database, delivery).get("status") in ("done", "failed")

            def retried() -> bool:
                row = event_row(database, "c-1")
                return row["status"] == "pending" and row["attempts"] == 1 and bool(row["error"])

            wait_for(retried, timeout=60)
            waiting = event_row(database, "c-1")
            assert "attempt 1 of 3 failed, will try again at" in waiting["error"]
            assert "503" in waiting["error"]
            assert waiting["not_before"] > time.time() - 5
            wait_for(lambda: handled("c-1"), timeout=90)
            done = event_row(database, "c-1")
            assert (done["status"], done["attempts"]) == ("done", 2)
            assert [number for _, number, _ in github.comments] == [4]  # the /help reply, once

            assert (
                deliver(base, "issue_comment", "c-2", help_comment("acme/down", 5, 12)).status_code
                == 202
            )
            wait_for(lambda: handled("c-2"), timeout=120)
            gave_up = event_row(database, "c-2")
            assert (gave_up["status"], gave_up["attempts"]) == ("failed", 3)
            assert gave_up["error"].startswith("gave up after 3 attempts: ")
            assert "acme/down" in gave_up["error"]
            assert events_counted(base, "retry") == 3  # c-1 once, c-2 twice
            assert events_counted(base, "gave_up") == 1
            assert events_counted(base, "done") == 1
    assert len([p for p in gate.refused if "acme/down" in p]) == 12  # 3 attempts of 4 tries


def test_a_stored_payload_without_the_fields_the_runner_reads_fails_at_once(
    tmp_path: Path, database: str
) -> None:
    push = github_examples("push")[0]
    broken = {**push, "repository": {**push["repository"], "full_name": ["not", "a", "name"]}}

    async def store_as_an_older_runner_did() -> None:  # it stored what it did not check
        store = open_store(database)
        await store.open()
        try:
            await store.migrate()
            for delivery, body in [
                ("old-broken", json.dumps(broken).encode()),
                ("old-not-json", b'{"ref": '),
                ("old-good", json.dumps(push).encode()),
            ]:
                await store.add_event(
                    forge="github",
                    delivery_id=delivery,
                    event_type="push",
                    headers={"content-type": "application/json"},
                    body=body,
                )
        finally:
            await store.close()

    asyncio.run(store_as_an_older_runner_did())
    config = (
        f"database: {{url: '{database}'}}\n"
        + SOURCE
        + "forges:\n  - {name: github, kind: github, webhook_secret_env: GH_SECRET}\n"
    )
    with serve(tmp_path, config, ENV, role="all") as base:
        wait_for(lambda: event_row(database, "old-good")["status"] == "done", timeout=60)
        wait_for(lambda: event_row(database, "old-broken")["status"] == "failed", timeout=30)
        wait_for(lambda: event_row(database, "old-not-json")["status"] == "failed", timeout=30)
        broken_row = event_row(database, "old-broken")
        assert broken_row["attempts"] == 1
        assert "/repository/full_name" in broken_row["error"]
        assert "github-push.schema.json" in broken_row["error"]
        assert "not valid JSON" in event_row(database, "old-not-json")["error"]
        assert events_counted(base, "failed") == 2
