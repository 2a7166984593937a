"""GitLab as a forge: documented webhook payloads (GitLab's and Gitea's) through the parser,
`GitLabClient` against a fake GitLab API on 127.0.0.1, and merge request notes that approve a
waiting run and report it back."""

from __future__ import annotations

import copy
import itertools
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from runner.comments import CommentHandler
from runner.dispatch import Dispatcher
from runner.errors import TransientError
from runner.forges.events import ForgeEvent, parse
from runner.forges.gitlab import GitLabClient
from runner.forges.http import RateLimited
from runner.model import Approval, Run
from runner.reporting import Reporter
from runner.revisions import BundleLoader
from runner.spec.repo import builtin_agents
from runner.store.base import Store
from tests.conftest import gated_run
from tests.fake_gitlab import FakeGitLab, fake_gitlab

pytestmark = pytest.mark.anyio
FIXTURES = Path(__file__).parent / "fixtures"
PROJECT, IID = "gitlab-org/gitlab-test", 9  # the project of the documented note hook
HEAD = "562e173be03b8ff2efb05345d12df18815438a4b"  # its merge request's last commit


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def parsed(kind: str, event_type: str, name: str) -> ForgeEvent:
    event = parse(kind, kind, event_type, fixture(name))
    assert event is not None
    return event


# -- (a) documented payloads through the parser ------------------------------------------------


def test_gitlab_note_on_a_merge_request_is_a_comment() -> None:
    event = parsed("gitlab", "Note Hook", "gitlab/note_hook_mr.json")
    assert (event.kind, event.forge, event.repository, event.number) == (
        "comment",
        "gitlab",
        "gitlab-org/gitlab-test",
        1,
    )
    assert (event.actor, event.comment, event.sha) == ("root", "This MR needs work.", HEAD)
    assert (
        event.comment_url == "http://example.com/gitlab-org/gitlab-test/merge_requests/1#note_1244"
    )
    assert event.clone_url == "http://example.com/gitlab-org/gitlab-test.git"


def test_gitlab_notes_that_are_not_new_merge_request_comments_are_ignored() -> None:
    edited = fixture("gitlab/note_hook_mr.json")
    edited["object_attributes"].update(action="update", updated_at="2015-05-17 18:30:00 UTC")
    assert parse("gitlab", "gitlab", "Note Hook", edited) is None
    on_issue = fixture("gitlab/note_hook_mr.json")
    on_issue["object_attributes"]["noteable_type"] = "Issue"
    del on_issue["merge_request"]
    assert parse("gitlab", "gitlab", "Note Hook", on_issue) is None


def test_gitlab_merge_request_hook_is_a_pull_request() -> None:
    event = parsed("gitlab", "Merge Request Hook", "gitlab/merge_request_hook.json")
    assert (event.kind, event.action, event.repository, event.number) == (
        "pull_request",
        "opened",
        "gitlabhq/gitlab-test",
        1,
    )
    assert (event.sha, event.actor, event.base_branch, event.ref) == (
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "root",
        "master",
        "refs/merge-requests/1/head",
    )
    assert event.trigger("Merge Request Hook")["pull_request"]["number"] == 1


def test_gitlab_push_hook_is_a_push() -> None:
    event = parsed("gitlab", "Push Hook", "gitlab/push_hook.json")
    assert (event.kind, event.repository, event.branch, event.tag) == (
        "push",
        "mike/diaspora",
        "master",
        None,
    )
    assert (event.sha, event.actor, event.ref) == (
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "jsmith",
        "refs/heads/master",
    )
    assert event.clone_url == "http://example.com/mike/diaspora.git"


def test_gitea_comment_on_a_pull_request_is_a_comment() -> None:
    event = parsed("gitea", "issue_comment", "gitea/issue_comment_pull.json")
    assert (event.kind, event.forge, event.repository, event.number) == (
        "comment",
        "gitea",
        "test/repo",
        12,
    )
    assert (event.actor, event.author, event.comment) == ("user2", "user1", "changes requested")
    assert event.comment_url == "http://localhost:3000/test/repo/pulls/12#issuecomment-4"
    assert event.sha == ""  # asked of the forge when it matters
    edited = fixture("gitea/issue_comment_pull.json")
    edited["action"] = "edited"
    assert parse("gitea", "gitea", "issue_comment", edited) is None


def test_gitea_pull_request_is_a_pull_request() -> None:
    event = parsed("gitea", "pull_request", "gitea/pull_request.json")
    assert (event.kind, event.action, event.repository, event.number) == (
        "pull_request",
        "opened",
        "test/repo",
        12,
    )
    assert (event.sha, event.actor, event.author, event.base_branch) == (
        "2020558fe2e34debb818a514715839cabd25e778",
        "user1",
        "user1",
        "main",
    )
    pushed = fixture("gitea/pull_request.json")
    pushed["action"] = "synchronized"  # Gitea's word for a push to the pull request
    synchronized = parse("gitea", "gitea", "pull_request", pushed)
    assert synchronized is not None
    assert synchronized.action == "synchronize"


