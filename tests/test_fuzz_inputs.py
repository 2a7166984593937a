"""Fuzzing what comes from outside: mutated, correctly signed payloads (grown from the forges' own
example payloads) POSTed over HTTP to every receiver of a running `runner serve`, and mutated
workflow YAML given to `runner validate`. Whatever the input: no 5xx, no traceback in the
service's log or the command's output, every refused delivery answered in the error shape with
a reason, and every accepted one handled by the dispatcher to `done`, or to `failed` with the
reason on the event.

The number of examples per test is `FUZZ_EXAMPLES` (default 12, to fit the suite's time
budget); `FUZZ_EXAMPLES=500 pytest tests/test_fuzz_inputs.py` fuzzes longer."""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.cli import cli
from tests.npm import github_examples
from tests.test_serve import free_port

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("FUZZ_RANDOM") is None,  # the suite is repeatable by default
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ROOT = Path(__file__).parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
ENV = {
    "GH_SECRET": "fuzz-gh-secret",
    "GL_TOKEN": "fuzz-gl-token",
    "GT_SECRET": "fuzz-gt-secret",
    "GENERIC": "fuzz-generic-secret",
}
WORKFLOW = """\
apiVersion: runner/v1
kind: Workflow
metadata: {name: deploy}
spec:
  triggers: [{webhook: {}}]
  inputs:
    type: object
    required: [service]
    properties: {service: {type: string}, version: {type: string}}
  steps:
    - {id: never, agent: notifier, when: "false"}
"""


def _fixture(*parts: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES.joinpath(*parts)).read_text())
    return loaded


def _first(event: str, **match: Any) -> dict[str, Any]:
    return next(e for e in github_examples(event) if all(e.get(k) == v for k, v in match.items()))


# receiver -> [(event header, a real payload of that event)]
BASES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "github": [
        ("push", _first("push", ref="refs/heads/master")),
        ("pull_request", _first("pull_request", action="opened")),
        ("issue_comment", _first("issue_comment", action="created")),
    ],
    "gitlab": [
        ("Push Hook", _fixture("gitlab", "push_hook.json")),
        ("Merge Request Hook", _fixture("gitlab", "merge_request_hook.json")),
        ("Note Hook", _fixture("gitlab", "note_hook_mr.json")),
    ],
    "gitea": [
        ("push", _fixture("gitea", "push.json")),
        ("pull_request", _fixture("gitea", "pull_request.json")),
        ("issue_comment", _fixture("gitea", "issue_comment_pull.json")),
    ],
    "generic": [("", {"service": "api", "version": "1.2.3"})],
}
DELIVERIES = itertools.count(1)

# -- mutations ------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.just("0" * 40),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = (), depth: int = 4) -> list[tuple[Any, ...]]:
    """Every key path into `value`, up to `depth` levels (lists by index)."""
    found = [prefix] if prefix else []
    if depth == 0:
        return found
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key), depth - 1)
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):
            found += _paths(item, (*prefix, index), depth - 1)
    return found


def _set(base: dict[str, Any], path: tuple[Any, ...], value: Any, *, delete: bool) -> bytes:
    data = copy.deepcopy(base)
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return json.dumps(data).encode()


@st.composite
def mutated(draw: st.DrawFn, receiver: str) -> tuple[str, bytes]:
    """(event header, body): a real payload with one mutation, or bytes that are barely JSON."""
    event, base = draw(st.sampled_from(BASES[receiver]))
    raw = json.dumps(base).encode()
    how = draw(st.sampled_from(["replace", "replace", "replace", "delete", "cut", "deep", "flip"]))
    paths = _paths(base)
    if how == "replace":
        return event, _set(base, draw(st.sampled_from(paths)), draw(JSON_VALUES), delete=False)
    if how == "delete":
        return event, _set(base, draw(st.sampled_from(paths)), None, delete=True)
    if how == "cut":
        return event, raw[: draw(st.integers(0, len(raw) - 1))]
    if how == "deep":
        depth = draw(st.integers(50, 3000))
        inner = b"[" * depth + b"]" * depth
        return event, raw[:-1] + b', "nested": ' + inner + b"}"
    at = draw(st.integers(0, len(raw) - 1))
    return event, raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1 :]


# -- the service ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    home = tmp_path_factory.mktemp("fuzz")
    repo = home / "workflows-repo"
    (repo / "workflows").mkdir(parents=True)
    (repo / "agents").mkdir()
    (repo / "workflows" / "deploy.yaml").write_text(WORKFLOW)
    port = free_port()
    (home / "runner.yaml").write_text(
        f"listen: {{port: {port}}}\n"
        f"sources: [{{name: main, url: '{repo}'}}]\n"
        "rate_limits: {webhooks: 100000/minute}\n"
        "forges:\n"
        "  - {name: github, kind: github, webhook_secret_env: GH_SECRET}\n"
        "  - {name: gitlab, kind: gitlab, webhook_secret_env: GL_TOKEN}\n"
        "  - {name: gitea, kind: gitea, webhook_secret_env: GT_SECRET}\n"
        "generic_webhook_secret_env: GENERIC\n"
    )
    log = (home / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "serve"],
        cwd=home,
        env={**os.environ, **ENV, "RUNNER_LOG_LEVEL": "INFO"},
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # ready: the workflow is applied, so the generic hook finds it
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError((home / "serve.log").read_text())
        time.sleep(0.1)
    try:
        yield base, home
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()
        text = (home / "serve.log").read_text()
        assert "Traceback" not in text, text


