"""A FAKE GitLab REST API (v4) on 127.0.0.1 (no real forge can run here): it answers the few calls
the runner makes and records them. It is a fake, not GitLab: its paths, parameters, fields and
error answers follow GitLab's published REST documentation (docs.gitlab.com/api: users, group
and project members, merge requests, notes, commits' "set commit pipeline status"), not
behaviour observed on a real instance.

Like GitLab it is served under /api/v4, takes the `PRIVATE-TOKEN` header (401 without the right
one), names projects and groups by their URL-encoded path (`acme%2Fapp`: an unencoded path is a
404), answers 400 to a commit status whose `state` is not one of pending, running, success,
failed, canceled, and to a status that repeats the pending or running state its context already
has (GitLab's "Cannot transition status via :enqueue from :pending")."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.test_serve import free_port

STATES = ("pending", "running", "success", "failed", "canceled")
_VERB = {"pending": "enqueue", "running": "run"}
Handler = Callable[[Request, dict[str, str]], Awaitable[Response]]


@dataclass
class FakeGitLab:
    token: str = "gitlab-token"
    users: dict[str, int] = field(default_factory=dict)  # username -> user id
    members: dict[str, dict[str, int]] = field(default_factory=dict)  # project -> user -> level
    groups: dict[str, set[str]] = field(default_factory=dict)  # group path -> usernames
    merge_requests: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    diffs: dict[tuple[str, int], list[tuple[str, str]]] = field(default_factory=dict)  # old, new
    notes: list[dict[str, Any]] = field(default_factory=list)  # every note, in creation order
    edits: list[tuple[int, str]] = field(default_factory=list)  # (note id, new body)
    statuses: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # accepted
    rejected: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # 400s
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, raw path)
    fail_next: list[int] = field(default_factory=list)  # status codes to answer next, in order
    fail_headers: dict[str, str] = field(default_factory=dict)  # sent with those answers
    bot: str = "runner-bot"  # the token's user: the author of the notes it posts
    url: str = ""

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v4"

    def comments(self, project: str, iid: int) -> list[str]:
        """The bodies of the notes on merge request `iid`, oldest first."""
        return [
            n["body"] for n in self.notes if (n["project"], n["noteable_iid"]) == (project, iid)
        ]

    def _name(self, user_id: int) -> str | None:
        return next((name for name, uid in self.users.items() if uid == user_id), None)

    def _user(self, name: str) -> dict[str, Any]:
        return {"id": self.users.get(name, 0), "username": name, "name": name, "state": "active"}

    async def _me(self, _: Request, __: dict[str, str]) -> Response:
        return JSONResponse(self._user(self.bot))

    async def _users(self, request: Request, _: dict[str, str]) -> Response:
        name = request.query_params.get("username", "")
        found = [n for n in self.users if n.lower() == name.lower()]
        return JSONResponse([self._user(n) for n in found])

    async def _project_member(self, _: Request, p: dict[str, str]) -> Response:
        name = self._name(int(p["user_id"]))
        level = self.members.get(p["project"], {}).get(name or "")
        if level is None:
            return JSONResponse({"message": "404 Not found"}, status_code=404)
        return JSONResponse({**self._user(name or ""), "access_level": level})

    async def _group_member(self, _: Request, p: dict[str, str]) -> Response:
        name = self._name(int(p["user_id"]))
        if name is None or name not in self.groups.get(p["group"], set()):
            return JSONResponse({"message": "404 Not found"}, status_code=404)
        return JSONResponse({**self._user(name), "access_level": 30})

    async def _merge_request(self, _: Request, p: dict[str, str]) -> Response:
        found = self.merge_requests.get((p["project"], int(p["iid"])))
        if found is None:
            return JSONResponse({"message": "404 Not found"}, status_code=404)
        return JSONResponse(found)

    async def _diffs(self, request: Request, p: dict[str, str]) -> Response:
        key = (p["project"], int(p["iid"]))
        if key not in self.merge_requests:
            return JSONResponse({"message": "404 Not found"}, status_code=404)
        per_page = min(int(request.query_params.get("per_page", "20")), 100)
        page = int(request.query_params.get("page", "1"))
        found = [
            {
                "old_path": old,
                "new_path": new,
                "a_mode": "100644",
                "b_mode": "100644",
                "diff": "",
                "new_file": False,
                "renamed_file": old != new,
                "deleted_file": False,
            }
            for old, new in self.diffs.get(key, [])
        ]
        return JSONResponse(found[(page - 1) * per_page : page * per_page])

    async def _list_notes(self, request: Request, p: dict[str, str]) -> Response:
        iid = int(p["iid"])
        found = [n for n in self.notes if (n["project"], n["noteable_iid"]) == (p["project"], iid)]
        if request.query_params.get("sort", "desc") == "desc":  # GitLab's default order
            found.reverse()
        per_page = min(int(request.query_params.get("per_page", "20")), 100)
        page = int(request.query_params.get("page", "1"))
        chunk = found[(page - 1) * per_page : page * per_page]
        more = page * per_page < len(found)
        headers = {"x-page": str(page), "x-next-page": str(page + 1) if more else ""}
        public = [{k: v for k, v in n.items() if k != "project"} for n in chunk]
        return JSONResponse(public, headers=headers)

    async def _create_note(self, request: Request, p: dict[str, str]) -> Response:
        body = (await request.json()).get("body")
        if not body:
            return JSONResponse({"error": "body is missing"}, status_code=400)
        note = {
            "id": 1000 + len(self.notes) + 1,
            "project": p["project"],
            "body": body,
            "author": self._user(self.bot),
            "system": False,
            "noteable_type": "MergeRequest",
            "noteable_iid": int(p["iid"]),
        }
        self.notes.append(note)
        return JSONResponse({k: v for k, v in note.items() if k != "project"}, status_code=201)

    async def _edit_note(self, request: Request, p: dict[str, str]) -> Response:
        body = (await request.json()).get("body")
        for note in self.notes:
            if note["id"] == int(p["note_id"]) and note["project"] == p["project"]:
                note["body"] = body
                self.edits.append((note["id"], body))
                return JSONResponse({k: v for k, v in note.items() if k != "project"})
        return JSONResponse({"message": "404 Not found"}, status_code=404)

    async def _status(self, request: Request, p: dict[str, str]) -> Response:
        data = await request.json()
        state = data.get("state")
        key = (p["project"], p["sha"], data.get("name") or data.get("context") or "default")
        if state not in STATES:
            self.rejected.append((p["project"], p["sha"], data))
            return JSONResponse({"error": "state does not have a valid value"}, status_code=400)
        current = next(
            (s["state"] for pr, sha, s in reversed(self.statuses) if (pr, sha, s["name"]) == key),
            None,
        )
        if current in _VERB and current == state:
            self.rejected.append((p["project"], p["sha"], data))
            verb = _VERB[state]
            message = (
                f"Cannot transition status via :{verb} from :{state} "
                f'(Reason(s): Status cannot transition via "{verb}")'
            )
            return JSONResponse({"message": message}, status_code=400)
        self.statuses.append((p["project"], p["sha"], {**data, "name": key[2]}))
        return JSONResponse(
            {"id": len(self.statuses), "sha": p["sha"], "status": state, "name": key[2]},
            status_code=201,
        )

    def app(self) -> Starlette:
        project, iid = r"/projects/(?P<project>[^/]+)", r"/merge_requests/(?P<iid>\d+)"
        routes: list[tuple[str, str, Handler]] = [
            ("GET", r"/users", self._users),
            ("GET", r"/user", self._me),
            ("GET", rf"{project}/members/all/(?P<user_id>\d+)", self._project_member),
            ("GET", r"/groups/(?P<group>[^/]+)/members/all/(?P<user_id>\d+)", self._group_member),
            ("GET", rf"{project}{iid}", self._merge_request),
            ("GET", rf"{project}{iid}/notes", self._list_notes),
            ("GET", rf"{project}{iid}/diffs", self._diffs),
            ("POST", rf"{project}{iid}/notes", self._create_note),
            ("PUT", rf"{project}{iid}/notes/(?P<note_id>\d+)", self._edit_note),
            ("POST", rf"{project}/statuses/(?P<sha>[0-9a-f]{{7,40}})", self._status),
        ]
        table = [(m, re.compile(rf"/api/v4{pattern}"), h) for m, pattern, h in routes]

        async def dispatch(request: Request) -> Response:
            # the raw path: "acme%2Fapp" is one segment, as GitLab reads it
            raw = request.scope.get("raw_path", b"").decode().split("?", 1)[0]
            self.calls.append((request.method, raw))
            if request.headers.get("private-token") != self.token:
                return JSONResponse({"message": "401 Unauthorized"}, status_code=401)
            if self.fail_next:
                code = self.fail_next.pop(0)
                return Response(f"fake failure {code}", status_code=code, headers=self.fail_headers)
            for method, pattern, handler in table:
                match = pattern.fullmatch(raw)
                if match and method == request.method:
                    params = {k: unquote(v) for k, v in match.groupdict().items()}
                    return await handler(request, params)
            return JSONResponse({"error": "404 Not Found"}, status_code=404)

        return Starlette(
            routes=[Route("/{path:path}", dispatch, methods=["GET", "POST", "PUT", "DELETE"])]
        )


@contextmanager
def fake_gitlab() -> Iterator[FakeGitLab]:
    fake = FakeGitLab()
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
