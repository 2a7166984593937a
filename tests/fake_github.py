"""A fake GitHub REST API on 127.0.0.1 (no real forge can run here): it answers the few calls
the runner makes and records them. Named as a fake; its paths follow GitHub's REST
description (collaborator permission, team membership, pull request, issue comments)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.test_serve import free_port


@dataclass
class FakeGitHub:
    writers: set[str] = field(default_factory=set)
    teams: dict[str, set[str]] = field(default_factory=dict)  # "org/slug" -> members
    pulls: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    comments: list[tuple[str, int, str]] = field(default_factory=list)
    statuses: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    edits: list[tuple[int, str]] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    url: str = ""

    def app(self) -> Starlette:
        async def permission(request: Request) -> JSONResponse:
            self.calls.append(("GET", request.url.path))
            self.auth.append(request.headers.get("authorization", ""))
            user = request.path_params["user"]
            return JSONResponse({"permission": "write" if user in self.writers else "read"})

        async def membership(request: Request) -> JSONResponse:
            self.calls.append(("GET", request.url.path))
            team = f"{request.path_params['org']}/{request.path_params['slug']}"
            if request.path_params["user"] in self.teams.get(team, set()):
                return JSONResponse({"state": "active", "role": "member"})
            return JSONResponse({"message": "Not Found"}, status_code=404)

        async def pull(request: Request) -> JSONResponse:
            self.calls.append(("GET", request.url.path))
            key = (
                f"{request.path_params['owner']}/{request.path_params['repo']}",
                int(request.path_params["number"]),
            )
            return JSONResponse(self.pulls[key])

        async def comment(request: Request) -> JSONResponse:
            self.calls.append(("POST", request.url.path))
            body = await request.json()
            repo = f"{request.path_params['owner']}/{request.path_params['repo']}"
            self.comments.append((repo, int(request.path_params["number"]), body["body"]))
            return JSONResponse({"id": len(self.comments), "body": body["body"]}, status_code=201)

        async def status(request: Request) -> JSONResponse:
            self.calls.append(("POST", request.url.path))
            repo = f"{request.path_params['owner']}/{request.path_params['repo']}"
            self.statuses.append((repo, request.path_params["sha"], await request.json()))
            return JSONResponse({"id": len(self.statuses)}, status_code=201)

        async def list_comments(request: Request) -> JSONResponse:
            self.calls.append(("GET", request.url.path))
            repo = f"{request.path_params['owner']}/{request.path_params['repo']}"
            number = int(request.path_params["number"])
            found = [
                {"id": i + 1, "body": body}
                for i, (r, n, body) in enumerate(self.comments)
                if (r, n) == (repo, number)
            ]
            return JSONResponse(found)

        async def edit_comment(request: Request) -> JSONResponse:
            self.calls.append(("PATCH", request.url.path))
            index = int(request.path_params["id"]) - 1
            body = (await request.json())["body"]
            repo, number, _ = self.comments[index]
            self.comments[index] = (repo, number, body)
            self.edits.append((index + 1, body))
            return JSONResponse({"id": index + 1, "body": body})

        return Starlette(
            routes=[
                Route("/repos/{owner}/{repo}/statuses/{sha}", status, methods=["POST"]),
                Route(
                    "/repos/{owner}/{repo}/issues/{number}/comments", list_comments, methods=["GET"]
                ),
                Route(
                    "/repos/{owner}/{repo}/issues/comments/{id}", edit_comment, methods=["PATCH"]
                ),
                Route("/repos/{owner}/{repo}/collaborators/{user}/permission", permission),
                Route("/orgs/{org}/teams/{slug}/memberships/{user}", membership),
                Route("/repos/{owner}/{repo}/pulls/{number}", pull),
                Route("/repos/{owner}/{repo}/issues/{number}/comments", comment, methods=["POST"]),
            ]
        )


@contextmanager
def fake_github() -> Iterator[FakeGitHub]:
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
