"""What the runner asks of a forge's API and says through it, as small Protocols: GitHub, Gitea
and GitLab each implement them (`github.py`, `gitlab.py`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from runner.approvals import Identity
from runner.model import Run


class ForgeClient(Protocol):
    """Questions and replies about pull (merge) requests; `repository` is the forge's full name
    of the project (`owner/name`, or GitLab's `group/subgroup/name`)."""

    async def identity(self, repository: str, user: str, teams: list[str]) -> Identity:
        """The user's write access to `repository` and which of `teams` (`org/slug`, or a GitLab
        group path) they belong to; answers may be cached briefly."""
        ...

    async def pull_head(self, repository: str, number: int) -> tuple[str, str]:
        """(head sha, author login) of pull request `number`."""
        ...

    async def head_accounts(self, repository: str, sha: str) -> frozenset[str]:
        """The forge accounts of commit `sha`'s author and committer, as the forge links them
        (empty where the forge cannot say); raises `TransientError` when it cannot answer, so
        that an approval is refused rather than granted on missing information."""
        ...

    async def comment(self, repository: str, number: int, body: str) -> None:
        """Post a new comment on pull request `number`."""
        ...

    async def changed_files(self, repository: str, number: int) -> tuple[str, ...]:
        """The paths pull request `number` changes (for `paths` trigger filters)."""
        ...

    async def me(self) -> str | None:
        """The login the runner's token acts as, or None when the forge cannot say."""
        ...

    async def close(self) -> None: ...


async def pull_authors(
    client: ForgeClient, repository: str, number: int, sha: str
) -> frozenset[str]:
    """The authors the forge knows of for commit `sha` heading pull request `number`: the pull
    request's author and the commit's author and committer accounts. Raises TransientError
    when the forge cannot say (an approval is then refused, never granted without it)."""
    _head, author = await client.pull_head(repository, number)
    return await client.head_accounts(repository, sha) | {author}


async def run_authors(
    run: Run | None, sha: str | None, clients: Mapping[str, ForgeClient]
) -> frozenset[str]:
    """`pull_authors` for a run triggered through a pull request of a forge the runner has an
    API client for (the API and CLI channels ask what a comment would); empty otherwise."""
    if run is None or not sha:
        return frozenset()
    trigger = run.trigger
    number = (trigger.get("pull_request") or {}).get("number")
    client = clients.get(str(trigger.get("forge") or ""))
    if client is None or not isinstance(number, int) or not trigger.get("repository"):
        return frozenset()
    return await pull_authors(client, str(trigger["repository"]), number, sha)


class ForgeReporting(Protocol):
    """How a run shows on the forge: a commit status and one comment per run."""

    async def status(
        self, repository: str, sha: str, context: str, state: str, description: str
    ) -> None:
        """Set commit status `context` on `sha`; `state` is one of pending, success, failure,
        error (mapped to the forge's own words by the implementation)."""
        ...

    async def upsert_comment(self, repository: str, number: int, marker: str, body: str) -> None:
        """Create the pull request's comment that starts with `marker`, or edit it in place."""
        ...
