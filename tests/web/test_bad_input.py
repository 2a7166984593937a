"""Bad bodies over real HTTP (`runner serve --role web`), correctly signed: not JSON, not an
object, nested too deep, or a forge event without the fields the runner reads. Each is a 400 in
the error shape, saying what is wrong, counted in `runner_webhook_deliveries_total{result}`, and
not stored; the API's bodies get the same 400s."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.npm import github_examples
from tests.web.service import serve

FIXTURES = Path(__file__).parents[1] / "fixtures"
ENV = {
    "GH_SECRET": "gh-bad-input-secret",
    "GL_TOKEN": "gl-bad-input-token",
    "GT_SECRET": "gt-bad-input-secret",
    "GENERIC": "generic-bad-input-secret",
    "T_OPERATOR": "operator-t0ken-bad-input",
}
CONFIG = """\
forges:
  - {name: github, kind: github, webhook_secret_env: GH_SECRET}
  - {name: gitlab, kind: gitlab, webhook_secret_env: GL_TOKEN}
  - {name: gitea, kind: gitea, webhook_secret_env: GT_SECRET}
generic_webhook_secret_env: GENERIC
api:
  tokens: [{name: ci, role: operator, token_env: T_OPERATOR}]
"""
# forge -> (event header, the real payload it sends for that event)
EVENTS = {
    "github": ("push", json.dumps(github_examples("push")[0]).encode()),
    "gitlab": (
        "Merge Request Hook",
        (FIXTURES / "gitlab" / "merge_request_hook.json").read_bytes(),
    ),
    "gitea": ("pull_request", (FIXTURES / "gitea" / "pull_request.json").read_bytes()),
}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    home = tmp_path_factory.mktemp("bad-input")
    with serve(home, CONFIG, ENV) as base:
        yield base, home


def signed(forge: str, event: str, body: bytes, delivery: str) -> dict[str, str]:
    """The headers a forge (or a generic caller) sends with `body`, signed with its secret."""

    def digest(secret: str) -> str:
        return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()

    headers = {"Content-Type": "application/json"}
    if forge == "github":
        sig = "sha256=" + digest(ENV["GH_SECRET"])
        headers |= {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery}
        headers |= {"X-Hub-Signature-256": sig}
    elif forge == "gitlab":
        headers |= {"X-Gitlab-Event": event, "X-Gitlab-Event-UUID": delivery}
        headers |= {"X-Gitlab-Token": ENV["GL_TOKEN"]}
    elif forge == "gitea":
        headers |= {"X-Gitea-Event": event, "X-Gitea-Delivery": delivery}
        headers |= {"X-Gitea-Signature": digest(ENV["GT_SECRET"])}
    else:
        headers |= {"X-Runner-Delivery": delivery}
        headers |= {"X-Runner-Signature": "sha256=" + digest(ENV["GENERIC"])}
    return headers


def deliver(base: str, forge: str, event: str, body: bytes, delivery: str) -> httpx.Response:
    path = "/hooks/generic/deploy-check" if forge == "generic" else f"/hooks/{forge}"
    return httpx.post(base + path, content=body, headers=signed(forge, event, body, delivery))


def stored(home: Path) -> set[str]:
    with sqlite3.connect(home / "runner.db") as db:
        return {row[0] for row in db.execute("SELECT delivery_id FROM events")}


def counted(base: str, result: str) -> float:
    """The sum of runner_webhook_deliveries_total over the samples with this result."""
    total = 0.0
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith("runner_webhook_deliveries_total{") and f'result="{result}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def refused(answer: httpx.Response, code: str) -> str:
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == code
    return str(error["message"])


NESTED = b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}"
BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("truncated", b'{"ref": "refs/heads/main", "after": ', "bad_json"),
    ("array", b"[1, 2, 3]", "bad_json"),
    ("string", b'"push"', "bad_json"),
    ("not utf-8", b'{"ref": "\xff\xfe"}', "bad_json"),
    ("long number", b'{"number": ' + b"9" * 5000 + b"}", "bad_json"),
    ("nested", NESTED, "too_deep"),
]


@pytest.mark.parametrize("forge", ["github", "gitlab", "gitea", "generic"])
@pytest.mark.parametrize(("what", "body", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_a_signed_body_that_is_not_a_json_object_is_400_and_not_stored(
    service: tuple[str, Path], forge: str, what: str, body: bytes, code: str
) -> None:
    base, home = service
    event = EVENTS.get(forge, ("", b""))[0]
    delivery = f"bad-{forge}-{what}"
    before = counted(base, code)
    message = refused(deliver(base, forge, event, body, delivery), code)
    assert "not stored" in message
    if code == "too_deep":
        assert "deeper than 64 levels" in message
    assert delivery not in stored(home)
    assert counted(base, code) == before + 1


def mutated(body: bytes, path: list[str], value: Any) -> bytes:
    data = json.loads(body)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("forge", "path", "value", "field"),
    [
        ("github", ["repository", "full_name"], 7, "/repository/full_name"),
        ("github", ["after"], ["a", "list"], "/after"),
        ("gitlab", ["object_attributes", "iid"], "one", "/object_attributes/iid"),
        ("gitlab", ["project"], None, "/project"),
        ("gitea", ["pull_request", "head"], "main", "/pull_request/head"),
        ("gitea", ["number"], -3, "/number"),
    ],
)
def test_a_forge_event_without_the_fields_the_runner_reads_is_400_naming_the_field(
    service: tuple[str, Path], forge: str, path: list[str], value: Any, field: str
) -> None:
    base, home = service
    event, real = EVENTS[forge]
    delivery = f"invalid-{forge}-{field}"
    before = counted(base, "invalid_payload")
    message = refused(
        deliver(base, forge, event, mutated(real, path, value), delivery), "invalid_payload"
    )
    assert f"{field}:" in message
    assert delivery not in stored(home)
    assert counted(base, "invalid_payload") == before + 1
    # the real payload, untouched, is accepted
    good = deliver(base, forge, event, real, f"good-{forge}-{field}")
    assert good.status_code in (200, 202), good.text


def test_a_field_missing_is_named(service: tuple[str, Path]) -> None:
    base, _ = service
    event, real = EVENTS["github"]
    data = json.loads(real)
    del data["ref"]
    message = refused(
        deliver(base, "github", event, json.dumps(data).encode(), "no-ref"), "invalid_payload"
    )
    assert "missing required property 'ref'" in message or "'ref'" in message


@pytest.mark.parametrize(("body", "why"), [(NESTED, "deeper than"), (b"[]", "JSON object")])
def test_api_bodies_get_the_same_400(service: tuple[str, Path], body: bytes, why: str) -> None:
    base, _ = service
    answer = httpx.post(
        base + "/api/workflows/anything/runs",
        content=body,
        headers={
            "Authorization": f"Bearer {ENV['T_OPERATOR']}",
            "Content-Type": "application/json",
        },
    )
    assert answer.status_code == 400, answer.text
    assert why in answer.json()["error"]["message"]
