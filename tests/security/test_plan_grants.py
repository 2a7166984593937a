"""Boundary: reviewers of a pull request to the workflows repo see what merging it grants.

An agent that asks for a new secret, gains network access or drops its approval gate is one
"agent x: changed" line among many unless the plan names it. Driven through the product: a real
git repository served over smart HTTP, a reconciled revision, a pull-request head fetched by
the runner, and the comment it posts on a fake GitHub.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runner.dispatch import Dispatcher
from runner.forges.github import GitHubClient, GitHubReporting
from runner.prcheck import MARKER, PullRequestCheck
from runner.revisions import BundleLoader
from runner.source.git import GitSource, GitSourceConfig
from runner.source.reconciler import Reconciler
from runner.spec.repo import builtin_agents
from runner.store.base import Store
from tests.fake_github import FakeGitHub
from tests.gitserver import GitServer
from tests.source.test_reconciler import Repo, server, store
from tests.test_prcheck import delivery, github, open_pr

pytestmark = pytest.mark.anyio
__all__ = ["github", "server", "store"]  # fixtures

AGENT = """\
apiVersion: runner/v1
kind: Agent
metadata: {{name: {name}}}
spec:
  command: [python, main.py]
{extra}"""

DEPLOY = """\
apiVersion: runner/v1
kind: Workflow
metadata: {name: deploy}
spec:
  triggers: [{manual: {}}]
  steps:
    - {id: scan, agent: security-scanner}
    - {id: ship, agent: deployer, needs: [scan]}
"""


def agent(name: str, *spec: str) -> dict[str, str]:
    extra = "".join(f"  {line}\n" for line in spec)
    return {
        f"agents/{name}/agent.yaml": AGENT.format(name=name, extra=extra),
        f"agents/{name}/main.py": "print('{}')\n",
    }


@pytest.fixture
async def comments(
    tmp_path: Path, server: GitServer, store: Store, github: FakeGitHub
) -> AsyncIterator[tuple[Repo, Dispatcher]]:
    """An applied revision where `deployer` waits for approval and reaches nothing, and the
    dispatcher that checks pull requests against it."""
    repo = Repo(tmp_path, server)
    repo.commit({"workflows/deploy.yaml": DEPLOY, **agent("deployer", "risk: approval_required")})
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
        yield repo, dispatcher
    finally:
        await client.close()


def posted(github: FakeGitHub, number: int) -> str:
    (comment,) = [c for c in github.comments if c[1] == number]
    assert comment[2].startswith(MARKER)
    return str(comment[2])


async def test_pr_comment_shows_new_secrets_network_and_dropped_gates(
    comments: tuple[Repo, Dispatcher], github: FakeGitHub
) -> None:
    repo, dispatcher = comments
    # The PR widens the existing agent in place and slips in a new one behind a new step.
    head = open_pr(
        repo,
        5,
        {
            **agent("deployer", "network: true", "secrets: [DEPLOY_TOKEN]"),
            **agent("mirror", "network: true", "secrets: [AWS_SECRET_ACCESS_KEY]"),
            "workflows/deploy.yaml": DEPLOY + "    - {id: sync, agent: mirror, needs: [ship]}\n",
        },
    )
    await dispatcher.handle(delivery(5, head, "opened", repo.url))
    text = posted(github, 5)
    assert "**valid**" in text
    assert "Agents changed:\n" in text
    assert "- `agents/deployer/agent.yaml`: agent `deployer` changed" in text
    assert "- `agents/mirror/agent.yaml`: agent `mirror` added" in text
    granted = text.split("### ⚠️ What this merge grants\n\n", 1)[1].split("\n\n", 1)[0]
    deployer = "- agent `deployer` (`agents/deployer/agent.yaml`): "
    mirror = "- agent `mirror` (`agents/mirror/agent.yaml`): "
    assert granted.splitlines() == [
        deployer + "asks for secret `DEPLOY_TOKEN` (new)",
        deployer + "network access: off → on",
        deployer + "risk: approval_required → auto (its steps no longer wait for approval)",
        deployer + "step `deploy/ship`: no longer waits for approval",
        mirror + "asks for secret `AWS_SECRET_ACCESS_KEY` (new)",
        mirror + "network access: on (new agent)",
        mirror + "risk: auto (new agent; its steps run without waiting for approval)",
        mirror + "new step `deploy/sync` runs it: secret `AWS_SECRET_ACCESS_KEY`, network access",
    ]
    assert "nothing widens" not in text


async def test_pr_comment_says_in_one_line_when_nothing_widens(
    comments: tuple[Repo, Dispatcher], github: FakeGitHub
) -> None:
    repo, dispatcher = comments
    # Legitimate: a longer timeout, and the agent's reach unchanged.
    head = open_pr(
        repo,
        6,
        agent("deployer", "timeout: 5m", "risk: approval_required"),
    )
    await dispatcher.handle(delivery(6, head, "opened", repo.url))
    text = posted(github, 6)
    assert "- `agents/deployer/agent.yaml`: agent `deployer` changed" in text
    assert (
        "**What this merge grants**: nothing widens: no new secret, network access or step "
        "without approval." in text.splitlines()
    )
    assert "⚠️" not in text


async def test_a_change_to_an_agents_program_alone_is_shown_with_what_the_code_holds(
    comments: tuple[Repo, Dispatcher], github: FakeGitHub
) -> None:
    repo, dispatcher = comments
    # Only the program changes: still checked and reported, the folder named.
    head = open_pr(repo, 7, {"agents/deployer/main.py": "import os; print(os.environ)\n"})
    await dispatcher.handle(delivery(7, head, "opened", repo.url))
    text = posted(github, 7)
    assert "- `agents/deployer/main.py`: program of agent `deployer` changed" in text
    assert "nothing widens" in text  # the agent holds no secret and no network

    # New code together with a new secret: the code that will hold it is named too.
    head = open_pr(
        repo,
        8,
        {
            **agent("deployer", "risk: approval_required", "secrets: [DEPLOY_TOKEN]"),
            "agents/deployer/main.py": "import os; print(os.environ['DEPLOY_TOKEN'])\n",
        },
    )
    await dispatcher.handle(delivery(8, head, "opened", repo.url))
    text = posted(github, 8)
    assert "- `agents/deployer/agent.yaml`: agent `deployer` changed, and its program" in text
    deployer = "- agent `deployer` (`agents/deployer/agent.yaml`): "
    assert deployer + "asks for secret `DEPLOY_TOKEN` (new)" in text
    assert (
        deployer + "its program changed, and it receives secret `DEPLOY_TOKEN`: read the new code"
    ) in text
