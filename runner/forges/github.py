"""GitHub's REST API, for what the runner asks and says: who may approve, the head of a pull
request, and replies. Calls retry on 5xx and rate limits with backoff; their failure is
reported to the caller as a transient error and never fails a run."""

from __future__ import annotations

import logging

from runner.approvals import Identity
from runner.errors import TransientError
from runner.forges.http import ApiClient

log = logging.getLogger(__name__)
WRITE = frozenset({"admin", "maintain", "write"})


class GitHubClient(ApiClient):
    kind = "github"

    def __init__(self, api_url: str, token: str, *, cache_seconds: float = 60.0) -> None:
        super().__init__(
            api_url,
            {
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
            },
            cache_seconds=cache_seconds,
        )

    async def identity(self, repository: str, user: str, teams: list[str]) -> Identity:
        """The user's write access to `repository` and membership of the listed teams."""

        async def permission() -> bool:
            answer = await self._call("GET", f"/repos/{repository}/collaborators/{user}/permission")
            return answer.status_code == 200 and answer.json().get("permission") in WRITE

        async def member(team: str) -> bool:
            org, _, slug = team.partition("/")
            answer = await self._call("GET", f"/orgs/{org}/teams/{slug}/memberships/{user}")
            return answer.status_code == 200 and answer.json().get("state") == "active"

        can_write = await self._cached(("write", repository, user), permission)
        found = set()
        for team in teams:
            if await self._cached(("team", team, user), lambda t=team: member(t)):
                found.add(team)
        return Identity(name=user, teams=frozenset(found), can_write=bool(can_write))

    async def pull_head(self, repository: str, number: int) -> tuple[str, str]:
        """(head sha, author) of a pull request."""
        answer = await self._call("GET", f"/repos/{repository}/pulls/{number}")
        if answer.status_code != 200:
            raise TransientError(
                f"GitHub: pull request {repository}#{number}: HTTP {answer.status_code}"
            )
        data = answer.json()
        return str(data["head"]["sha"]), str(data["user"]["login"])

    commit_path = "/repos/{repository}/commits/{sha}"

    async def head_accounts(self, repository: str, sha: str) -> frozenset[str]:
        """Who GitHub says authored and committed `sha` (`author.login`, `committer.login`;
        null when the commit's e-mail is linked to no account)."""

        async def ask() -> frozenset[str]:
            path = self.commit_path.format(repository=repository, sha=sha)
            answer = await self._call("GET", path)
            if answer.status_code != 200:
                raise TransientError(
                    f"{self.kind}: commit {sha[:12]} of {repository}: HTTP {answer.status_code}"
                )
            data = answer.json()
            return frozenset(
                str(user["login"])
                for user in (data.get("author"), data.get("committer"))
                if isinstance(user, dict) and user.get("login")
            )

        found: frozenset[str] = await self._cached(("commit", repository, sha), ask)
        return found

    async def changed_files(self, repository: str, number: int) -> tuple[str, ...]:
        """The files of a pull request, page by page (GitHub lists at most 3,000)."""
        found: list[str] = []
        async for batch in self._pages(f"/repos/{repository}/pulls/{number}/files"):
            for item in batch:
                found.append(str(item["filename"]))
                if item.get("previous_filename"):  # a rename touches its old path too
                    found.append(str(item["previous_filename"]))
        return tuple(sorted(set(found)))

    async def comment(self, repository: str, number: int, body: str) -> None:
        answer = await self._call(
            "POST", f"/repos/{repository}/issues/{number}/comments", json={"body": body}
        )
        if answer.status_code >= 300:
            log.warning("GitHub comment on %s#%d: HTTP %d", repository, number, answer.status_code)


STATES = {
    "queued": "pending",
    "running": "pending",
    "waiting_approval": "pending",
    "succeeded": "success",
    "failed": "failure",
    "rejected": "failure",
    "cancelled": "error",
    "skipped": "success",
}


class GitHubReporting:
    """What a run shows on GitHub: a commit status `runner/<workflow>` and, for a pull
    request, one comment per run, found again by a marker and edited as the run moves."""

    def __init__(self, client: GitHubClient) -> None:
        self.client = client

    async def status(
        self, repository: str, sha: str, context: str, state: str, description: str
    ) -> None:
        answer = await self.client._call(
            "POST",
            f"/repos/{repository}/statuses/{sha}",
            json={"state": state, "context": context, "description": description[:140]},
        )
        if answer.status_code >= 300:
            log.warning("GitHub status on %s@%s: HTTP %d", repository, sha[:12], answer.status_code)

    async def upsert_comment(self, repository: str, number: int, marker: str, body: str) -> None:
        text = f"{marker}\n{body}"
        me = await self.client.me()  # only the runner's own comment is edited, never a copy
        async for comments in self.client._pages(f"/repos/{repository}/issues/{number}/comments"):
            for comment in comments:
                user = comment.get("user") or {}
                # ours: by the token's user; an app's token may not ask who it is (GET /user
                # is 403), then only a bot's comment can be ours, never a person's copy
                ours = user.get("login") == me if me else user.get("type") == "Bot"
                if ours and str(comment.get("body", "")).startswith(marker):
                    await self.client._call(
                        "PATCH",
                        f"/repos/{repository}/issues/comments/{comment['id']}",
                        json={"body": text},
                    )
                    return
        await self.client.comment(repository, number, text)


class GiteaClient(GitHubClient):
    """Gitea's REST API (`api_url` like https://gitea.example.com/api/v1) has GitHub's shape for
    everything the runner uses but team membership and the token header."""

    kind = "gitea"
    commit_path = "/repos/{repository}/git/commits/{sha}"  # Gitea's single commit, with users

    def __init__(self, api_url: str, token: str, *, cache_seconds: float = 60.0) -> None:
        super().__init__(api_url, token, cache_seconds=cache_seconds)
        self.http.headers["Authorization"] = f"token {token}"
        self.http.headers.pop("X-GitHub-Api-Version", None)

    async def identity(self, repository: str, user: str, teams: list[str]) -> Identity:
        base = await super().identity(repository, user, [])

        async def member(team: str) -> bool:
            org, _, slug = team.partition("/")
            found = await self._call("GET", f"/orgs/{org}/teams/search", params={"q": slug})
            matches = (
                [t for t in (found.json().get("data") or []) if t.get("name") == slug]
                if found.status_code == 200
                else []
            )
            if not matches:
                return False
            answer = await self._call("GET", f"/teams/{matches[0]['id']}/members/{user}")
            return answer.status_code == 200

        found_teams = set()
        for team in teams:
            if await self._cached(("team", team, user), lambda t=team: member(t)):
                found_teams.add(team)
        return Identity(name=user, teams=frozenset(found_teams), can_write=base.can_write)
