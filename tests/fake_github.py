"""A fake GitHub REST API on 127.0.0.1 (no real forge can run here): it answers the few calls
the runner makes and records them. Named as a fake, and held to GitHub's published REST
description (npm @octokit/openapi, see tests/github_openapi.py): every request it receives is
checked against the documented operation (path, parameters, JSON body), one GitHub would
refuse is answered 422 and recorded in `violations`, and every answer it gives is checked
against the documented schema of its status (answers are built from GitHub's own examples).
`fake_github()` fails the test on exit while `violations` is not empty."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.github_openapi import check_request, check_response, response_example
from tests.test_serve import free_port

Answer = tuple[int, Any]  # (status, JSON body or None)
Handler = Callable[[Request, Any], Awaitable[Answer]]
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
NOT_FOUND = {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}


def _merged(base: Any, overlay: Any) -> Any:
    """`overlay` laid over `base`, dictionaries merged key by key."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        return {**base, **{k: _merged(base.get(k), v) for k, v in overlay.items()}}
    return overlay


@dataclass
class FakeGitHub:
    writers: set[str] = field(default_factory=set)
    teams: dict[str, set[str]] = field(default_factory=dict)  # "org/slug" -> members
    # (repo, number) -> fields of the pull request that matter to the test (head sha, author);
    # the answer is GitHub's example pull request with these laid over it
    pulls: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    files: dict[tuple[str, int], list[str]] = field(default_factory=dict)  # a PR's changed files
    # (repo, sha) -> the accounts GitHub links to a commit: {"author": login, "committer": login}
    # (a commit not listed, or a login of None: an e-mail linked to no account, answered null)
    commits: dict[tuple[str, str], dict[str, str | None]] = field(default_factory=dict)
    comments: list[tuple[str, int, str]] = field(default_factory=list)  # comment id = index + 1
    authors: dict[int, str] = field(default_factory=dict)  # comment index -> login (else bot)
    bot: str = "runner-bot"  # the token's user: the author of what the runner posts
    statuses: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    edits: list[tuple[int, str]] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    # requests GitHub's description refuses, and answers of the fake it does not document
    violations: list[str] = field(default_factory=list)
    url: str = ""
    # GitHub's rate limit, when set: requests left in the window and its reset (epoch s). Every
    # answer then carries GitHub's x-ratelimit-* headers; a request with none left is answered
    # 403 "API rate limit exceeded" (as GitHub does) and recorded in `over_limit`
    rate_remaining: int | None = None
    rate_reset: float = 0.0
    over_limit: list[tuple[str, str]] = field(default_factory=list)

    def rate_headers(self) -> dict[str, str]:
        if self.rate_remaining is None:
            return {}
        return {
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": str(max(self.rate_remaining, 0)),
            "x-ratelimit-used": str(5000 - max(self.rate_remaining, 0)),
            "x-ratelimit-reset": str(int(self.rate_reset)),
            "x-ratelimit-resource": "core",
        }

    def spend(self, method: str, path: str) -> Response | None:
        """Count a request against the rate limit; GitHub's refusal once none is left."""
        if self.rate_remaining is None:
            return None
        if self.rate_remaining <= 0 and time.time() < self.rate_reset:
            self.over_limit.append((method, path))
            return JSONResponse(
                {
                    "message": "API rate limit exceeded for user ID 1.",
                    "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
                },
                status_code=403,
                headers=self.rate_headers(),
            )
        self.rate_remaining -= 1
        return None

    def comment_json(self, index: int) -> dict[str, Any]:
        """Comment `index` (0-based) as GitHub's `issue-comment` answer."""
        repo, number, body = self.comments[index]
        example = response_example("POST", "/repos/{owner}/{repo}/issues/{number}/comments", 201)
        answer: dict[str, Any] = _merged(
            example,
            {
                "id": index + 1,
                "body": body,
                "user": {"login": self.authors.get(index, self.bot)},
                "url": f"https://api.github.com/repos/{repo}/issues/comments/{index + 1}",
                "html_url": f"https://github.com/{repo}/pull/{number}#issuecomment-{index + 1}",
                "issue_url": f"https://api.github.com/repos/{repo}/issues/{number}",
            },
        )
        return answer

    def checked(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """`handler` behind GitHub's description: a request it refuses is answered 422 (as
        GitHub answers a bad body) and recorded; the handler's answer is checked too."""

        async def endpoint(request: Request) -> Response:
            method, path = request.method, request.url.path
            self.calls.append((method, path))
            refused = self.spend(method, path)
            if refused is not None:
                return refused
            raw = await request.body()
            body, problems = None, []
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    problems.append(f"{method} {path}: the body is not JSON")
            query: dict[str, list[str]] = {}
            for key, value in request.query_params.multi_items():
                query.setdefault(key, []).append(value)
            problems += check_request(method, path, query, body)
            if problems:
                self.violations.extend(problems)
                return JSONResponse(
                    {
                        "message": "Validation Failed",
                        "errors": [{"code": "invalid", "message": p} for p in problems],
                        "documentation_url": "https://docs.github.com/rest",
                        "status": "422",
                    },
                    status_code=422,
                )
            status, answer = await handler(request, body)
            self.violations.extend(
                f"the fake's answer: {p}" for p in check_response(method, path, status, answer)
            )
            if answer is None:
                return Response(status_code=status, headers=self.rate_headers())
            return JSONResponse(answer, status_code=status, headers=self.rate_headers())

        return endpoint

    def app(self) -> Starlette:
        async def permission(request: Request, _: Any) -> Answer:
            self.auth.append(request.headers.get("authorization", ""))
            user = request.path_params["user"]
            level = "write" if user in self.writers else "read"
            example = response_example("GET", request.url.path, 200)
            return 200, _merged(
                example,
                {
                    "permission": level,
                    "role_name": level,
                    # GitHub's example user lacks `role_name`, which the schema requires
                    "user": {"login": user, "role_name": level},
                },
            )

        async def membership(request: Request, _: Any) -> Answer:
            org, slug, user = (request.path_params[k] for k in ("org", "slug", "user"))
            if user not in self.teams.get(f"{org}/{slug}", set()):
                return 404, NOT_FOUND
            example = response_example("GET", request.url.path, 200)
            url = f"https://api.github.com/organizations/1/team/1/memberships/{user}"
            return 200, _merged(example, {"state": "active", "role": "member", "url": url})

        async def pull(request: Request, _: Any) -> Answer:
            repo = f"{request.path_params['owner']}/{request.path_params['repo']}"
            number = int(request.path_params["number"])
            if (repo, number) not in self.pulls:
                return 404, NOT_FOUND
            example = response_example("GET", request.url.path, 200)
            example["requested_teams"] = []  # GitHub's example team lacks its required `type`
            return 200, _merged(example, {"number": number, **self.pulls[(repo, number)]})

        async def pull_files(request: Request, _: Any) -> Answer:
            repo = f"{request.path_params['owner']}/{request.path_params['repo']}"
            key = (repo, int(request.path_params["number"]))
            if key not in self.pulls:
                return 404, NOT_FOUND
            per_page = int(request.query_params.get("per_page", 30))
            page = int(request.query_params.get("page", 1))
            (example,) = response_example("GET", request.url.path, 200)[:1]
            found = [
                _merged(example, {"filename": name, "status": "modified"})
                for name in self.files.get(key, [])
            ]
            return 200, found[(page - 1) * per_page : page * per_page]

        def accounts(repo: str, sha: str) -> dict[str, Any]:
            linked = self.commits.get((repo, sha), {})
            return {
                role: {"login": linked[role], "id": 1, "type": "User"} if linked.get(role) else None
                for role in ("author", "committer")
            }

        async def commit(request: Request, _: Any) -> Answer:
            repo = f"{request.path_params['owner']}/{request.path_params['repo']}"
            sha = request.path_params["ref"]
            example = response_example("GET", request.url.path, 200)
            answer = _merged(example, {"sha": sha})
            answer["files"] = []  # GitHub's example file lacks its required `sha`
            for role, user in accounts(repo, sha).items():  # null replaces, not merges
                answer[role] = None if user is None else _merged(example.get(role) or {}, user)
            return 200, answer

        async def gitea_commit(request: Request) -> Response:
            """Gitea's single commit (`/repos/{owner}/{repo}/git/commits/{sha}`), whose
            `author` and `committer` are Gitea users; GitHub's path of the same name answers a
            git object without accounts, which the runner's GitHub client never asks for."""
            method, path = request.method, request.url.path
            self.calls.append((method, path))
            if "x-github-api-version" in request.headers:
                self.violations.append(f"{method} {path}: the GitHub client asks Gitea's path")
            repo = f"{request.path_params['owner']}/{request.path_params['repo']}"
            sha = request.path_params["sha"]
            return JSONResponse({"sha": sha, **accounts(repo, sha)})

        async def me(request: Request, _: Any) -> Answer:
            example = response_example("GET", request.url.path, 200)
            return 200, _merged(example, {"login": self.bot})

        async def comment(request: Request, body: Any) -> Answer:
            repo = f"{request.path_params['owner']}/{request.path_params['repo']}"
            self.comments.append((repo, int(request.path_params["number"]), body["body"]))
            return 201, self.comment_json(len(self.comments) - 1)

        async def status(request: Request, body: Any) -> Answer:
            repo = f"{request.path_params['owner']}/{request.path_params['repo']}"
            sha = request.path_params["sha"]
            self.statuses.append((repo, sha, body))
            example = response_example("POST", request.url.path, 201)
            return 201, _merged(
                example,
                {
                    "id": len(self.statuses),
                    "url": f"https://api.github.com/repos/{repo}/statuses/{sha}",
                    "state": body["state"],
                    "context": body.get("context", "default"),
                    "description": body.get("description"),
                    "target_url": body.get("target_url"),
                },
            )

        async def list_comments(request: Request, _: Any) -> Answer:
            repo = f"{request.path_params['owner']}/{request.path_params['repo']}"
            number = int(request.path_params["number"])
            per_page = int(request.query_params.get("per_page", 30))
            page = int(request.query_params.get("page", 1))
            found = [
                self.comment_json(i)
                for i, (r, n, _) in enumerate(self.comments)
                if (r, n) == (repo, number)
            ]
            return 200, found[(page - 1) * per_page : page * per_page]

        async def edit_comment(request: Request, body: Any) -> Answer:
            repo = f"{request.path_params['owner']}/{request.path_params['repo']}"
            index = int(request.path_params["id"]) - 1
            if not 0 <= index < len(self.comments) or self.comments[index][0] != repo:
                return 404, NOT_FOUND
            _, number, _ = self.comments[index]
            self.comments[index] = (repo, number, body["body"])
            self.edits.append((index + 1, body["body"]))
            return 200, self.comment_json(index)

        async def elsewhere(request: Request) -> Response:
            """A path the fake does not serve. A GitHub client's request (it names GitHub's
            API version) is a violation: either GitHub has no such path, or the fake lacks
            it. Other forges' own paths (Gitea's team search) just get GitHub's 404."""
            method, path = request.method, request.url.path
            self.calls.append((method, path))
            if "x-github-api-version" in request.headers:
                problems = check_request(method, path.split("?")[0], None, None) or [
                    f"{method} {path}: GitHub serves this, the fake does not (add it)"
                ]
                self.violations.extend(problems)
            return JSONResponse(NOT_FOUND, status_code=404)

        checked = self.checked
        return Starlette(
            routes=[
                Route("/repos/{owner}/{repo}/statuses/{sha}", checked(status), methods=["POST"]),
                Route(
                    "/repos/{owner}/{repo}/issues/{number}/comments",
                    checked(list_comments),
                    methods=["GET"],
                ),
                Route(
                    "/repos/{owner}/{repo}/issues/comments/{id}",
                    checked(edit_comment),
                    methods=["PATCH"],
                ),
                Route(
                    "/repos/{owner}/{repo}/collaborators/{user}/permission",
                    checked(permission),
                    methods=["GET"],
                ),
                Route(
                    "/orgs/{org}/teams/{slug}/memberships/{user}",
                    checked(membership),
                    methods=["GET"],
                ),
                Route("/user", checked(me), methods=["GET"]),
                Route("/repos/{owner}/{repo}/commits/{ref}", checked(commit), methods=["GET"]),
                Route("/repos/{owner}/{repo}/git/commits/{sha}", gitea_commit, methods=["GET"]),
                Route("/repos/{owner}/{repo}/pulls/{number}", checked(pull), methods=["GET"]),
                Route(
                    "/repos/{owner}/{repo}/pulls/{number}/files",
                    checked(pull_files),
                    methods=["GET"],
                ),
                Route(
                    "/repos/{owner}/{repo}/issues/{number}/comments",
                    checked(comment),
                    methods=["POST"],
                ),
                Route("/{rest:path}", elsewhere, methods=ALL_METHODS),
            ]
        )


@contextmanager
def fake_github() -> Iterator[FakeGitHub]:
    """A running fake; on a normal exit, asserts that GitHub's description accepted every
    request it received and documents every answer it gave."""
    fake = FakeGitHub()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(fake.app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert fake.violations == [], "GitHub's REST description refuses:\n" + "\n".join(
        fake.violations
    )
