"""Attacks on the web and forge side of issue 15 (approvals bound to their channel and their
comment, the author ban, the append-only audit trail, client identity from trusted proxies),
by a reviewer who did not build it. Every test asserts the SECURE behaviour: a failing test
is a finding.

Most attacks go through the product's own entry points in-process, to stay fast: signed
deliveries POSTed to the real webhook receiver (`/hooks/<forge>`, signature checked), stored,
then handled by the real dispatcher and comment handler against the fake GitHub / GitLab APIs;
API decisions through the real REST API with bearer tokens. Gates are opened directly in the
store (as the engine opens them) so that no agent has to run. The database attacks use a plain
connection to SQLite or to a real PostgreSQL, as someone holding the database credentials
would.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from runner.comments import CommentHandler
from runner.dispatch import Dispatcher
from runner.errors import UsageError
from runner.forges.base import verifier
from runner.forges.github import GiteaClient, GitHubClient
from runner.forges.gitlab import GitLabClient
from runner.model import Approval, ApprovalPolicy, Decision, Run, RunRequest
from runner.revisions import BundleLoader
from runner.settings import load_settings
from runner.spec.repo import builtin_agents
from runner.store.base import Store, open_store
from runner.web.api import Api
from runner.web.app import create_app
from runner.web.auth import Principal, Tokens
from runner.web.hooks import Hooks, Receiver
from tests.conftest import apply_example
from tests.fake_github import FakeGitHub, fake_github
from tests.fake_gitlab import FakeGitLab, fake_gitlab

pytestmark = pytest.mark.anyio

REPO = "acme/app"
SECRETS = {"github": "gh-attack-secret", "gitea": "gt-attack-secret", "gitlab": "gl-attack-token"}
# API tokens: (name, role); the token is "tok-<name>"
TOKENS = [("alice", "approver"), ("erin", "approver"), ("bob", "approver"), ("ops", "admin")]
APPROVERS = ("alice", "bob", "carol", "dave", "erin", "mallory")
_ids = itertools.count(70_000)


def sha(n: int) -> str:
    return f"{n:040x}"


def iso(moment: float, tz: timezone = UTC) -> str:
    return datetime.fromtimestamp(moment, tz).isoformat()


# -- payloads, as the forges send them ------------------------------------------------------------
def gh_comment(
    text: str,
    user: str,
    *,
    number: int,
    repo: str = REPO,
    comment_id: Any = None,
    written: Any = "now",
    gitea: bool = False,
    action: str = "created",
    user_type: str = "User",
) -> dict[str, Any]:
    """A pull request comment as GitHub (or Gitea) sends it; `written=None` leaves out
    `created_at`."""
    comment_id = next(_ids) if comment_id is None else comment_id
    comment: dict[str, Any] = {
        "id": comment_id,
        "body": text,
        "user": {"login": user, "type": user_type},
        "html_url": f"https://forge.example/{repo}/pull/{number}#issuecomment-{comment_id}",
    }
    if written is not None:
        comment["created_at"] = iso(time.time()) if written == "now" else written
    payload: dict[str, Any] = {
        "action": action,
        "issue": {"number": number, "user": {"login": "someone"}},
        "comment": comment,
        "repository": {"full_name": repo, "clone_url": f"https://forge.example/{repo}.git"},
        "sender": {"login": user, "type": user_type},
    }
    if gitea:
        payload["is_pull"] = True
    else:
        payload["issue"]["pull_request"] = {"url": "u"}
    return payload


def gh_pull(number: int, action: str, *, head: str, author: str, sender: str) -> dict[str, Any]:
    return {
        "action": action,
        "number": number,
        "pull_request": {
            "number": number,
            "head": {"sha": head, "ref": f"feature-{number}"},
            "base": {"ref": "main"},
            "user": {"login": author},
        },
        "repository": {"full_name": REPO, "clone_url": f"https://forge.example/{REPO}.git"},
        "sender": {"login": sender, "type": "User"},
    }


def gh_push(branch: str, *, after: str, sender: str, before: str | None = None) -> dict[str, Any]:
    return {
        "ref": f"refs/heads/{branch}",
        "before": before or sha(1),
        "after": after,
        "repository": {"full_name": REPO, "clone_url": f"https://forge.example/{REPO}.git"},
        "pusher": {"name": sender},
        "sender": {"login": sender, "type": "User"},
        "commits": [],
    }


GL_PROJECT = {"path_with_namespace": REPO, "git_http_url": f"https://gitlab.example/{REPO}.git"}


def gl_note(
    text: str, user: str, *, iid: int, head: str, written: float | None = None
) -> dict[str, Any]:
    note_id = next(_ids)
    at = datetime.fromtimestamp(written or time.time(), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return {
        "object_kind": "note",
        "event_type": "note",
        "user": {"id": 9, "name": user, "username": user, "email": "[REDACTED]"},
        "project": GL_PROJECT,
        "object_attributes": {
            "id": note_id,
            "note": text,
            "noteable_type": "MergeRequest",
            "action": "create",
            "system": False,
            "created_at": at,
            "updated_at": at,
            "url": f"https://gitlab.example/{REPO}/-/merge_requests/{iid}#note_{note_id}",
        },
        "merge_request": {"iid": iid, "last_commit": {"id": head}},
    }


def gl_merge_request(iid: int, action: str, *, head: str, user: str) -> dict[str, Any]:
    return {
        "object_kind": "merge_request",
        "event_type": "merge_request",
        "user": {"id": 9, "name": user, "username": user},
        "project": GL_PROJECT,
        "object_attributes": {
            "iid": iid,
            "action": action,
            "last_commit": {"id": head},
            "target_branch": "main",
            "source_branch": f"feature-{iid}",
        },
    }


def gl_push(branch: str, *, after: str, user: str) -> dict[str, Any]:
    return {
        "object_kind": "push",
        "ref": f"refs/heads/{branch}",
        "before": sha(1),
        "after": after,
        "checkout_sha": after,
        "user_username": user,
        "project": GL_PROJECT,
        "commits": [],
        "total_commits_count": 1,
    }


def signed(forge: str, event: str, body: bytes, delivery: str) -> dict[str, str]:
    if forge == "gitlab":
        return {
            "X-Gitlab-Event": event,
            "X-Gitlab-Event-UUID": delivery,
            "X-Gitlab-Token": SECRETS["gitlab"],
        }
    digest = hmac.new(SECRETS[forge].encode(), body, hashlib.sha256).hexdigest()
    if forge == "gitea":
        return {"X-Gitea-Event": event, "X-Gitea-Delivery": delivery, "X-Gitea-Signature": digest}
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": f"sha256={digest}",
    }


# -- the runner, in-process ------------------------------------------------------------------------
@dataclass
class Rig:
    store: Store
    http: httpx.AsyncClient
    dispatcher: Dispatcher
    github: FakeGitHub
    gitlab: FakeGitLab | None = None
    failures: list[str] = field(default_factory=list)

    async def deliver(
        self, forge: str, event: str, payload: dict[str, Any] | bytes, *, delivery: str = ""
    ) -> httpx.Response:
        """POST a signed delivery to /hooks/<forge>, then let the dispatcher handle what was
        stored (as its loop does: an exception fails that event only)."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        delivery = delivery or f"{forge}-{next(_ids)}"
        answer = await self.http.post(
            f"/hooks/{forge}",
            content=body,
            headers={"Content-Type": "application/json", **signed(forge, event, body, delivery)},
        )
        await self.pump()
        return answer

    async def pump(self) -> None:
        while events := await self.store.claim_events("attacker", 60.0, 50):
            for event in events:
                try:
                    await self.dispatcher.handle(event)
                except Exception as exc:
                    self.failures.append(f"{event.event_type}: {type(exc).__name__}: {exc}")
                    await self.store.finish_event(event.id, error=str(exc))
                else:
                    await self.store.finish_event(event.id)

    async def decide(self, approval_id: int, token: str, decision: str = "approve") -> int:
        answer = await self.http.post(
            f"/api/approvals/{approval_id}/decision",
            json={"decision": decision},
            headers={"Authorization": f"Bearer tok-{token}"},
        )
        return answer.status_code

    async def status(self, approval_id: int) -> str:
        found = await self.store.get_approval(approval_id)
        assert found is not None
        return found.status

    def replies(self, number: int) -> list[str]:
        return [body for _, n, body in self.github.comments if n == number]

    async def gate(
        self,
        *,
        number: int,
        head: str,
        forge: str = "github",
        actor: str = "dev",
        author: str | None = "dev",
        approvers: tuple[str, ...] = APPROVERS,
        required: int = 1,
        opened: float | None = None,
    ) -> tuple[Run, Approval]:
        """A run of this PR waiting at a gate opened `opened` (default: 30 s ago), as the
        engine leaves it; the fake forge says the PR's head is `head` and its author `author`."""
        if forge in ("github", "gitea"):
            self.github.pulls[(REPO, number)] = {
                "head": {"sha": head},
                "user": {"login": author or "dev"},
            }
        trigger = {
            "event": "pull_request",
            "forge": forge,
            "repository": REPO,
            "sha": head,
            "actor": actor,
            "pull_request": {"number": number, "action": "opened", "author": author},
        }
        run, _ = await self.store.request_run(
            RunRequest(
                workflow="pr-security-review",
                source="main",
                revision="rev1",
                idempotency_key=f"gate-{next(_ids)}",
                trigger=trigger,
            )
        )
        await self.store.transition_run(run.id, "running")
        await self.store.transition_run(run.id, "waiting_approval")
        gate = await self.store.create_approval(
            Approval(
                id=0,
                run_id=run.id,
                step_id="patch",
                status="pending",
                policy=ApprovalPolicy(required=required, approvers=approvers),
                sha=head,
                revision="rev1",
                inputs_digest="sha256:x",
                requested_at=time.time() - 30 if opened is None else opened,
            )
        )
        return run, gate


