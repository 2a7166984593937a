"""Approvals bound to their channel and their comment (issue 15, item 3), attacked through a
running `runner serve` with signed deliveries: each attack fails, and the legitimate approval
(the right person, on the right forge, in a fresh comment) still opens the gate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_github import FakeGitHub, fake_github
from tests.security.service import REPO, Service, now_iso, service
from tests.test_serve import wait_for


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with fake_github() as fake:
        fake.writers = {"carol", "dev"}
        yield fake


@pytest.fixture
def svc(tmp_path: Path, github: FakeGitHub) -> Iterator[Service]:
    with service(tmp_path, github) as running:
        yield running


def open_pr(svc: Service, number: int, *, author: str = "dev", head: int = 0) -> dict[str, object]:
    sha = svc.heads[head]
    svc.github.pulls[(REPO, number)] = {"head": {"sha": sha}, "user": {"login": author}}
    payload = svc.pull_request(number, "opened", head=sha, author=author, sender=author)
    assert svc.deliver("github", "pull_request", payload).status_code == 202
    (run,) = svc.waiting(number)
    return run


def status_of(svc: Service, run: dict[str, object]) -> str:
    (gate,) = svc.gates(int(str(run["id"])))
    return str(gate["status"])


def test_an_approval_through_another_forge_opens_nothing(svc: Service) -> None:
    """bob is a listed approver; his `/approve` delivered to /hooks/gitea, for the same
    repository name and PR number, must not open the gate of a run triggered through GitHub."""
    run = open_pr(svc, 11)
    crossed = svc.comment(11, "/approve", "bob", gitea=True)
    assert svc.deliver("gitea", "issue_comment", crossed).status_code == 202
    svc.reply_saying(11, "nothing of this pull request waits for approval")
    assert status_of(svc, run) == "pending"

    ok = svc.comment(11, "/approve", "bob")
    assert svc.deliver("github", "issue_comment", ok).status_code == 202
    wait_for(lambda: status_of(svc, run) == "approved")
    (decision,) = svc.gates(int(str(run["id"])))[0]["decisions"]
    assert (decision["actor"], decision["via"], decision["forge"]) == ("bob", "comment", "github")
    assert decision["comment_id"] == str(ok["comment"]["id"])  # type: ignore[index]
    assert decision["sha"] == svc.heads[0]


def test_a_comment_replayed_under_a_new_delivery_id_decides_nothing(svc: Service) -> None:
    """carol's signed `/approve` re-sent with a fresh X-GitHub-Delivery (the header is not
    signed) must not approve a later run's gate on the same pull request."""
    first = open_pr(svc, 12)
    approval = json.dumps(svc.comment(12, "/approve", "carol")).encode()
    assert svc.deliver("github", "issue_comment", approval).status_code == 202
    wait_for(lambda: status_of(svc, first) == "approved")

    svc.github.pulls[(REPO, 12)] = {"head": {"sha": svc.heads[1]}, "user": {"login": "dev"}}
    pushed = svc.pull_request(12, "synchronize", head=svc.heads[1], author="dev", sender="dev")
    assert svc.deliver("github", "pull_request", pushed).status_code == 202
    wait_for(lambda: any(r["trigger"]["sha"] == svc.heads[1] for r in svc.waiting(12)))
    (second,) = [r for r in svc.waiting(12) if r["trigger"]["sha"] == svc.heads[1]]

    # a new delivery id, the same signed body: the same delivery, stored once, done nothing
    replay = svc.deliver("github", "issue_comment", approval, delivery="attacker-1")
    assert (replay.status_code, replay.json()["status"]) == (200, "duplicate")
    assert svc.metric(
        'runner_webhook_deliveries_total{event="issue_comment",forge="github",result="duplicate"}'
        " 1.0"
    )
    assert status_of(svc, second) == "pending"

    fresh = svc.comment(12, "/approve", "carol")
    assert svc.deliver("github", "issue_comment", fresh).status_code == 202
    wait_for(lambda: status_of(svc, second) == "approved")


def test_a_comment_written_before_the_gate_opened_never_approves_it(svc: Service) -> None:
    early = svc.comment(
        13, "/approve", "carol", written=now_iso(-3600)
    )  # held back, delivered late
    run = open_pr(svc, 13)
    assert svc.deliver("github", "issue_comment", early).status_code == 202
    assert "written before approval" in svc.reply_saying(13, "not counted")
    assert status_of(svc, run) == "pending"

    assert svc.deliver("github", "issue_comment", svc.comment(13, "/approve", "carol")).is_success
    wait_for(lambda: status_of(svc, run) == "approved")


def test_the_pull_request_author_may_not_approve_a_run_someone_else_started(
    svc: Service,
) -> None:
    """alice opened the PR; bob reopening it starts a run whose event sender is bob. The
    author ban must still cover alice."""
    first = open_pr(svc, 14, author="alice")
    reopened = svc.pull_request(14, "reopened", head=svc.heads[0], author="alice", sender="bob")
    assert svc.deliver("github", "pull_request", reopened).status_code == 202
    runs = svc.waiting(14, count=2)
    second = next(r for r in runs if r["id"] != first["id"])
    assert second["trigger"]["actor"] == "bob"

    own = svc.comment(14, f"/approve {second['id']}", "alice")
    assert svc.deliver("github", "issue_comment", own).status_code == 202
    assert "alice is an author of this change" in svc.reply_saying(14, "not counted")
    assert status_of(svc, second) == "pending"

    other = svc.comment(14, f"/approve {second['id']}", "carol")
    assert svc.deliver("github", "issue_comment", other).status_code == 202
    wait_for(lambda: status_of(svc, second) == "approved")


def test_whoever_pushed_the_head_may_not_approve_it(svc: Service) -> None:
    """bob opens the PR, alice pushes its new head, carol starts a run on it with `/run`: the
    run's sender is carol and the PR's author bob, but alice pushed what would ship. And erin,
    whom GitHub names as the head commit's author, is an author too."""
    open_pr(svc, 15, author="bob")
    svc.github.pulls[(REPO, 15)] = {"head": {"sha": svc.heads[1]}, "user": {"login": "bob"}}
    svc.github.commits[(REPO, svc.heads[1])] = {"author": "erin", "committer": None}
    pushed = svc.pull_request(15, "synchronize", head=svc.heads[1], author="bob", sender="alice")
    assert svc.deliver("github", "pull_request", pushed).status_code == 202
    wait_for(lambda: any(r["trigger"]["actor"] == "alice" for r in svc.waiting(15)))
    count = len(svc.runs_of(15))
    assert svc.deliver(
        "github", "issue_comment", svc.comment(15, "/run pr-gate", "carol")
    ).is_success
    wait_for(lambda: len(svc.runs_of(15)) == count + 1)
    started = svc.runs_of(15)[-1]
    assert started["trigger"]["actor"] == "carol"
    wait_for(lambda: svc.runs_of(15)[-1]["status"] == "waiting_approval")

    for who in ("alice", "erin", "bob", "carol"):
        attempt = svc.comment(15, f"/approve {started['id']}", who)
        assert svc.deliver("github", "issue_comment", attempt).status_code == 202
        assert f"{who} is an author of this change" in svc.reply_saying(15, f"@{who}: not counted")
    assert status_of(svc, started) == "pending"

    dave = svc.comment(15, f"/approve {started['id']}", "dave")
    assert svc.deliver("github", "issue_comment", dave).status_code == 202
    wait_for(lambda: status_of(svc, started) == "approved")
