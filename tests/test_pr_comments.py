"""`/approve` and friends as PR comments, against a fake GitHub API on 127.0.0.1."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runner.comments import CommentHandler
from runner.dispatch import Dispatcher
from runner.forges.github import GiteaClient, GitHubClient, GitHubReporting
from runner.model import Approval, Run
from runner.reporting import Reporter
from runner.revisions import BundleLoader
from runner.spec.repo import builtin_agents
from runner.store.base import Store
from tests.conftest import gated_run
from tests.fake_github import FakeGitHub, fake_github

pytestmark = pytest.mark.anyio
EXAMPLE = Path(__file__).parents[1] / "workflows-repo-example"
REPO, HEAD = "acme/app", "c0ffee" + "0" * 34
COMMENT_IDS = itertools.count(1000)


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with fake_github() as fake:
        fake.writers = {"alice", "dev"}
        fake.teams = {"acme/security": {"carol"}}
        fake.pulls[(REPO, 9)] = {"head": {"sha": HEAD}, "user": {"login": "dev"}}
        yield fake


@pytest.fixture
def store(example_store: Store) -> Store:
    return example_store


async def waiting_run(store: Store, forge: str = "github") -> tuple[Run, Approval]:
    trigger = {
        "event": "pull_request",
        "forge": forge,
        "repository": REPO,
        "sha": HEAD,
        "actor": "dev",
        "pull_request": {"number": 9},
    }
    return await gated_run(store, key="pr-9", trigger=trigger)


def comment(text: str, user: str, *, number: int = 9) -> bytes:
    """A new comment, as GitHub sends it: a fresh id, written now."""
    return json.dumps(
        {
            "action": "created",
            "issue": {"number": number, "pull_request": {"url": "u"}, "user": {"login": "dev"}},
            "comment": {
                "id": next(COMMENT_IDS),
                "created_at": datetime.now(UTC).isoformat(),
                "body": text,
                "user": {"login": user, "type": "User"},
                "html_url": f"https://gh/{REPO}/pull/9#c-{user}",
            },
            "repository": {"full_name": REPO, "clone_url": f"https://gh/{REPO}.git"},
            "sender": {"login": user},
        }
    ).encode()


async def deliver(
    store: Store,
    github: FakeGitHub,
    body: bytes,
    delivery: str,
    *,
    forge: str = "github",
    event_type: str = "issue_comment",
) -> None:
    """A stored delivery handled by the dispatcher, its forge API being the fake."""
    client = (GiteaClient if forge == "gitea" else GitHubClient)(github.url, f"{forge}-token")
    loader = BundleLoader(store.revision_documents, builtin_agents())
    dispatcher = Dispatcher(
        store,
        loader,
        kinds={forge: forge},
        sources={},
        comments=CommentHandler(store, loader, {forge: client}),
    )
    event, _ = await store.add_event(
        forge=forge, delivery_id=delivery, event_type=event_type, headers={}, body=body
    )
    await dispatcher.handle(event)
    await client.close()


async def test_author_and_outsider_are_refused_a_team_member_approves(
    store: Store, github: FakeGitHub
) -> None:
    run, gate = await waiting_run(store)
    await deliver(store, github, comment("/approve", "dev"), "c1")
    await deliver(store, github, comment("/approve", "mallory"), "c2")
    assert (await store.get_approval(gate.id)).status == "pending"  # type: ignore[union-attr]
    replies = [body for _, _, body in github.comments]
    assert "dev is an author of this change" in replies[0]
    assert "mallory is not among the approvers" in replies[1]
    await deliver(store, github, comment("LGTM\n/approve", "carol"), "c3")
    assert (await store.get_approval(gate.id)).status == "approved"  # type: ignore[union-attr]
    assert (await store.get_run(run.id)).status == "running"  # type: ignore[union-attr]
    assert "approved (@carol)" in github.comments[-1][2]
    (decision,) = await store.decisions(gate.id)
    assert (decision.actor, decision.via, decision.url) == (
        "carol",
        "comment",
        f"https://gh/{REPO}/pull/9#c-carol",
    )
    assert ("GET", "/orgs/acme/teams/security/memberships/carol") in github.calls


async def test_a_new_push_voids_the_old_approval(store: Store, github: FakeGitHub) -> None:
    _, gate = await waiting_run(store)
    github.pulls[(REPO, 9)] = {"head": {"sha": "f" * 40}, "user": {"login": "dev"}}
    await deliver(store, github, comment("/approve", "alice"), "c4")
    assert (await store.get_approval(gate.id)).status == "pending"  # type: ignore[union-attr]
    assert "a new push needs a new approval" in github.comments[-1][2]


async def test_help_mistakes_and_cancel(store: Store, github: FakeGitHub) -> None:
    run, _ = await waiting_run(store)
    await deliver(store, github, comment("/help\n/aprove", "alice"), "c5")
    reply = github.comments[-1][2]
    assert "unknown command /aprove; try /help" in reply
    assert "/approve [RUN] [STEP]" in reply
    await deliver(store, github, comment("/cancel", "mallory"), "c6")
    assert "needs write access" in github.comments[-1][2]
    await deliver(store, github, comment(f"/cancel {run.id}", "alice"), "c7")
    assert (await store.get_run(run.id)).status == "cancelled"  # type: ignore[union-attr]


async def test_reporting_sets_statuses_and_keeps_one_comment_per_run(
    store: Store, github: FakeGitHub
) -> None:

    run, gate = await waiting_run(store)
    run = replace(run, trigger={**run.trigger, "forge": "github"})
    client = GitHubClient(github.url, "token")
    reporter = Reporter({"github": GitHubReporting(client)})
    waiting = replace(run, status="waiting_approval")
    await reporter.report(waiting, await store.get_steps(run.id), [gate])
    (first,) = [c for c in github.comments if c[1] == 9]
    assert f"comment `/approve {run.id} patch`" in first[2]
    done = replace(run, status="succeeded")
    await reporter.report(done, await store.get_steps(run.id), [])
    await client.close()
    assert [(sha, s["context"], s["state"]) for _, sha, s in github.statuses] == [
        (HEAD, "runner/pr-security-review", "pending"),
        (HEAD, "runner/pr-security-review", "success"),
    ]
    (only,) = [c for c in github.comments if c[1] == 9]  # one comment, edited in place
    assert only[2].startswith(f"<!-- runner:run:{run.id} -->")
    assert "run 1: **succeeded**" in only[2]
    assert len(github.edits) == 1
    assert "/approve" not in only[2]  # nothing waits any more


async def test_reporting_failures_never_raise(store: Store) -> None:

    run, gate = await waiting_run(store)
    run = replace(run, trigger={**run.trigger, "forge": "github"})
    client = GitHubClient("http://127.0.0.1:9", "token")  # nothing listens there
    await Reporter({"github": GitHubReporting(client)}).report(run, [], [gate])
    await client.close()


async def test_a_push_to_the_pull_request_voids_waiting_approvals(
    store: Store, github: FakeGitHub
) -> None:
    run, _ = await waiting_run(store)
    new_head = "b" * 40
    payload = {
        "action": "synchronize",
        "number": 9,
        "pull_request": {
            "head": {"sha": new_head},
            "base": {"ref": "main"},
            "user": {"login": "dev"},
        },
        "repository": {"full_name": REPO, "clone_url": f"https://gh/{REPO}.git"},
        "sender": {"login": "dev"},
    }
    body = json.dumps(payload).encode()
    await deliver(store, github, body, "sync-1", event_type="pull_request")
    old = await store.get_run(run.id)
    assert old is not None
    assert (old.status, old.error) == ("cancelled", f"superseded by a push of {new_head[:12]}")
    assert "voids the pending approvals of run(s) 1" in github.comments[-1][2]


async def test_gitea_pull_request_comments_use_the_same_policy(
    store: Store, github: FakeGitHub
) -> None:
    run, gate = await waiting_run(store, "gitea")  # the fake answers Gitea's paths too
    payload = {
        "action": "created",
        "is_pull": True,
        "issue": {"number": 9, "user": {"login": "dev"}},
        "comment": {
            "id": next(COMMENT_IDS),
            "created_at": datetime.now(UTC).isoformat(),
            "body": "/approve",
            "user": {"login": "alice"},
            "html_url": f"https://gt/{REPO}/pulls/9#c",
        },
        "repository": {"full_name": REPO, "clone_url": f"https://gt/{REPO}.git"},
        "sender": {"login": "alice"},
    }
    await deliver(store, github, json.dumps(payload).encode(), "gt-c1", forge="gitea")
    assert (await store.get_approval(gate.id)).status == "approved"  # type: ignore[union-attr]
    assert github.auth[-1] == "token gitea-token"
    assert "approved (@alice)" in github.comments[-1][2]
    assert (await store.get_run(run.id)).status == "running"  # type: ignore[union-attr]


async def test_a_copy_of_the_marker_by_someone_else_is_never_edited(github: FakeGitHub) -> None:
    """Anyone can post a comment that starts with the runner's marker; the runner keeps to its
    own comment (the token's user, from GET /user)."""
    github.comments.append((REPO, 9, "<!-- runner:run:5 -->\nmallory's copy"))
    github.authors[0] = "mallory"
    reporting = GitHubReporting(GitHubClient(github.url, "token"))
    await reporting.upsert_comment(REPO, 9, "<!-- runner:run:5 -->", "the real report")
    await reporting.upsert_comment(REPO, 9, "<!-- runner:run:5 -->", "updated")
    await reporting.client.close()
    assert [body for _, _, body in github.comments] == [
        "<!-- runner:run:5 -->\nmallory's copy",
        "<!-- runner:run:5 -->\nupdated",
    ]