@asynccontextmanager
async def rigged(
    database: str, github: FakeGitHub, gitlab: FakeGitLab | None = None
) -> AsyncIterator[Rig]:
    store = open_store(database)
    await store.open()
    await store.migrate()
    await apply_example(store)
    loader = BundleLoader(store.revision_documents, builtin_agents())
    clients: dict[str, Any] = {
        "github": GitHubClient(github.url, "gh-api-token"),
        "gitea": GiteaClient(github.url, "gt-api-token"),
    }
    kinds = {"github": "github", "gitea": "gitea"}
    if gitlab is not None:
        clients["gitlab"] = GitLabClient(gitlab.api_url, gitlab.token, backoff=0.01)
        kinds["gitlab"] = "gitlab"
    receivers = {
        name: Receiver(name=name, verifier=verifier(kind), secrets=[SECRETS[name]])
        for name, kind in kinds.items()
    }
    api = Api(
        store,
        loader,
        Tokens([(Principal(name=n, role=r), f"tok-{n}") for n, r in TOKENS]),  # type: ignore[arg-type]
        source_names=["main"],
        clients=clients,
    )
    app = create_app({}, hooks=Hooks(store, receivers), api=api)
    dispatcher = Dispatcher(
        store,
        loader,
        kinds=kinds,
        sources={},
        comments=CommentHandler(store, loader, clients),
        clients=clients,
    )
    transport = httpx.ASGITransport(app=app, client=("192.0.2.10", 40000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://runner") as http:
            yield Rig(store=store, http=http, dispatcher=dispatcher, github=github, gitlab=gitlab)
    finally:
        for client in clients.values():
            await client.close()
        await store.close()


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with fake_github() as fake:
        fake.writers = {"alice", "bob", "carol", "dave", "erin", "mallory", "dev"}
        yield fake


@pytest.fixture
async def rig(tmp_path: Path, github: FakeGitHub) -> AsyncIterator[Rig]:
    async with rigged(f"sqlite:///{tmp_path}/runner.db", github) as running:
        yield running


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/runner.db"
    return str(request.getfixturevalue("postgres_url"))


# =================================================================================================
# 1. A comment acts only on runs of the same forge, repository and pull request
# =================================================================================================
async def test_a_comment_on_another_repository_with_the_same_number_approves_nothing(
    rig: Rig,
) -> None:
    """PR numbers collide between repositories of one forge: alice's `/approve` on
    acme/other#20 must not open the gate of acme/app#20."""
    _, gate = await rig.gate(number=20, head=sha(20))
    rig.github.pulls[("acme/other", 20)] = {"head": {"sha": sha(20)}, "user": {"login": "x"}}
    other = gh_comment("/approve", "alice", number=20, repo="acme/other")
    assert (await rig.deliver("github", "issue_comment", other)).status_code == 202
    assert await rig.status(gate.id) == "pending"

    same = gh_comment("/approve", "alice", number=20)
    assert (await rig.deliver("github", "issue_comment", same)).status_code == 202
    assert await rig.status(gate.id) == "approved"


async def test_a_run_of_another_pull_request_named_in_the_command_is_not_touched(
    rig: Rig,
) -> None:
    run, gate = await rig.gate(number=21, head=sha(21))
    await rig.gate(number=22, head=sha(22))
    named = gh_comment(f"/approve {run.id}", "alice", number=22)
    await rig.deliver("github", "issue_comment", named)
    assert await rig.status(gate.id) == "pending"


async def test_the_same_comment_id_on_another_forge_is_another_comment(rig: Rig) -> None:
    """Comment ids are only unique per forge: a Gitea comment 4242 must neither approve the
    GitHub run nor spend GitHub's comment 4242."""
    _, gate = await rig.gate(number=23, head=sha(23))
    crossed = gh_comment("/approve", "alice", number=23, comment_id=4242, gitea=True)
    await rig.deliver("gitea", "issue_comment", crossed)
    assert await rig.status(gate.id) == "pending"
    real = gh_comment("/approve", "alice", number=23, comment_id=4242)
    await rig.deliver("github", "issue_comment", real)
    assert await rig.status(gate.id) == "approved"


async def test_a_comment_id_as_a_string_is_the_same_comment_as_the_number(rig: Rig) -> None:
    """The forge's id is the key, whatever JSON type carries it: 4343 and "4343" are one
    comment, acted on once."""
    _, first = await rig.gate(number=24, head=sha(24))
    await rig.deliver(
        "github", "issue_comment", gh_comment("/approve", "alice", number=24, comment_id=4343)
    )
    assert await rig.status(first.id) == "approved"
    _, second = await rig.gate(number=24, head=sha(24))
    again = gh_comment("/approve", "alice", number=24, comment_id="4343")
    await rig.deliver("github", "issue_comment", again)
    assert await rig.status(second.id) == "pending"


# =================================================================================================
# 2. Each comment acts once, and only if written after the gate opened
# =================================================================================================
@pytest.mark.parametrize(
    "written",
    [None, "", 1_900_000_000, "yesterday", "2099-13-45T99:00:00Z"],
    ids=["missing", "empty", "epoch-number", "words", "impossible-date"],
)
async def test_a_comment_without_a_readable_creation_time_never_approves(
    rig: Rig, written: Any
) -> None:
    _, gate = await rig.gate(number=25, head=sha(25))
    comment = gh_comment("/approve", "alice", number=25, written=written)
    assert (await rig.deliver("github", "issue_comment", comment)).status_code == 202
    assert await rig.status(gate.id) == "pending"
    assert rig.failures == []  # refused with an answer, not crashed
    assert any("written before approval" in r for r in rig.replies(25))


@pytest.mark.parametrize(
    "form",
    ["utc-offset", "tokyo", "new-york", "gitlab-utc", "naive-utc", "zulu-millis"],
)
async def test_a_comment_written_before_the_gate_never_approves_whatever_the_time_format(
    rig: Rig, form: str
) -> None:
    """The same instant (an hour before the gate opened) written the ways forges write times:
    an offset that makes the local digits look later must not make the comment later."""
    opened = time.time() - 60
    before = opened - 3600
    written = {
        "utc-offset": iso(before),
        "tokyo": iso(before, timezone(timedelta(hours=9))),
        "new-york": iso(before, timezone(timedelta(hours=-5))),
        "gitlab-utc": datetime.fromtimestamp(before, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "naive-utc": datetime.fromtimestamp(before, UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "zulu-millis": datetime.fromtimestamp(before, UTC).strftime("%Y-%m-%dT%H:%M:%S.123Z"),
    }[form]
    _, gate = await rig.gate(number=26, head=sha(26), opened=opened)
    await rig.deliver(
        "github", "issue_comment", gh_comment("/approve", "alice", number=26, written=written)
    )
    assert await rig.status(gate.id) == "pending"
    fresh = gh_comment(
        "/approve", "alice", number=26, written=iso(time.time(), timezone(timedelta(hours=9)))
    )
    await rig.deliver("github", "issue_comment", fresh)
    assert await rig.status(gate.id) == "approved"


async def test_edited_comments_and_bots_never_approve(rig: Rig) -> None:
    _, gate = await rig.gate(number=27, head=sha(27))
    edited = gh_comment("/approve", "alice", number=27, action="edited")
    bot = gh_comment("/approve", "alice", number=27, user_type="Bot")
    deleted = gh_comment("/approve", "alice", number=27, action="deleted")
    for payload in (edited, bot, deleted):
        await rig.deliver("github", "issue_comment", payload)
    assert await rig.status(gate.id) == "pending"


async def test_a_gitlab_bot_user_never_approves(tmp_path: Path, github: FakeGitHub) -> None:
    """GitLab project and group access tokens act through bot users (`project_<id>_bot_<x>`)
    that may hold the Developer role. SPEC §5: comments from bots are ignored. GitLab's note
    hook carries no bot flag, so a bot that echoes text (a CI job posting a report built from
    the merge request's content) must still not approve."""
    with fake_gitlab() as gitlab:
        bot = "project_42_bot_7c1f0e"
        gitlab.users = {bot: 42, "alice": 2, "dev": 3}
        gitlab.members = {REPO: {bot: 30, "alice": 30, "dev": 30}}
        gitlab.merge_requests[(REPO, 28)] = {
            "iid": 28,
            "sha": sha(28),
            "author": {"username": "dev"},
        }
        async with rigged(f"sqlite:///{tmp_path}/gl.db", github, gitlab) as rig:
            _, gate = await rig.gate(number=28, head=sha(28), forge="gitlab", approvers=())
            note = gl_note("CI report for this MR:\n/approve", bot, iid=28, head=sha(28))
            assert (await rig.deliver("gitlab", "Note Hook", note)).status_code == 202
            assert await rig.status(gate.id) == "pending"
            human = gl_note("/approve", "alice", iid=28, head=sha(28))
            await rig.deliver("gitlab", "Note Hook", human)
            assert await rig.status(gate.id) == "approved"


@pytest.mark.parametrize(
    "separator",
    ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\r"],
    ids=["LS", "PS", "NEL", "VT", "FF", "FS", "GS", "RS", "CR"],
)
async def test_an_approve_inside_a_quote_split_by_an_odd_line_break_is_not_a_command(
    rig: Rig, separator: str
) -> None:
    """mallory writes `fine by me<U+2028>/approve`; the forge renders it as one line. alice,
    an approver, quote-replies to disagree; the quote prefixes `> ` to each *rendered* line.
    The runner splits lines with str.splitlines(), which also breaks at U+2028, NEL, VT, FF,
    FS/GS/RS and a lone CR, so the quoted `/approve` becomes alice's command."""
    _, gate = await rig.gate(number=29, head=sha(29))
    quoted = f"> @mallory wrote: fine by me{separator}/approve\n\nNo, this is not fine."
    await rig.deliver("github", "issue_comment", gh_comment(quoted, "alice", number=29))
    assert await rig.status(gate.id) == "pending"


async def test_plain_quotes_and_fences_are_not_commands(rig: Rig) -> None:
    _, gate = await rig.gate(number=30, head=sha(30))
    for text in (
        "> /approve",
        "  >  /approve",
        "> > /approve",
        "```\n/approve\n```",
        "~~~\n/approve\n~~~",
    ):
        await rig.deliver("github", "issue_comment", gh_comment(text, "alice", number=30))
    assert await rig.status(gate.id) == "pending"


async def test_an_approve_in_a_tilde_fence_that_holds_backticks_is_not_a_command(
    rig: Rig,
) -> None:
    """A `~~~` fence closes only on `~~~` (CommonMark): the ``` line inside is code, and so is
    `/approve` after it. The parser toggles on either fence kind."""
    _, gate = await rig.gate(number=31, head=sha(31))
    pasted = "Log of the bot that asked me:\n~~~\n```\n/approve\n~~~\nI disagree."
    await rig.deliver("github", "issue_comment", gh_comment(pasted, "alice", number=31))
    assert await rig.status(gate.id) == "pending"


async def test_replaying_an_old_pull_request_delivery_neither_voids_the_head_nor_runs_old_code(
    rig: Rig,
) -> None:
    """The delivery id header is not signed (the reason comments are claimed by their id).
    An old signed `synchronize` body re-sent under a fresh id must not cancel the runs that
    wait for approval of the current head, nor start a run of the superseded head."""
    await rig.deliver(
        "github", "pull_request", gh_pull(32, "opened", head=sha(320), author="dev", sender="dev")
    )
    old = gh_pull(32, "synchronize", head=sha(321), author="dev", sender="dev")
    await rig.deliver("github", "pull_request", old)
    await rig.deliver(
        "github",
        "pull_request",
        gh_pull(32, "synchronize", head=sha(322), author="dev", sender="dev"),
    )
    current, gate = await rig.gate(number=32, head=sha(322))
    old_runs = [
        r for r in await rig.store.list_runs(limit=1000) if r.trigger.get("sha") == sha(321)
    ]

    await rig.deliver("github", "pull_request", old, delivery="replayed-by-attacker")

    problems = []
    waiting = await rig.store.get_run(current.id)
    if waiting is None or waiting.status != "waiting_approval":
        problems.append(f"the current head's run is {waiting and waiting.status}")
    now_old = [r for r in await rig.store.list_runs(limit=1000) if r.trigger.get("sha") == sha(321)]
    if len(now_old) != len(old_runs):
        problems.append(f"{len(now_old) - len(old_runs)} new run(s) of the superseded head")
    assert problems == []
    assert await rig.status(gate.id) == "pending"


async def test_a_forge_outage_does_not_burn_the_approvers_comment(rig: Rig) -> None:
    """The comment is claimed before the forge is asked for the PR's head. When that call
    fails, the event fails, and the comment is spent: the same comment redelivered once the
    forge answers is dropped as a replay, and nobody is told. A comment that acted on nothing
    must not count as acted on."""
    _, gate = await rig.gate(number=33, head=sha(33))
    del rig.github.pulls[(REPO, 33)]  # the forge cannot answer about the PR for a moment
    comment = json.dumps(gh_comment("/approve", "alice", number=33)).encode()
    await rig.deliver("github", "issue_comment", comment)
    assert await rig.status(gate.id) == "pending"

    rig.github.pulls[(REPO, 33)] = {"head": {"sha": sha(33)}, "user": {"login": "dev"}}
    await rig.deliver("github", "issue_comment", comment, delivery="github-redelivery")
    assert await rig.status(gate.id) == "approved"


async def test_a_run_command_with_bad_yaml_is_answered_and_the_other_commands_still_act(
    rig: Rig,
) -> None:
    """`/run WORKFLOW key=[` raises yaml's error out of the parser: the whole comment is
    dropped (the event fails), the `/approve` on the next line with it, and no reply says
    why."""
    _, gate = await rig.gate(number=34, head=sha(34))
    text = "/run pr-security-review threshold=[\n/approve"
    await rig.deliver("github", "issue_comment", gh_comment(text, "alice", number=34))
    assert rig.failures == []
    assert await rig.status(gate.id) == "approved"
    assert any("threshold" in r for r in rig.replies(34))


async def test_a_run_command_with_a_date_input_is_answered(rig: Rig) -> None:
    """`/run` reads values as YAML: `note=2024-01-01` is a date, which JSON cannot store. The
    commenter must get an answer (a run, or an error), not silence."""
    rig.github.pulls[(REPO, 35)] = {"head": {"sha": sha(35)}, "user": {"login": "dev"}}
    text = "/run pr-security-review note=2024-01-01"
    await rig.deliver("github", "issue_comment", gh_comment(text, "alice", number=35))
    assert rig.failures == []
    assert rig.replies(35), "no answer to the /run command"


# =================================================================================================
# 3. The author ban
# =================================================================================================
async def test_whoever_pushed_the_head_before_the_pull_request_was_opened_may_not_approve(
    rig: Rig,
) -> None:
    """mallory (a listed approver) pushes her change to a branch with a commit e-mail linked
    to no GitHub account; alice opens the pull request from that branch. The signed push
    delivery says mallory pushed the head, but only `opened`/`synchronize` senders are
    recorded, so mallory approves her own code."""
    head = sha(40)
    await rig.deliver("github", "push", gh_push("feature-40", after=head, sender="mallory"))
    opened = gh_pull(40, "opened", head=head, author="alice", sender="alice")
    await rig.deliver("github", "pull_request", opened)
    _, gate = await rig.gate(number=40, head=head, actor="alice", author="alice")
    # GitHub links the commit's e-mail to no account: author and committer are null

    own = gh_comment("/approve", "mallory", number=40)
    await rig.deliver("github", "issue_comment", own)
    assert await rig.status(gate.id) == "pending", "the head's pusher approved her own change"
    await rig.deliver("github", "issue_comment", gh_comment("/approve", "carol", number=40))
    assert await rig.status(gate.id) == "approved"


async def test_gitlab_whoever_pushed_the_head_before_the_merge_request_was_opened_may_not_approve(
    tmp_path: Path, github: FakeGitHub
) -> None:
    """The same on GitLab, where the pusher record is the only signal (commit authors are not
    matched at all): mallory's Push Hook, then alice opens the merge request."""
    head = sha(41)
    with fake_gitlab() as gitlab:
        gitlab.users = {"mallory": 5, "alice": 6, "carol": 7}
        gitlab.members = {REPO: {"mallory": 30, "alice": 30, "carol": 30}}
        gitlab.merge_requests[(REPO, 41)] = {
            "iid": 41,
            "sha": head,
            "author": {"username": "alice"},
        }
        async with rigged(f"sqlite:///{tmp_path}/gl.db", github, gitlab) as rig:
            await rig.deliver(
                "gitlab", "Push Hook", gl_push("feature-41", after=head, user="mallory")
            )
            await rig.deliver(
                "gitlab",
                "Merge Request Hook",
                gl_merge_request(41, "open", head=head, user="alice"),
            )
            _, gate = await rig.gate(
                number=41, head=head, forge="gitlab", actor="alice", author=None
            )
            await rig.deliver(
                "gitlab", "Note Hook", gl_note("/approve", "mallory", iid=41, head=head)
            )
            assert await rig.status(gate.id) == "pending", "the pusher approved her own change"
            await rig.deliver(
                "gitlab", "Note Hook", gl_note("/approve", "carol", iid=41, head=head)
            )
            assert await rig.status(gate.id) == "approved"


async def test_the_head_commits_author_may_not_approve_through_the_api(rig: Rig) -> None:
    """GitHub names erin as the head commit's author; bob pushed it and opened the PR. A
    `/approve` from erin is refused; the same decision through the REST API (token `erin`,
    "under the same policy as PR comments") must be refused too."""
    head = sha(42)
    rig.github.commits[(REPO, head)] = {"author": "erin", "committer": "erin"}
    await rig.deliver(
        "github", "pull_request", gh_pull(42, "opened", head=head, author="bob", sender="bob")
    )
    _, gate = await rig.gate(number=42, head=head, actor="bob", author="bob")
    await rig.deliver("github", "issue_comment", gh_comment("/approve", "erin", number=42))
    assert await rig.status(gate.id) == "pending"  # the comment path holds

    assert await rig.decide(gate.id, "erin") == 403, "the head commit's author approved via API"
    assert await rig.status(gate.id) == "pending"


async def test_the_pull_request_author_in_another_case_may_not_approve_through_the_api(
    rig: Rig,
) -> None:
    head = sha(43)
    await rig.deliver(
        "github", "pull_request", gh_pull(43, "opened", head=head, author="ALICE", sender="ALICE")
    )
    _, gate = await rig.gate(number=43, head=head, actor="ALICE", author="ALICE")
    assert await rig.decide(gate.id, "alice") == 403
    assert await rig.status(gate.id) == "pending"


async def test_one_person_in_two_cases_is_not_two_approvers(rig: Rig) -> None:
    """`required: 2` means two people. GitHub spells the login `Alice`; the API token for the
    same person is configured as `alice`. The policy compares names without case, the count
    of distinct approvers (in Python and in the database trigger) does not."""
    head = sha(44)
    _, gate = await rig.gate(number=44, head=head, approvers=("alice", "bob"), required=2)
    await rig.deliver("github", "issue_comment", gh_comment("/approve", "Alice", number=44))
    assert await rig.status(gate.id) == "pending"
    await rig.decide(gate.id, "alice")
    assert await rig.status(gate.id) == "pending", "one person counted as two approvers"
    assert await rig.decide(gate.id, "bob") == 200
    assert await rig.status(gate.id) == "approved"


async def test_concurrent_approvals_by_one_person_count_once(
    database: str, github: FakeGitHub
) -> None:
    async with rigged(database, github) as rig:
        _, gate = await rig.gate(number=45, head=sha(45), approvers=("alice", "bob"), required=2)
        codes = await asyncio.gather(*(rig.decide(gate.id, "alice") for _ in range(8)))
        assert set(codes) <= {200, 409}
        assert await rig.status(gate.id) == "pending"
        both = await asyncio.gather(
            rig.decide(gate.id, "bob"), rig.decide(gate.id, "bob"), rig.decide(gate.id, "alice")
        )
        assert set(both) <= {200, 409}
        assert await rig.status(gate.id) == "approved"
        late = await rig.decide(gate.id, "bob", "reject")
        assert late == 409
        assert await rig.status(gate.id) == "approved"


async def test_a_push_voids_the_old_heads_pending_gate(rig: Rig) -> None:
    """SPEC §5: "a new push voids pending approvals of the old head". The synchronize cancels
    the old run but leaves its gate `pending`: it is still listed as pending, an approver can
    still decide it through the API, and `/retry` of the cancelled run then ships the old head
    with that approval."""
    old, new = sha(460), sha(461)
    await rig.deliver(
        "github", "pull_request", gh_pull(46, "opened", head=old, author="dev", sender="dev")
    )
    run, gate = await rig.gate(number=46, head=old)
    rig.github.pulls[(REPO, 46)] = {"head": {"sha": new}, "user": {"login": "dev"}}
    await rig.deliver(
        "github", "pull_request", gh_pull(46, "synchronize", head=new, author="dev", sender="dev")
    )
    assert (await rig.store.get_run(run.id)).status == "cancelled"  # type: ignore[union-attr]
    assert await rig.status(gate.id) != "pending", "the old head's gate is still pending"
    assert await rig.decide(gate.id, "alice") in (403, 409)


async def test_a_deleted_branch_push_starts_and_records_nothing(rig: Rig) -> None:
    before = len(await rig.store.list_runs(limit=1000))
    deleted = gh_push("feature-47", after="0" * 40, sender="mallory", before=sha(47))
    deleted["deleted"] = True
    assert (await rig.deliver("github", "push", deleted)).status_code == 202
    assert rig.failures == []
    assert len(await rig.store.list_runs(limit=1000)) == before
    assert await rig.store.pushers("github", REPO, "0" * 40) == set()


# =================================================================================================
# 4. The audit trail in the database
# =================================================================================================
def tamper(database: str) -> Callable[..., str]:
    """Statements run in one transaction by someone holding the database credentials; the
    error they got ("" when everything went through)."""

    def run(*statements: str) -> str:
        try:
            if database.startswith("sqlite"):
                conn = sqlite3.connect(database.removeprefix("sqlite:///"))
                try:
                    for statement in statements:
                        conn.execute(statement)
                    conn.commit()
                finally:
                    conn.close()
            else:
                with psycopg.connect(database) as pg:
                    for statement in statements:
                        pg.execute(statement.encode())
        except (sqlite3.DatabaseError, psycopg.Error) as exc:
            return str(exc) or type(exc).__name__
        return ""

    return run


async def audited(database: str) -> dict[str, int]:
    """A store holding: a run waiting at a gate that has one of its two approvals (alice's,
    by comment), a pusher record and a comment claim; and a finished, approved run."""
    store = open_store(database)
    await store.open()
    await store.migrate()
    await apply_example(store)
    try:
        ids: dict[str, int] = {}
        for name, required in (("live", 2), ("done", 1)):
            trigger = {
                "event": "pull_request",
                "forge": "github",
                "repository": REPO,
                "sha": sha(50),
                "actor": "dev",
                "pull_request": {"number": 50, "author": "dev"},
            }
            run, _ = await store.request_run(
                RunRequest(
                    workflow="pr-security-review",
                    source="main",
                    revision="rev1",
                    idempotency_key=name,
                    trigger=trigger,
                )
            )
            await store.transition_run(run.id, "running")
            await store.transition_run(run.id, "waiting_approval")
            gate = await store.create_approval(
                Approval(
                    id=0,
                    run_id=run.id,
                    step_id="patch",
                    status="pending",
                    policy=ApprovalPolicy(required=required, approvers=("alice", "bob")),
                    sha=sha(50),
                    revision="rev1",
                    inputs_digest="sha256:x",
                    requested_at=1.0,
                )
            )
            decision = await store.add_decision(
                Decision(
                    approval_id=gate.id,
                    actor="alice",
                    decision="approve",
                    via="comment",
                    sha=sha(50),
                    revision="rev1",
                    inputs_digest="sha256:x",
                    forge="github",
                    comment_id=f"c-{name}",
                )
            )
            assert decision is not None
            ids[f"{name}_run"], ids[f"{name}_gate"] = run.id, gate.id
        await store.close_approval(ids["done_gate"], "approved")
        await store.transition_run(ids["done_run"], "running")
        await store.transition_run(ids["done_run"], "succeeded")
        await store.record_push("github", REPO, 50, sha(50), "mallory")
        assert await store.claim_comment(
            "github", "c-live", event_id=1, repository=REPO, number=50, actor="alice"
        )
        return ids
    finally:
        await store.close()


async def trail(database: str, ids: dict[str, int]) -> dict[str, Any]:
    store = open_store(database)
    await store.open()
    try:
        out: dict[str, Any] = {}
        for name in ("live", "done"):
            gate = await store.get_approval(ids[f"{name}_gate"])
            out[name] = (
                None if gate is None else gate.status,
                [(d.actor, d.decision) for d in await store.decisions(ids[f"{name}_gate"])],
            )
        run = await store.get_run(ids["live_run"])
        out["trigger"] = None if run is None else run.trigger
        out["pushers"] = await store.pushers("github", REPO, sha(50))
        return out
    finally:
        await store.close()


async def test_postgresql_truncate_cannot_empty_the_audit_trail(postgres_url: str) -> None:
    """Row triggers do not fire on TRUNCATE: one statement empties every decision, gate and
    run (no BEFORE TRUNCATE trigger, no revoked privilege)."""
    ids = await audited(postgres_url)
    attack = tamper(postgres_url)
    attack("TRUNCATE approval_decisions")
    attack("TRUNCATE runs CASCADE")
    after = await trail(postgres_url, ids)
    assert after["done"] == ("approved", [("alice", "approve")]), after
    assert after["live"] == ("pending", [("alice", "approve")]), after


async def test_sqlite_replace_cannot_flip_or_rewrite_a_gate(tmp_path: Path) -> None:
    """SQLite's REPLACE conflict resolution deletes the old row without firing DELETE triggers
    (recursive_triggers is off) and `approvals` has no INSERT trigger: a gate is approved with
    one of its two approvals, and a decided gate's decision is rewritten."""
    database = f"sqlite:///{tmp_path}/replace.db"
    ids = await audited(database)
    attack = tamper(database)
    columns = "id, run_id, step_id, status, policy, sha, revision, inputs_digest, requested_at"

    def as_status(status: str) -> str:
        return columns.replace("status", f"'{status}'")

    attack(
        f"INSERT OR REPLACE INTO approvals ({columns}) SELECT {as_status('approved')}"
        f" FROM approvals WHERE id = {ids['live_gate']}"
    )
    attack(
        f"REPLACE INTO approvals ({columns}) SELECT {as_status('pending')}"
        f" FROM approvals WHERE id = {ids['done_gate']}",
        "REPLACE INTO approval_decisions (id, approval_id, actor, decision, via, revision,"
        " inputs_digest, created_at) SELECT id, approval_id, 'bob', 'reject', via, revision,"
        " inputs_digest, created_at FROM approval_decisions"
        f" WHERE approval_id = {ids['done_gate']}",
        f"REPLACE INTO approvals ({columns}) SELECT {as_status('approved')}"
        f" FROM approvals WHERE id = {ids['done_gate']}",
    )
    after = await trail(database, ids)
    assert after["live"] == ("pending", [("alice", "approve")]), after
    assert after["done"] == ("approved", [("alice", "approve")]), after


async def test_a_live_run_cannot_pass_as_finished_to_lose_its_decisions(database: str) -> None:
    """`retention_runs` checks that a run is finished when it is listed, and `runs.status`
    can be updated freely: mark the waiting run succeeded, list it, delete its decisions,
    put it back. (Only `runner db prune` may remove anything, and only finished runs.)"""
    ids = await audited(database)
    live = ids["live_run"]
    attack = tamper(database)
    attack(
        f"UPDATE runs SET status = 'succeeded' WHERE id = {live}",
        f"INSERT INTO retention_runs (run_id) VALUES ({live})",
        f"DELETE FROM approval_decisions WHERE approval_id = {ids['live_gate']}",
        f"DELETE FROM retention_runs WHERE run_id = {live}",
        f"UPDATE runs SET status = 'waiting_approval' WHERE id = {live}",
    )
    after = await trail(database, ids)
    assert after["live"] == ("pending", [("alice", "approve")]), after


async def test_who_started_a_run_and_who_pushed_its_head_cannot_be_rewritten(
    database: str,
) -> None:
    """The author ban reads the run's recorded starter and PR author (`runs.trigger_info`)
    and the recorded pushers (`pull_pushes`); both can be rewritten or deleted, so an author
    erases herself before approving (and the trail no longer says who started the run)."""
    ids = await audited(database)
    attack = tamper(database)
    attack(
        f"UPDATE runs SET trigger_info = replace(trigger_info, 'dev', 'nobody')"
        f" WHERE id = {ids['live_run']}"
    )
    attack("DELETE FROM pull_pushes")
    after = await trail(database, ids)
    assert after["trigger"]["actor"] == "dev", after
    assert after["trigger"]["pull_request"]["author"] == "dev", after
    assert after["pushers"] == {"mallory"}, after


async def test_a_comment_claim_cannot_be_deleted(database: str) -> None:
    """`comment_commands` is what makes a comment act once; deleting the claim re-arms it."""
    ids = await audited(database)
    assert ids
    attack = tamper(database)
    attack("DELETE FROM comment_commands")
    store = open_store(database)
    await store.open()
    try:
        again = await store.claim_comment(
            "github", "c-live", event_id=99, repository=REPO, number=50, actor="alice"
        )
    finally:
        await store.close()
    assert not again, "a deleted claim let the same comment act again"


# =================================================================================================
# 5. Client identity: X-Forwarded-For from trusted proxies only
# =================================================================================================
LIMITS = {"reads": "2/minute", "allow": ["10.9.0.0/16"]}


async def reads(app: Any, peer: str, headers: list[tuple[str, str]], times: int) -> list[int]:
    transport = httpx.ASGITransport(app=app, client=(peer, 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://runner") as http:
        return [
            (await http.get("/openapi.json", headers=headers)).status_code for _ in range(times)
        ]


async def test_repeated_forwarded_headers_from_an_untrusted_peer_choose_nothing() -> None:
    app = create_app({}, rate_limits=LIMITS)
    spoof = [
        ("X-Forwarded-For", "10.9.1.1"),
        ("X-Forwarded-For", "10.9.1.2"),
        ("Forwarded", "for=10.9.1.1"),
        ("X-Real-IP", "10.9.1.1"),
    ]
    assert await reads(app, "203.0.113.9", spoof, 3) == [200, 200, 429]


async def test_an_ipv4_mapped_peer_is_one_client_with_its_ipv4_form() -> None:
    """A dual-stack socket shows IPv4 clients as ::ffff:a.b.c.d: the same bucket as a.b.c.d,
    and no way to reach the allowlist by writing a mapped address in a header."""
    app = create_app({}, rate_limits=LIMITS, trusted_proxies=["127.0.0.1"])
    assert await reads(app, "203.0.113.9", [], 1) == [200]
    assert await reads(app, "::ffff:203.0.113.9", [], 2) == [200, 429]
    mapped = [("X-Forwarded-For", "::ffff:10.9.1.1")]
    assert await reads(app, "::ffff:203.0.113.10", mapped, 3) == [200, 200, 429]
    # behind the trusted proxy, the proxy's own append (right-most) is the client
    chain = [("X-Forwarded-For", "::ffff:10.9.1.1"), ("X-Forwarded-For", "198.51.100.3")]
    assert await reads(app, "127.0.0.1", chain, 3) == [200, 200, 429]


async def test_trusting_every_address_is_not_a_way_to_let_clients_choose(tmp_path: Path) -> None:
    """`trusted_proxies: ["*"]` (uvicorn's `--forwarded-allow-ips` idiom) is accepted as
    configuration and makes uvicorn take the LEFT-most X-Forwarded-For entry, which the
    client writes, even behind a real proxy that appends the true address. It must be refused
    as configuration, or at least never let a client pick its address."""
    config = tmp_path / "runner.yaml"
    config.write_text('trusted_proxies: ["*"]\n')
    try:
        settings = load_settings(str(config), env={})
    except UsageError:
        return  # refused as configuration: secure
    app = create_app({}, rate_limits=LIMITS, trusted_proxies=settings.trusted_proxies)
    # the real proxy at 127.0.0.1 appended the client's true address, 203.0.113.9
    forged = [("X-Forwarded-For", "10.9.1.1, 203.0.113.9")]
    assert await reads(app, "127.0.0.1", forged, 3) == [200, 200, 429]


# =================================================================================================
# 6. Error handling: bad input gets an answer, nothing stops the loop
# =================================================================================================
async def test_malformed_signed_payloads_do_not_stop_the_dispatcher_loop(rig: Rig) -> None:
    """The real dispatcher loop (`run_forever`) over signed but malformed deliveries; the
    legitimate approval delivered after them still acts."""
    _, gate = await rig.gate(number=60, head=sha(60))
    bad: list[tuple[str, str, Any]] = [
        ("github", "issue_comment", b"[]"),
        ("github", "issue_comment", b"\xff\xfe"),
        ("github", "issue_comment", {"action": "created", "issue": [], "comment": "x"}),
        (
            "github",
            "issue_comment",
            {
                "action": "created",
                "issue": {"number": "abc", "pull_request": {}},
                "comment": {"user": "alice", "id": 5, "body": "/approve"},
            },
        ),
        ("github", "pull_request", {"action": "opened", "number": {"x": 1}}),
        ("github", "push", {"ref": None, "after": ["x"]}),
        ("gitea", "issue_comment", {"action": "created", "is_pull": True, "comment": None}),
        ("github", "issue_comment", gh_comment("/approve " + "9" * 400, "alice", number=60)),
        ("github", "issue_comment", gh_comment('/approve "unclosed', "alice", number=60)),
    ]
    for i, (forge, event, payload) in enumerate(bad):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        answer = await rig.http.post(
            f"/hooks/{forge}",
            content=body,
            headers={
                "Content-Type": "application/json",
                **signed(forge, event, body, f"bad-{next(_ids)}"),
            },
        )
        # not JSON objects, or without the fields read: refused with the reason (issue 16);
        # the last two are well-formed comments whose commands are bad
        assert answer.status_code == (400 if i < 7 else 202), answer.text
    good = json.dumps(gh_comment("/approve", "alice", number=60)).encode()
    await rig.http.post(
        "/hooks/github",
        content=good,
        headers={
            "Content-Type": "application/json",
            **signed("github", "issue_comment", good, "good-1"),
        },
    )
    stop = asyncio.Event()
    loop = asyncio.create_task(rig.dispatcher.run_forever(stop, "attacker", poll=0.05))
    try:
        for _ in range(200):
            if await rig.status(gate.id) == "approved":
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(loop, timeout=10)
    assert await rig.status(gate.id) == "approved"
    assert any("No closing quotation" in r for r in rig.replies(60))


async def test_bad_api_decisions_get_clear_errors(rig: Rig) -> None:
    _, gate = await rig.gate(number=61, head=sha(61))
    auth = {"Authorization": "Bearer tok-alice"}
    cases = [
        (f"/api/approvals/{gate.id}/decision", b"[]", 400),
        (f"/api/approvals/{gate.id}/decision", b'{"decision": "APPROVE"}', 400),
        (f"/api/approvals/{gate.id}/decision", b'{"decision": "approve", "comment": 5}', 400),
        ("/api/approvals/1e3/decision", b'{"decision": "approve"}', 400),
        ("/api/approvals/99999999999999999999/decision", b'{"decision": "approve"}', 400),
        ("/api/approvals/424242/decision", b'{"decision": "approve"}', 404),
    ]
    for path, body, code in cases:
        answer = await rig.http.post(
            path, content=body, headers={**auth, "Content-Type": "application/json"}
        )
        assert answer.status_code == code, (path, body, answer.text)
        assert answer.json()["error"]["message"]
    assert await rig.status(gate.id) == "pending"


async def test_prune_racing_an_approval_leaves_a_whole_run_or_a_whole_decision(
    database: str, github: FakeGitHub
) -> None:
    """A cancelled run keeps its pending gate (see the voiding test above), so retention and
    an approval may meet on it. Whatever wins, the API answers without a server error and the
    trail is whole: either the run is gone with everything of it, or it is there with the
    decision."""
    from runner.dag import control

    async with rigged(database, github) as rig:
        gates = []
        for number in range(70, 76):
            run, gate = await rig.gate(number=number, head=sha(number))
            await control.cancel(rig.store, run.id, reason="superseded")
            gates.append((run, gate))
        results = await asyncio.gather(
            rig.store.prune(older_than=time.time() + 60, keep_last=0),
            *(rig.decide(gate.id, "alice") for _, gate in gates),
            return_exceptions=True,
        )
        assert not [r for r in results if isinstance(r, BaseException)], results
        assert all(code in (200, 403, 404, 409) for code in results[1:]), results
        for run, gate in gates:
            kept_run = await rig.store.get_run(run.id)
            kept_gate = await rig.store.get_approval(gate.id)
            if kept_run is None:
                assert kept_gate is None
            else:
                assert kept_gate is not None
                decided = await rig.store.decisions(gate.id)
                assert (kept_gate.status == "approved") == bool(decided)


def test_prune_with_a_bad_age_is_a_usage_error(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "RUNNER_DATABASE_URL": f"sqlite:///{tmp_path}/p.db"}
    for bad in ("banana", "-5d", ""):
        done = subprocess.run(
            [sys.executable, "-m", "runner", "db", "prune", "--older-than", bad],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (bad, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr


async def test_one_comment_in_two_deliveries_handled_at_once_acts_once(
    database: str, github: FakeGitHub
) -> None:
    """Two nodes take the two deliveries of one comment at the same moment: the claim by
    comment id must let exactly one act (one answer on the PR)."""
    async with rigged(database, github) as rig:
        await rig.gate(number=80, head=sha(80), approvers=("alice", "bob"), required=2)
        body = json.dumps(gh_comment("/approve", "alice", number=80)).encode()
        for delivery in ("twin-1", "twin-2"):
            await rig.http.post(
                "/hooks/github",
                content=body,
                headers={
                    "Content-Type": "application/json",
                    **signed("github", "issue_comment", body, delivery),
                },
            )
        # the same signed body under a second delivery id is the same delivery: stored once
        events = await rig.store.claim_events("node", 60.0, 10)
        assert len(events) == 1
        # two nodes handling that one stored event at once (a lease lost mid-way) decide once
        await asyncio.gather(*(rig.dispatcher.handle(e) for e in [*events, *events]))
        (gate,) = await rig.store.list_approvals()
        assert [d.actor for d in await rig.store.decisions(gate.id)] == ["alice"]