def test_gitea_push_is_a_push() -> None:
    event = parsed("gitea", "push", "gitea/push.json")
    assert (event.kind, event.repository, event.branch, event.actor) == (
        "push",
        "gitea/webhooks",
        "develop",
        "gitea",
    )
    assert event.sha == "bffeb74224043ba2feb48d137756c8a9331c449a"
    assert event.clone_url == "http://localhost:3000/gitea/webhooks.git"


@pytest.mark.parametrize(
    ("kind", "name"), [("gitlab", "gitlab/push_hook.json"), ("gitea", "gitea/push.json")]
)
def test_a_push_whose_changed_files_are_not_all_listed_has_them_unknown(
    kind: str, name: str
) -> None:
    event = parse(kind, kind, "Push Hook" if kind == "gitlab" else "push", fixture(name))
    assert event is not None
    assert event.changed_files is None  # path filters then match, as documented in events.py


def test_a_gitlab_merge_request_edit_without_new_code_is_not_a_synchronize() -> None:
    relabelled = fixture("gitlab/merge_request_hook.json")
    relabelled["object_attributes"]["action"] = "update"  # no oldrev: labels or title changed
    event = parse("gitlab", "gitlab", "Merge Request Hook", relabelled)
    assert event is not None
    assert event.action != "synchronize"


def test_a_gitlab_note_event_author_is_a_username_or_unknown() -> None:
    event = parsed("gitlab", "Note Hook", "gitlab/note_hook_mr.json")
    assert event.author is None


# -- (b) GitLabClient against the fake -----------------------------------------------------------


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    with fake_gitlab() as fake:
        fake.users = {"dev": 10, "alice": 11, "carol": 12, "guest": 13, "mallory": 14}
        fake.members = {PROJECT: {"dev": 30, "alice": 40, "guest": 10}}
        fake.groups = {"acme/security": {"carol"}}
        fake.merge_requests[(PROJECT, IID)] = {
            "iid": IID,
            "sha": HEAD,
            "author": {"id": 10, "username": "dev"},
            "state": "opened",
        }
        yield fake


def client_for(fake: FakeGitLab, token: str | None = None) -> GitLabClient:
    return GitLabClient(fake.api_url, token or fake.token, backoff=0.01)


async def test_identity_is_the_project_role_and_group_membership(gitlab: FakeGitLab) -> None:
    client = client_for(gitlab)
    developer = await client.identity(PROJECT, "dev", ["acme/security"])
    guest = await client.identity(PROJECT, "guest", ["acme/security"])
    member = await client.identity(PROJECT, "carol", ["acme/security", "acme/other"])
    stranger = await client.identity(PROJECT, "nobody", ["acme/security"])
    await client.close()
    assert (developer.can_write, developer.teams) == (True, frozenset())
    assert (guest.can_write, guest.teams) == (False, frozenset())  # Guest (10) < Developer (30)
    assert (member.can_write, member.teams) == (False, frozenset({"acme/security"}))
    assert (stranger.name, stranger.can_write, stranger.teams) == ("nobody", False, frozenset())
    assert ("GET", "/api/v4/projects/gitlab-org%2Fgitlab-test/members/all/10") in gitlab.calls
    assert ("GET", "/api/v4/groups/acme%2Fsecurity/members/all/12") in gitlab.calls


async def test_identity_answers_are_cached(gitlab: FakeGitLab) -> None:
    client = client_for(gitlab)
    first = await client.identity(PROJECT, "carol", ["acme/security"])
    calls = len(gitlab.calls)
    again = await client.identity(PROJECT, "carol", ["acme/security"])
    assert (again, len(gitlab.calls)) == (first, calls)
    client.cache_seconds = 0  # expired: asked again
    await client.identity(PROJECT, "carol", ["acme/security"])
    await client.close()
    assert len(gitlab.calls) == calls + 3


async def test_pull_head_and_comment(gitlab: FakeGitLab) -> None:
    client = client_for(gitlab)
    assert await client.pull_head(PROJECT, IID) == (HEAD, "dev")
    await client.comment(PROJECT, IID, "hello")
    with pytest.raises(TransientError, match="merge request gitlab-org/gitlab-test!404"):
        await client.pull_head(PROJECT, 404)
    await client.close()
    assert gitlab.comments(PROJECT, IID) == ["hello"]
    assert ("POST", "/api/v4/projects/gitlab-org%2Fgitlab-test/merge_requests/9/notes") in (
        gitlab.calls
    )