def _headers(receiver: str, event: str, body: bytes, delivery: str) -> dict[str, str]:
    def digest(secret: str) -> str:
        return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()

    headers = {"Content-Type": "application/json"}
    if receiver == "github":
        sig = "sha256=" + digest(ENV["GH_SECRET"])
        return headers | {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": sig,
        }
    if receiver == "gitlab":
        return headers | {
            "X-Gitlab-Event": event,
            "X-Gitlab-Event-UUID": delivery,
            "X-Gitlab-Token": ENV["GL_TOKEN"],
        }
    if receiver == "gitea":
        return headers | {
            "X-Gitea-Event": event,
            "X-Gitea-Delivery": delivery,
            "X-Gitea-Signature": digest(ENV["GT_SECRET"]),
        }
    sig = "sha256=" + digest(ENV["GENERIC"])
    return headers | {"X-Runner-Delivery": delivery, "X-Runner-Signature": sig}


def _handled(home: Path, receiver: str, delivery: str) -> tuple[str, str | None]:
    """The stored event's final (status, error), once the dispatcher is done with it."""
    forge = receiver  # the forges are named after their kind here
    deadline = time.monotonic() + 30
    while True:
        with sqlite3.connect(home / "runner.db", timeout=10) as db:
            row = db.execute(
                "SELECT status, error FROM events WHERE forge = ? AND delivery_id = ?",
                (forge, delivery),
            ).fetchone()
        if row is not None and row[0] != "pending":
            return row[0], row[1]
        assert time.monotonic() < deadline, f"{receiver} delivery {delivery} never handled: {row}"
        time.sleep(0.02)


def _deliver_and_check(base: str, home: Path, receiver: str, event: str, body: bytes) -> None:
    delivery = f"fuzz-{next(DELIVERIES)}"
    path = "/hooks/generic/deploy" if receiver == "generic" else f"/hooks/{receiver}"
    answer = httpx.post(
        base + path, content=body, headers=_headers(receiver, event, body, delivery), timeout=30
    )
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400:  # refused: the error shape, with a reason
        error = answer.json()["error"]
        assert error["code"], answer.text
        assert error["message"], answer.text
        return
    assert answer.status_code in (200, 202), answer.text
    if answer.json().get("status") == "duplicate":
        return
    status, error = _handled(home, receiver, delivery)
    assert status in ("done", "failed")
    if status == "failed":
        assert error, f"{receiver} delivery {delivery} failed without a reason"


@pytest.mark.parametrize("receiver", ["github", "gitlab", "gitea", "generic"])
def test_mutated_signed_payloads_never_crash_a_receiver(
    service: tuple[str, Path], receiver: str
) -> None:
    base, home = service

    @FUZZ
    @given(mutated(receiver))
    def deliver(case: tuple[str, bytes]) -> None:
        _deliver_and_check(base, home, receiver, *case)

    deliver()


# -- the validator --------------------------------------------------------------------------------

SOURCES = sorted((ROOT / "workflows-repo-example" / "workflows").glob("*.yaml"))
YAML_VALUES = st.one_of(
    JSON_VALUES,
    st.just("(" * 3000 + "true" + ")" * 3000),
    st.just("${{ " + "!" * 4000 + "true }}"),
    st.just("${{ steps.nope.outputs.x }}"),
    st.integers(min_value=10**4000, max_value=10**4000 + 5).map(str).map(int),
)


@st.composite
def mutated_yaml(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SOURCES)).read_text()
    how = draw(st.sampled_from(["node", "node", "text", "cut"]))
    if how == "node":
        data = yaml.safe_load(text)
        path = draw(st.sampled_from(_paths(data, depth=6)))
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = draw(YAML_VALUES)
        return yaml.safe_dump(data, sort_keys=False, width=10**9)
    if how == "cut":
        return text[: draw(st.integers(0, len(text)))]
    at = draw(st.integers(0, len(text) - 1))
    insert = draw(
        st.sampled_from(["", ":", "-", "[", "{", "&a", "*a", "!!python/object", "\t", "'"])
    )
    return text[:at] + insert + draw(st.text(max_size=3)) + text[at + 1 :]


@FUZZ
@given(mutated_yaml())
def test_mutated_workflows_never_crash_runner_validate(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "workflows").mkdir()
        (root / "agents").mkdir()
        (root / "workflows" / "w.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        result = CliRunner().invoke(cli, ["validate", folder])
    assert result.exit_code in (0, 1), (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    if result.exit_code == 1:  # each error where to fix it
        errors = [line for line in result.output.splitlines() if line.startswith(folder)]
        assert errors, result.output
        assert all(line.startswith(f"{folder}/workflows/w.yaml:") for line in errors), result.output
