"""GitLab's REST API (v4), for what the runner asks and says: who may approve (project role,
group membership), the head of a merge request, replies, commit statuses and the one note per
run. `api_url` is like https://gitlab.example.com/api/v4; projects and groups are named by their
URL-encoded path (`group%2Fsub%2Fname`). Calls retry on 5xx and rate limits with backoff; their
failure is reported to the caller as a transient error and never fails a run."""

from __future__ import annotations

import logging
from urllib.parse import quote

from runner.approvals import Identity
from runner.errors import TransientError
from runner.forges.http import ApiClient

log = logging.getLogger(__name__)
DEVELOPER = 30  # GitLab's access_level for the Developer role: may push, hence "write access"
# the runner's commit states (GitHub's words) in GitLab's: pending running success failed canceled
STATES = {"pending": "pending", "success": "success", "failure": "failed", "error": "canceled"}


def _encoded(path: str) -> str:
    """A project or group path as GitLab's API takes it in a URL (`acme%2Fapp`)."""
    return quote(path, safe="")


class GitLabClient(ApiClient):
    """Both halves of a forge for GitLab: `ForgeClient` (identity, merge request head, replies)
    and `ForgeReporting` (commit status, one note per run kept up to date)."""

    kind = "gitlab"

    def __init__(
        self, api_url: str, token: str, *, cache_seconds: float = 60.0, backoff: float = 0.5
    ) -> None:
        super().__init__(
            api_url, {"PRIVATE-TOKEN": token}, cache_seconds=cache_seconds, backoff=backoff
        )

    async def _user_id(self, user: str) -> int | None:
        answer = await self._call("GET", "/users", params={"username": user})
        if answer.status_code != 200:
            return None
        for found in answer.json() or []:
            if str(found.get("username", "")).lower() == user.lower():
                return int(found["id"])
        return None

    async def identity(self, repository: str, user: str, teams: list[str]) -> Identity:
        """Write access is a role of Developer or more on the project (inherited from its groups
        too); a team is a GitLab group path (`acme/security`), counted with its subgroups'
        inherited members."""
        user_id = await self._cached(("user", user), lambda: self._user_id(user))
        if user_id is None:
            return Identity(name=user)

        async def permission() -> bool:
            answer = await self._call(
                "GET", f"/projects/{_encoded(repository)}/members/all/{user_id}"
            )
            if answer.status_code != 200:
                return False
            return int(answer.json().get("access_level") or 0) >= DEVELOPER

        async def member(group: str) -> bool:
            answer = await self._call("GET", f"/groups/{_encoded(group)}/members/all/{user_id}")
            return answer.status_code == 200 and answer.json().get("state") == "active"

        can_write = await self._cached(("write", repository, user), permission)
        found = set()
        for team in teams:
            if await self._cached(("team", team, user), lambda t=team: member(t)):
                found.add(team)
        return Identity(name=user, teams=frozenset(found), can_write=bool(can_write))

    async def pull_head(self, repository: str, number: int) -> tuple[str, str]:
        """(head sha, author) of merge request `number` (its iid)."""
        answer = await self._call(
            "GET", f"/projects/{_encoded(repository)}/merge_requests/{number}"
        )
        if answer.status_code != 200:
            raise TransientError(
                f"GitLab: merge request {repository}!{number}: HTTP {answer.status_code}"
            )
        data = answer.json()
        return str(data["sha"]), str(data["author"]["username"])

    async def head_accounts(self, repository: str, sha: str) -> frozenset[str]:
        """GitLab's commit API names authors by e-mail, not by account: nothing to add here.
        The pusher of a merge request's head comes from its signed `update` hooks instead."""
        return frozenset()

    async def changed_files(self, repository: str, number: int) -> tuple[str, ...]:
        """The paths a merge request changes (`/diffs`, GitLab 15.7+), old and new names."""
        found: set[str] = set()
        async for batch in self._pages(
            f"/projects/{_encoded(repository)}/merge_requests/{number}/diffs"
        ):
            for diff in batch:
                found.update(str(diff[k]) for k in ("old_path", "new_path") if diff.get(k))
        return tuple(sorted(found))

    async def comment(self, repository: str, number: int, body: str) -> None:
        answer = await self._call(
            "POST",
            f"/projects/{_encoded(repository)}/merge_requests/{number}/notes",
            json={"body": body},
        )
        if answer.status_code >= 300:
            log.warning("GitLab note on %s!%d: HTTP %d", repository, number, answer.status_code)

    async def status(
        self, repository: str, sha: str, context: str, state: str, description: str
    ) -> None:
        gitlab_state = STATES.get(state)
        if gitlab_state is None:
            log.warning("GitLab status on %s@%s: unknown state %r", repository, sha[:12], state)
            return
        answer = await self._call(
            "POST",
            f"/projects/{_encoded(repository)}/statuses/{sha}",
            json={"state": gitlab_state, "name": context, "description": description[:140]},
        )
        if answer.status_code < 300:
            return
        if answer.status_code == 400 and "cannot transition status" in answer.text.lower():
            # GitLab refuses pending -> pending (and running -> running): already so, a no-op
            log.debug("GitLab status on %s@%s already %s", repository, sha[:12], gitlab_state)
            return
        log.warning(
            "GitLab status on %s@%s: HTTP %d %s",
            repository,
            sha[:12],
            answer.status_code,
            answer.text[:200],
        )

    async def upsert_comment(self, repository: str, number: int, marker: str, body: str) -> None:
        text = f"{marker}\n{body}"
        notes_path = f"/projects/{_encoded(repository)}/merge_requests/{number}/notes"
        me = await self.me()  # only the runner's own note is edited, never someone's copy
        oldest_first = {"sort": "asc", "order_by": "created_at"}
        async for notes in self._pages(notes_path, oldest_first):
            for note in notes:
                ours = me is not None and (note.get("author") or {}).get("username") == me
                if ours and not note.get("system") and str(note.get("body", "")).startswith(marker):
                    edited = await self._call(
                        "PUT", f"{notes_path}/{note['id']}", json={"body": text}
                    )
                    if edited.status_code >= 300:
                        log.warning(
                            "GitLab note %s on %s!%d: HTTP %d",
                            note["id"],
                            repository,
                            number,
                            edited.status_code,
                        )
                    return
        await self.comment(repository, number, text)