async def test_the_token_goes_in_the_private_token_header(gitlab: FakeGitLab) -> None:
    client = client_for(gitlab, token="wrong")
    with pytest.raises(TransientError, match="HTTP 401"):
        await client.pull_head(PROJECT, IID)
    await client.close()


@pytest.mark.parametrize(
    ("state", "expected"),
    [("pending", "pending"), ("success", "success"), ("failure", "failed"), ("error", "canceled")],
)
async def test_status_states_are_gitlab_words(
    gitlab: FakeGitLab, state: str, expected: str
) -> None:
    client = client_for(gitlab)
    await client.status(PROJECT, HEAD, "runner/build", state, "run 1: " + "x" * 300)
    await client.close()
    ((project, sha, body),) = gitlab.statuses
    assert (project, sha, body["state"], body["name"]) == (PROJECT, HEAD, expected, "runner/build")
    assert len(body["description"]) == 140


async def test_status_failures_are_logged_not_raised(
    gitlab: FakeGitLab, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_for(gitlab)
    with caplog.at_level(logging.DEBUG, logger="runner.forges.gitlab"):
        await client.status(PROJECT, HEAD, "runner/build", "pending", "queued")
        await client.status(PROJECT, HEAD, "runner/build", "pending", "running")  # already so
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        gitlab.fail_next = [403]
        await client.status(PROJECT, HEAD, "runner/build", "success", "done")
        await client.status(PROJECT, HEAD, "runner/build", "skipped", "?")  # not a runner state
    await client.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "HTTP 403" in warnings[0]
    assert "unknown state 'skipped'" in warnings[1]
    assert [s["state"] for _, _, s in gitlab.statuses] == ["pending"]
    assert [s["state"] for _, _, s in gitlab.rejected] == ["pending"]  # pending -> pending


async def test_upsert_comment_creates_once_then_edits_the_same_note(gitlab: FakeGitLab) -> None:
    client = client_for(gitlab)
    await client.comment(PROJECT, IID, "an unrelated note")
    await client.upsert_comment(PROJECT, IID, "<!-- m -->", "first")
    await client.upsert_comment(PROJECT, IID, "<!-- m -->", "second")
    await client.upsert_comment(PROJECT, IID, "<!-- other -->", "another run")
    await client.close()
    assert gitlab.comments(PROJECT, IID) == [
        "an unrelated note",
        "<!-- m -->\nsecond",
        "<!-- other -->\nanother run",
    ]
    assert gitlab.edits == [(1002, "<!-- m -->\nsecond")]


async def test_upsert_comment_pages_through_many_notes(gitlab: FakeGitLab) -> None:
    client = client_for(gitlab)
    await client.upsert_comment(PROJECT, IID, "<!-- m -->", "first")
    for i in range(150):
        await client.comment(PROJECT, IID, f"chatter {i}")
    await client.upsert_comment(PROJECT, IID, "<!-- m -->", "second")
    await client.close()
    assert gitlab.edits == [(1001, "<!-- m -->\nsecond")]
    assert len(gitlab.comments(PROJECT, IID)) == 151


async def test_a_5xx_or_429_is_retried(gitlab: FakeGitLab) -> None:
    client = client_for(gitlab)
    gitlab.fail_next = [502, 429]
    assert await client.pull_head(PROJECT, IID) == (HEAD, "dev")
    await client.close()
    path = "/api/v4/projects/gitlab-org%2Fgitlab-test/merge_requests/9"
    assert gitlab.calls.count(("GET", path)) == 3


async def test_a_spent_rate_limit_stops_calls_until_its_reset(gitlab: FakeGitLab) -> None:
    """GitLab's RateLimit-* headers on a 429: no call is made until the reset; each fails fast."""
    client = client_for(gitlab)
    reset = int(time.time()) + 3600
    gitlab.fail_next = [429]
    gitlab.fail_headers = {
        "RateLimit-Limit": "600",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": str(reset),
        "Retry-After": "3600",
    }
    with pytest.raises(RateLimited, match="rate limit is spent until") as refused:
        await client.pull_head(PROJECT, IID)
    assert refused.value.until >= reset
    with pytest.raises(RateLimited):  # not sent at all
        await client.status(PROJECT, HEAD, "runner/build", "pending", "run 1: queued")
    await client.close()
    assert len(gitlab.calls) == 1


async def test_a_persistent_5xx_is_a_transient_error(gitlab: FakeGitLab) -> None:
    client = client_for(gitlab)
    gitlab.fail_next = [503] * 4
    with pytest.raises(TransientError, match="HTTP 503"):
        await client.pull_head(PROJECT, IID)
    await client.close()
    assert len(gitlab.calls) == 4


# -- (c) merge request notes end to end --------------------------------------------------------


@pytest.fixture
def store(example_store: Store) -> Store:
    return example_store


NOTE_IDS = itertools.count(5000)


async def waiting_run(store: Store) -> tuple[Run, Approval]:
    trigger = {
        "event": "pull_request",
        "forge": "gitlab",
        "repository": PROJECT,
        "sha": HEAD,
        "actor": "dev",
        "pull_request": {"number": IID},
    }
    return await gated_run(store, key=f"gitlab-mr-{IID}", trigger=trigger)


def note_hook(text: str, user: str) -> bytes:
    """GitLab's documented "comment on a merge request" payload, on merge request IID, by `user`,
    saying `text`."""
    body = copy.deepcopy(fixture("gitlab/note_hook_mr.json"))
    body["user"]["username"] = user
    body["object_attributes"]["note"] = text
    body["object_attributes"]["id"] = next(NOTE_IDS)  # each note its own (GitLab's ids are unique)
    body["object_attributes"]["url"] = f"http://example.com/{PROJECT}/merge_requests/{IID}#{user}"
    body["merge_request"]["iid"] = IID
    return json.dumps(body).encode()


async def deliver(store: Store, gitlab: FakeGitLab, body: bytes, delivery: str) -> None:
    client = client_for(gitlab)
    loader = BundleLoader(store.revision_documents, builtin_agents())
    dispatcher = Dispatcher(
        store,
        loader,
        kinds={"gitlab": "gitlab"},
        sources={},
        comments=CommentHandler(store, loader, {"gitlab": client}),
    )
    event, _ = await store.add_event(
        forge="gitlab", delivery_id=delivery, event_type="Note Hook", headers={}, body=body
    )
    await dispatcher.handle(event)
    await client.close()


async def test_a_group_member_approves_by_note_and_the_author_is_refused(
    store: Store, gitlab: FakeGitLab
) -> None:
    run, gate = await waiting_run(store)
    await deliver(store, gitlab, note_hook("/approve", "dev"), "n1")
    assert (await store.get_approval(gate.id)).status == "pending"  # type: ignore[union-attr]
    (refusal,) = gitlab.comments(PROJECT, IID)
    assert "dev is an author of this change" in refusal
    await deliver(store, gitlab, note_hook("Looks safe.\n/approve", "carol"), "n2")
    assert (await store.get_approval(gate.id)).status == "approved"  # type: ignore[union-attr]
    assert (await store.get_run(run.id)).status == "running"  # type: ignore[union-attr]
    assert "approved (@carol)" in gitlab.comments(PROJECT, IID)[-1]
    (decision,) = await store.decisions(gate.id)
    assert (decision.actor, decision.via, decision.url) == (
        "carol",
        "comment",
        f"http://example.com/{PROJECT}/merge_requests/{IID}#carol",
    )
    assert ("GET", "/api/v4/groups/acme%2Fsecurity/members/all/12") in gitlab.calls

    client = client_for(gitlab)
    reporter = Reporter({"gitlab": client})
    steps = await store.get_steps(run.id)
    await reporter.report(replace(run, status="waiting_approval"), steps, [])
    await reporter.report(replace(run, status="running"), steps, [])  # pending again: a no-op
    await reporter.report(replace(run, status="succeeded"), steps, [])
    await client.close()
    assert [(sha, s["name"], s["state"]) for _, sha, s in gitlab.statuses] == [
        (HEAD, "runner/pr-security-review", "pending"),
        (HEAD, "runner/pr-security-review", "success"),
    ]
    marker = f"<!-- runner:run:{run.id} -->"
    (report,) = [c for c in gitlab.comments(PROJECT, IID) if c.startswith(marker)]
    assert f"run {run.id}: **succeeded**" in report
    assert len(gitlab.edits) == 2  # created once, then edited in place
    assert {note_id for note_id, _ in gitlab.edits} == {gitlab.notes[-1]["id"]}


async def test_a_copy_of_the_marker_by_someone_else_is_never_edited(gitlab: FakeGitLab) -> None:
    client = client_for(gitlab)
    await client.comment(PROJECT, IID, "<!-- m -->\nmallory's copy")
    gitlab.notes[-1]["author"] = {"id": 99, "username": "mallory"}
    await client.upsert_comment(PROJECT, IID, "<!-- m -->", "the real report")
    await client.close()
    assert gitlab.comments(PROJECT, IID) == [
        "<!-- m -->\nmallory's copy",
        "<!-- m -->\nthe real report",
    ]
    assert gitlab.edits == []
