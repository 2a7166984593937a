"""Forge events to runs: payload parsing (GitHub's own examples, GitLab and Gitea shapes),
trigger matching, one run per workflow per delivery, and the workflows repo's own pushes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.dispatch import Dispatcher, same_repository
from runner.forges.events import parse
from runner.model import Trigger, Workflow
from runner.revisions import BundleLoader
from runner.spec.repo import builtin_agents
from runner.store.base import Store
from runner.triggers import matches
from tests.npm import github_examples

pytestmark = pytest.mark.anyio
EXAMPLE = Path(__file__).parents[1] / "workflows-repo-example"


def workflow(*triggers: tuple[str, dict[str, object]]) -> Workflow:
    return Workflow(
        name="w",
        source="w.yaml",
        digest="d",
        steps=(),
        triggers=tuple(Trigger(kind=k, config=c) for k, c in triggers),  # type: ignore[arg-type]
    )


def test_github_examples_parse_into_pushes_and_pull_requests() -> None:
    branch_push = next(e for e in github_examples("push") if e["ref"] == "refs/heads/master")
    event = parse("github", "github", "push", branch_push)
    assert event is not None
    assert (event.kind, event.branch, event.repository) == (
        "push",
        "master",
        "Codertocat/Hello-World",
    )
    assert event.sha == branch_push["after"]
    deleted = next(e for e in github_examples("push") if e["deleted"])
    assert parse("github", "github", "push", deleted) is None
    opened = next(e for e in github_examples("pull_request") if e["action"] == "opened")
    pr = parse("github", "github", "pull_request", opened)
    assert pr is not None
    assert (pr.action, pr.number, pr.base_branch, pr.author) == (
        "opened",
        2,
        "master",
        "Codertocat",
    )


def test_gitlab_and_gitea_words_become_github_ones() -> None:
    mr = parse(
        "gitlab",
        "gitlab",
        "Merge Request Hook",
        {
            "project": {
                "path_with_namespace": "acme/app",
                "git_http_url": "https://gl/acme/app.git",
            },
            "user": {"username": "bob"},
            "object_attributes": {
                "action": "update",
                "oldrev": "0a1b2c",  # new code was pushed
                "iid": 7,
                "target_branch": "main",
                "last_commit": {"id": "abc"},
            },
        },
    )
    assert mr is not None
    assert (mr.kind, mr.action, mr.number, mr.sha) == ("pull_request", "synchronize", 7, "abc")
    push = parse(
        "gitea",
        "gitea",
        "push",
        {
            "ref": "refs/heads/main",
            "after": "def",
            "repository": {"full_name": "acme/app", "clone_url": "https://gt/acme/app.git"},
            "sender": {"login": "carol"},
            "commits": [{"added": ["src/a.py"], "modified": ["README.md"], "removed": []}],
        },
    )
    assert push is not None
    assert push.changed_files == ("README.md", "src/a.py")


@pytest.mark.parametrize(
    ("config", "branch", "tag", "changed", "expected"),
    [
        ({"branches": ["main"]}, "main", None, None, True),
        ({"branches": ["release/**"]}, "release/1.2/x", None, None, True),
        ({"branches": ["main"]}, "dev", None, None, False),
        ({"branches_ignore": ["wip/*"]}, "wip/a", None, None, False),
        ({"tags": ["v*"]}, None, "v1.0", None, True),
        ({"branches": ["main"]}, None, "v1.0", None, False),
        ({"paths": ["src/**"]}, "main", None, ("docs/x.md",), False),
        ({"paths": ["src/**"]}, "main", None, ("docs/x.md", "src/a/b.py"), True),
        ({"paths_ignore": ["docs/**"]}, "main", None, ("docs/x.md",), False),
        ({"paths": ["src/**"]}, "main", None, None, True),  # changed files unknown
    ],
)
def test_push_trigger_matching(
    config: dict[str, object],
    branch: str | None,
    tag: str | None,
    changed: tuple[str, ...] | None,
    expected: bool,
) -> None:
    event = parse(
        "github",
        "github",
        "push",
        {
            "ref": f"refs/heads/{branch}" if branch else f"refs/tags/{tag}",
            "after": "a" * 40,
            "repository": {"full_name": "o/r", "clone_url": "https://x/o/r.git"},
            "commits": [{"added": list(changed)}] if changed else [],
        },
    )
    assert event is not None
    assert matches(workflow(("push", config)), event) is expected


def test_same_repository_across_url_shapes() -> None:
    repository = {
        "full_name": "acme/workflows",
        "clone_url": "https://github.com/acme/workflows.git",
    }
    body = {"ref": "refs/heads/main", "after": "a" * 40, "repository": repository}
    event = parse("github", "github", "push", body)
    assert event is not None
    for url in (
        "https://token@github.com/acme/workflows.git",
        "git@github.com:acme/workflows.git",
        "https://github.com/acme/workflows",
    ):
        assert same_repository(url, event)
    assert not same_repository("https://github.com/acme/other.git", event)


@pytest.fixture
def store(example_store: Store) -> Store:
    return example_store


async def test_events_become_one_run_per_workflow_per_delivery(store: Store) -> None:
    nudged: list[str] = []
    dispatcher = Dispatcher(
        store,
        BundleLoader(store.revision_documents, builtin_agents()),
        kinds={"github": "github"},
        sources={"main": ("https://github.com/Codertocat/Hello-World.git", "master")},
        nudge_source=nudged.append,
    )
    opened = next(e for e in github_examples("pull_request") if e["action"] == "opened")
    event, _ = await store.add_event(
        forge="github",
        delivery_id="pr-1",
        event_type="pull_request",
        headers={},
        body=json.dumps(opened).encode(),
    )
    first = await dispatcher.handle(event)
    again = await dispatcher.handle(event)  # processed twice (a crash before finish_event)
    assert first == again
    assert len(first) == 1
    run = await store.get_run(first[0])
    assert run is not None
    assert run.workflow == "pr-security-review"
    assert run.trigger["pull_request"]["number"] == 2
    assert run.trigger["sha"] == opened["pull_request"]["head"]["sha"]
    push = next(e for e in github_examples("push") if e["ref"] == "refs/heads/master")
    pushed, _ = await store.add_event(
        forge="github",
        delivery_id="push-1",
        event_type="push",
        headers={},
        body=json.dumps(push).encode(),
    )
    assert await dispatcher.handle(pushed) == []  # pr-security-review listens on main, not master
    assert nudged == ["main"]  # but it is the workflows repo's branch: reconcile now


def test_only_new_human_comments_on_pull_requests_are_commands() -> None:
    examples = github_examples("issue_comment")
    assert all(
        parse("github", "github", "issue_comment", e) is None for e in examples
    )  # plain issues
    on_pr = json.loads(json.dumps(next(e for e in examples if e["action"] == "created")))
    on_pr["issue"]["pull_request"] = {"url": "https://api.github.com/repos/o/r/pulls/1"}
    on_pr["comment"]["body"] = "/approve"
    event = parse("github", "github", "issue_comment", on_pr)
    assert event is not None
    assert (event.kind, event.comment, event.number) == (
        "comment",
        "/approve",
        on_pr["issue"]["number"],
    )
    edited = {**on_pr, "action": "edited"}
    assert parse("github", "github", "issue_comment", edited) is None
    bot = json.loads(json.dumps(on_pr))
    bot["comment"]["user"]["type"] = "Bot"
    assert parse("github", "github", "issue_comment", bot) is None
    note = {
        "object_attributes": {
            "noteable_type": "MergeRequest",
            "note": "/retry",
            "created_at": "t",
            "updated_at": "t",
        },
        "merge_request": {"iid": 5, "last_commit": {"id": "abc"}},
        "user": {"username": "dana"},
        "project": {"path_with_namespace": "acme/app", "git_http_url": "https://gl/acme/app.git"},
    }
    gitlab = parse("gitlab", "gitlab", "Note Hook", note)
    assert gitlab is not None
    assert (gitlab.comment, gitlab.number, gitlab.sha, gitlab.actor) == ("/retry", 5, "abc", "dana")
    note["object_attributes"]["updated_at"] = "later"
    assert parse("gitlab", "gitlab", "Note Hook", note) is None


async def test_a_reconcile_request_through_the_api_nudges_that_source(store: Store) -> None:
    from runner.model import Event

    nudged: list[str] = []
    dispatcher = Dispatcher(
        store,
        BundleLoader(store.revision_documents, builtin_agents()),
        kinds={},
        sources={},
        nudge_source=nudged.append,
    )
    request = Event(
        id=1,
        forge="runner",
        delivery_id="reconcile:1",
        event_type="reconcile",
        headers={},
        body=json.dumps({"source": "main", "by": "ci"}).encode(),
        received_at=0.0,
    )
    assert await dispatcher.handle(request) == []
    assert nudged == ["main"]
