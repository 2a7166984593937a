"""Pull requests that change the workflows repo: the head is fetched over real smart HTTP,
validated and planned, and the verdict shows on the PR of a fake GitHub (a `runner/validate`
status and one comment kept up to date)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runner.dispatch import Dispatcher
from runner.forges.github import GitHubClient, GitHubReporting
from runner.model import Agent, Bundle, Event
from runner.prcheck import MARKER, PullRequestCheck, Verdict, verdict_comment
from runner.revisions import BundleLoader
from runner.source.git import GitSource, GitSourceConfig
from runner.source.reconciler import Reconciler
from runner.spec.plan import make_plan
from runner.spec.repo import builtin_agents
from runner.store.base import Store
from tests.fake_github import FakeGitHub, fake_github
from tests.gitserver import GitServer
from tests.source.test_reconciler import NIGHTLY, Repo, git, server, store

pytestmark = pytest.mark.anyio
__all__ = ["server", "store"]  # fixtures

GATED = """\
apiVersion: runner/v1
kind: Workflow
metadata: {name: fix}
spec:
  triggers: [{manual: {}}]
  steps:
    - {id: scan, agent: security-scanner}
    - {id: patch, agent: patcher, needs: [scan], approval: {approvers: ["@acme/security"]}}
"""


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with fake_github() as fake:
        yield fake


def open_pr(repo: Repo, number: int, files: dict[str, str | None], base: str = "main") -> str:
    """Commit `files` on a branch off `base` and publish it as GitHub does: refs/pull/N/head."""
    git(repo.work, "checkout", "-q", "-B", f"pr-{number}", base)
    for rel, text in files.items():
        path = repo.work / rel
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    git(repo.work, "add", "-A")
    git(repo.work, "commit", "-q", "-m", f"pr {number}")
    git(repo.work, "push", "-q", "-f", "origin", f"HEAD:refs/pull/{number}/head")
    head = git(repo.work, "rev-parse", "HEAD")
    git(repo.work, "checkout", "-q", "main")
    return head


def delivery(number: int, sha: str, action: str, url: str) -> Event:
    body = {
        "action": action,
        "number": number,
        "pull_request": {
            "number": number,
            "head": {"sha": sha, "ref": f"pr-{number}"},
            "base": {"ref": "main"},
            "user": {"login": "dev"},
        },
        "repository": {"full_name": "acme/workflows", "clone_url": url},
        "sender": {"login": "dev"},
    }
    return Event(
        id=number,
        forge="github",
        event_type="pull_request",
        delivery_id=f"d-{number}-{action}-{sha[:6]}",
        headers={},
        body=json.dumps(body).encode(),
        received_at=0.0,
    )


async def test_pr_heads_are_validated_and_planned_on_the_pr(
    tmp_path: Path, server: GitServer, store: Store, github: FakeGitHub
) -> None:
    repo = Repo(tmp_path, server)
    repo.commit({"workflows/nightly.yaml": NIGHTLY.format(name="nightly", cron="0 3 * * *")})
    config = GitSourceConfig(name="main", url=repo.url)
    await Reconciler(store, GitSource(config, tmp_path / "data")).reconcile()

    client = GitHubClient(github.url, "t0ken")
    loader = BundleLoader(store.revision_documents, builtin_agents())
    check = PullRequestCheck(
        store,
        loader,
        {"main": config},
        tmp_path / "data",
        {"github": GitHubReporting(client)},
        {"github": "github"},
    )
    dispatcher = Dispatcher(
        store,
        loader,
        kinds={"github": "github"},
        sources={"main": (repo.url, "main")},
        prcheck=check,
    )
    try:
        # A valid change: status success, and the plan against what is applied now.
        good = open_pr(repo, 5, {"workflows/fix.yaml": GATED})
        assert await dispatcher.handle(delivery(5, good, "opened", repo.url)) == []
        (status,) = [s for s in github.statuses if s[2]["context"] == "runner/validate"]
        assert status[:2] == ("acme/workflows", good)
        assert status[2]["state"] == "success"
        (comment,) = [c for c in github.comments if c[1] == 5]
        assert comment[2].startswith(MARKER)
        assert "workflow `fix`: added" in comment[2]
        assert "`fix` step `patch`: 1 from @acme/security" in comment[2]
        assert "`nightly` `0 3 * * *` (UTC): unchanged; next fires" in comment[2]

        # A broken change: failure, every error as file:line, and the same comment edited
        # when a fix is pushed to the PR.
        bad = open_pr(
            repo,
            6,
            {
                "workflows/bad.yaml": GATED.replace("security-scanner", "securty-scanner"),
                "workflows/nightly.yaml": None,
            },
        )
        await dispatcher.handle(delivery(6, bad, "opened", repo.url))
        assert github.statuses[-1][1:] == (
            bad,
            {
                "state": "failure",
                "context": "runner/validate",
                "description": "1 error(s); see the PR comment",
            },
        )
        (refused,) = [c for c in github.comments if c[1] == 6]
        assert "**1 error(s)**" in refused[2]
        assert "- `workflows/bad.yaml:7`: " in refused[2]
        assert "security-scanner" in refused[2]  # the did-you-mean

        fixed = open_pr(repo, 6, {"workflows/bad.yaml": GATED}, base="pr-6")
        await dispatcher.handle(delivery(6, fixed, "synchronize", repo.url))
        (edited,) = [c for c in github.comments if c[1] == 6]  # still one comment
        assert "**valid**" in edited[2]
        assert "workflow `nightly`: removed" in edited[2]
        assert github.statuses[-1][1] == fixed
        assert github.statuses[-1][2]["state"] == "success"

        # A PR that touches no workflow or agent file gets no verdict.
        before = len(github.statuses)
        docs = open_pr(repo, 7, {"README.md": "docs only\n"})
        await dispatcher.handle(delivery(7, docs, "opened", repo.url))
        assert not [c for c in github.comments if c[1] == 7]
        assert len(github.statuses) == before
    finally:
        await client.close()


def test_long_grant_lists_are_capped_with_a_count() -> None:
    # Sixty new agents with a secret each: the comment stays postable and says how many more.
    agents = {
        f"a{i:02}": Agent(
            name=f"a{i:02}",
            command=("true",),
            directory=f"agents/a{i:02}",
            source=f"agents/a{i:02}/agent.yaml",
            digest=str(i),
            risk="approval_required",
            secrets=("TOKEN",),
        )
        for i in range(60)
    }
    plan = make_plan(Bundle(agents=agents), Bundle(), now=datetime.now(UTC))
    text = verdict_comment(Verdict(source="main", sha="0" * 40, errors=(), plan=plan), limit=50)
    granted = text.split("### ⚠️ What this merge grants\n\n", 1)[1].splitlines()
    assert granted[49] == "- agent `a49` (`agents/a49/agent.yaml`): asks for secret `TOKEN` (new)"
    assert granted[50] == "- … and 10 more (`runner plan --against` lists all)"
