"""Benchmark: webhook intake over real HTTP, next to a bare Starlette endpoint, and the latency
from a signed push delivery to the first step of its run starting.

Intake: `runner serve --role web` (GitHub forge with a webhook secret) receives signed 7 KB
`issue_comment` deliveries, each with its own `X-GitHub-Delivery`, through the whole path
(size, content type, HMAC-SHA256 signature, stored with its delivery id, 202). In the same run,
on the same server settings (uvicorn, one process, log level warning, no lifespan, the same
HTTP and loop implementations), a bare Starlette app whose one POST endpoint reads the body and
answers 202 JSON gets the same requests. Both are driven by the same bounded client in this
process: `--concurrency` HTTP/1.1 keep-alive connections, each sending its next request when
the previous answer is in; every request (headers, 7 KB body, signature) is built before
timing and written as is. (`--client httpx` uses httpx.AsyncClient instead; it costs 1-3 ms
of client CPU per request here, more with more connections, and saturates its core at 350-750
req/s, below either server, so it measures the client.) The servers are separate processes;
client and servers share the machine's cores, so each round also prints the server's CPU per
request (from /proc), steadier than req/s when other work runs on the machine. Rounds
alternate between the two servers; the best of each is kept.
Afterwards every delivery must be in the store and every answer a 2xx: otherwise exit 1.

Push to first step: `runner serve --role all` with a folder source holding one workflow on
`push` (one step, a repo-local agent that writes `{}`), the local executor and the GitHub
forge; `--pushes` signed push deliveries are sent one at a time (each with its own delivery id
and head commit, of a local git repository the run's workspace is cloned from), each after the
previous run finished. Latency = the step's stored `started_at` minus the client's clock just
before sending (same machine, time.time()); the stages in between come from the stored
timestamps (event received, run requested, run started).

Usage: python bench/webhooks.py [--requests N] [--warmup N] [--rounds R] [--concurrency C]
                                [--client raw|httpx] [--pushes K] [--postgres [URL]]
                                [--skip-sqlite] [--skip-intake] [--skip-push]
`--postgres` alone starts a throwaway cluster (as the tests do; RUNNER_TEST_POSTGRES_URL names
an existing server instead); with a URL, databases are created on that server.
Targets: intake at least 0.5x the bare endpoint's throughput; push-to-first-step p50 < 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1]))

import httpx

from runner.store.base import open_store

SECRET = "bench-webhook-secret"
BODY_BYTES = 7 * 1024
WORKFLOW = "push-bench"
RUN_DEADLINE = 30.0  # seconds a pushed run may take before the benchmark gives up

BARE_APP = """\
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def hook(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"status": "accepted", "bytes": len(body)}, status_code=202)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[Route("/healthz", healthz), Route("/hooks/{forge}", hook, methods=["POST"])]
)
# the settings `runner serve` gives uvicorn (runner/services.py)
uvicorn.Server(
    uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                   lifespan="off")
).run()
"""

NOOP_AGENT = """\
apiVersion: runner/v1
kind: Agent
metadata: {name: noop}
spec:
  command: [sh, -c, 'echo "{}" > "$RUNNER_OUTPUT"']
  timeout: 30s
"""

PUSH_WORKFLOW = f"""\
apiVersion: runner/v1
kind: Workflow
metadata: {{name: {WORKFLOW}}}
spec:
  triggers: [{{push: {{branches: [main]}}}}]
  steps: [{{id: first, agent: noop}}]
"""


# -- helpers ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on the runner's database, with the plain driver."""
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            return list(conn.execute(sql).fetchall())
    import psycopg

    with psycopg.connect(url) as conn:
        return list(conn.execute(sql).fetchall())


class Failed(Exception):
    """Something the benchmark counts on did not happen (lost delivery, non-2xx, failed run)."""


class Service:
    """A server subprocess on 127.0.0.1:port, ready when `path` answers 200; SIGTERM at exit."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict[str, str], port: int):
        self.name, self.argv, self.cwd, self.env, self.port = name, argv, cwd, env, port
        self.base = f"http://127.0.0.1:{port}"
        self.log = cwd / f"{name}.log"
        self.pid = 0

    def cpu_seconds(self) -> float:
        """CPU time (user + system, every thread) the server process has used; 0 off Linux."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @contextlib.contextmanager
    def running(self, ready_path: str = "/healthz", timeout: float = 60.0) -> Iterator[Service]:
        with self.log.open("w") as log:
            process = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.pid = process.pid
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise Failed(f"{self.name} exited at start:\n{self.log.read_text()[-3000:]}")
                try:
                    if httpx.get(self.base + ready_path, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise Failed(f"{self.name} not ready in {timeout:g}s:\n{self.log.read_text()}")
                time.sleep(0.05)
            yield self
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if process.returncode not in (0, -signal.SIGTERM):
            raise Failed(
                f"{self.name} exited {process.returncode}:\n{self.log.read_text()[-3000:]}"
            )


def runner_service(name: str, home: Path, role: str, port: int) -> Service:
    env = {**os.environ, "BENCH_GH_SECRET": SECRET}
    env.pop("RUNNER_CONFIG", None)
    argv = [sys.executable, "-m", "runner", "serve", "--role", role, "--grace", "5"]
    return Service(name, argv, home, env, port)


def runner_yaml(home: Path, port: int, database: str, extra: str = "") -> None:
    (home / "runner.yaml").write_text(
        f"listen: {{port: {port}}}\n"
        f"database: {{url: '{database}'}}\n"
        "forges: [{name: github, kind: github, webhook_secret_env: BENCH_GH_SECRET}]\n"
        f"data_dir: '{home / 'data'}'\n"
        # the limiter stays on the path, with room for the load (600/minute by default)
        "rate_limits: {webhooks: 1000000/second}\n" + extra
    )


# -- intake throughput -----------------------------------------------------------------------------
def comment_body(i: int, tag: str) -> bytes:
    """A GitHub `issue_comment` (created, on a pull request) of exactly BODY_BYTES bytes."""
    repo = "acme/webapp"
    api = f"https://api.github.com/repos/{repo}"
    user = {
        "login": "octocat",
        "id": 583231,
        "node_id": "MDQ6VXNlcjU4MzIzMQ==",
        "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4",
        "url": "https://api.github.com/users/octocat",
        "html_url": "https://github.com/octocat",
        "type": "User",
        "site_admin": False,
    }
    payload: dict[str, Any] = {
        "action": "created",
        "issue": {
            "url": f"{api}/issues/42",
            "html_url": f"https://github.com/{repo}/pull/42",
            "id": 1_000_000 + i,
            "number": 42,
            "title": "Make the parser faster",
            "user": user,
            "labels": [],
            "state": "open",
            "locked": False,
            "comments": 3,
            "created_at": "2024-05-01T10:00:00Z",
            "updated_at": "2024-05-01T10:05:00Z",
            "author_association": "CONTRIBUTOR",
            "pull_request": {
                "url": f"{api}/pulls/42",
                "html_url": f"https://github.com/{repo}/pull/42",
                "diff_url": f"https://github.com/{repo}/pull/42.diff",
                "patch_url": f"https://github.com/{repo}/pull/42.patch",
            },
            "body": "The parser allocates a list per token; this reuses one buffer.",
        },
        "comment": {
            "url": f"{api}/issues/comments/{2_000_000 + i}",
            "html_url": f"https://github.com/{repo}/pull/42#issuecomment-{2_000_000 + i}",
            "id": 2_000_000 + i,
            "user": user,
            "created_at": "2024-05-01T10:05:00Z",
            "updated_at": "2024-05-01T10:05:00Z",
            "author_association": "CONTRIBUTOR",
            "body": "",
        },
        "repository": {
            "id": 123456,
            "name": "webapp",
            "full_name": repo,
            "private": False,
            "owner": user,
            "html_url": f"https://github.com/{repo}",
            "url": api,
            "clone_url": f"https://github.com/{repo}.git",
            "ssh_url": f"git@github.com:{repo}.git",
            "default_branch": "main",
        },
        "sender": user,
        "bench": f"{tag}-{i}",
    }
    bare = len(json.dumps(payload, separators=(",", ":")).encode())
    filler = "Looks good to me; one question about the buffer reuse below. " * 200
    payload["comment"]["body"] = filler[: BODY_BYTES - bare]
    body = json.dumps(payload, separators=(",", ":")).encode()
    assert len(body) == BODY_BYTES, len(body)
    return body


@dataclass
class Deliveries:
    bodies: list[bytes]
    headers: list[dict[str, str]]
    raw: list[bytes]  # the same, as HTTP/1.1 requests on the wire

    @classmethod
    def make(cls, count: int, tag: str) -> Deliveries:
        bodies, headers, raw = [], [], []
        for i in range(count):
            body = comment_body(i, tag)
            bodies.append(body)
            headers.append(
                {
                    "Content-Type": "application/json",
                    "User-Agent": "GitHub-Hookshot/bench",
                    "X-GitHub-Event": "issue_comment",
                    "X-GitHub-Delivery": f"{tag}-{i:07d}",
                    "X-GitHub-Hook-ID": "4242",
                    "X-Hub-Signature-256": sign(body),
                }
            )
            lines = [
                "POST /hooks/github HTTP/1.1",
                "Host: 127.0.0.1",
                f"Content-Length: {len(body)}",
                *(f"{k}: {v}" for k, v in headers[-1].items()),
            ]
            raw.append(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return cls(bodies, headers, raw)


@dataclass
class Load:
    requests: int
    seconds: float
    client_cpu: float
    server_cpu: float = 0.0  # seconds of the server process's CPU over the timed part
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


async def drive(
    base: str, deliveries: Deliveries, start: int, count: int, conc: int, kind: str
) -> Load:
    """Send deliveries[start:start+count] with `conc` workers on keep-alive connections."""
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    errors: list[str] = []
    following = iter(range(start, start + count))

    def answered(status: int, text: str, sent: float) -> None:
        latencies.append(time.perf_counter() - sent)
        statuses[status] += 1
        if not 200 <= status < 300 and len(errors) < 5:
            errors.append(f"{status}: {text[:200]}")

    if kind == "httpx":
        limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
        client = httpx.AsyncClient(base_url=base, limits=limits, timeout=60.0)
        # open the connections first: the timed part is steady state
        await asyncio.gather(*(client.get("/healthz") for _ in range(conc)))

        async def worker() -> None:
            for i in following:
                sent = time.perf_counter()
                try:
                    response = await client.post(
                        "/hooks/github", content=deliveries.bodies[i], headers=deliveries.headers[i]
                    )
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                answered(response.status_code, response.text, sent)

        workers = [worker() for _ in range(conc)]
    else:
        host, port = base.removeprefix("http://").split(":")
        connections = [await asyncio.open_connection(host, int(port)) for _ in range(conc)]

        async def raw_worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                for i in following:
                    sent = time.perf_counter()
                    writer.write(deliveries.raw[i])
                    head = await reader.readuntil(b"\r\n\r\n")
                    lower = head.lower()
                    at = lower.find(b"\r\ncontent-length:")
                    if at < 0 or b"connection: close" in lower:
                        errors.append(f"the server did not keep the connection: {head!r}")
                        return
                    length = int(lower[at + 17 : lower.index(b"\r\n", at + 2)])
                    text = await reader.readexactly(length)
                    answered(int(head[9:12]), text.decode(errors="replace"), sent)
            except (OSError, asyncio.IncompleteReadError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                writer.close()

        workers = [raw_worker(reader, writer) for reader, writer in connections]
    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*workers)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    if kind == "httpx":
        await client.aclose()
    return Load(
        count, seconds, cpu / seconds, statuses=statuses, latencies=latencies, errors=errors
    )


def intake(tmp: Path, database: str, args: argparse.Namespace, label: str) -> dict[str, Load]:
    """Intake throughput of the runner and of the bare endpoint, alternating over rounds."""
    home = tmp / f"intake-{label}"
    home.mkdir()
    tag = f"bench-{label}-{os.getpid()}-{int(time.time())}"
    warm, per_round = args.warmup, args.requests
    total = warm + per_round * args.rounds
    deliveries = Deliveries.make(total, tag)  # before any timing
    ours_port, bare_port = free_port(), free_port()
    runner_yaml(home, ours_port, database)
    (home / "bare.py").write_text(BARE_APP)
    bare = Service(
        "bare", [sys.executable, "bare.py", str(bare_port)], home, dict(os.environ), bare_port
    )
    ours = runner_service("runner-web", home, "web", ours_port)
    results: dict[str, list[Load]] = {"bare": [], "ours": []}
    with bare.running(), ours.running():
        for name, service in (("bare", bare), ("ours", ours)):  # warm-up, not counted
            load = asyncio.run(
                drive(service.base, deliveries, 0, warm, args.concurrency, args.client)
            )
            check_load(f"{label} {name} warm-up", load)
        offset = warm
        for _ in range(args.rounds):
            for name, service in (("bare", bare), ("ours", ours)):
                cpu = service.cpu_seconds()
                load = asyncio.run(
                    drive(
                        service.base, deliveries, offset, per_round, args.concurrency, args.client
                    )
                )
                load.server_cpu = service.cpu_seconds() - cpu
                check_load(f"{label} {name}", load)
                results[name].append(load)
            offset += per_round
    for name in ("bare", "ours"):
        for n, load in enumerate(results[name], 1):
            print(
                f"  {label:10s} {name:4s} round {n}: {load.rate:7.0f} req/s"
                f"  p50 {pct(load.latencies, 0.5) * 1000:6.1f} ms"
                f"  p99 {pct(load.latencies, 0.99) * 1000:6.1f} ms"
                f"  server CPU {load.server_cpu / load.requests * 1e6:4.0f} us/req"
                f" ({load.server_cpu / load.seconds:4.0%})  client CPU {load.client_cpu:4.0%}"
            )
    (stored,) = query(
        database,
        f"SELECT count(*), count(DISTINCT delivery_id) FROM events"
        f" WHERE forge = 'github' AND delivery_id LIKE '{tag}-%'",
    )
    accepted = sum(load.statuses[202] for load in results["ours"])
    print(
        f"  {label:10s} stored events: {stored[0]} ({stored[1]} distinct delivery ids);"
        f" sent {total} unique deliveries, {accepted} answered 202 in the timed rounds"
    )
    if stored[0] != total or stored[1] != total:
        raise Failed(f"{label}: {total} deliveries sent, {stored[0]} stored: deliveries lost")
    if accepted != per_round * args.rounds:
        raise Failed(f"{label}: {accepted} of {per_round * args.rounds} answered 202")
    return {name: max(loads, key=lambda x: x.rate) for name, loads in results.items()}


def check_load(what: str, load: Load) -> None:
    bad = {code: n for code, n in load.statuses.items() if not 200 <= code < 300}
    if bad or load.errors or sum(load.statuses.values()) != load.requests:
        raise Failed(f"{what}: non-2xx answers {bad}; errors {load.errors[:5]}")


# -- push to first step ----------------------------------------------------------------------------
def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def app_repository(path: Path, commits: int) -> list[str]:
    """A small git repository with `commits` commits on main; their shas, oldest first."""
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "bench@example.com")
    git(path, "config", "user.name", "bench")
    (path / "README.md").write_text("# app\n")
    (path / "app.py").write_text("print('hello')\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "initial")
    for i in range(commits - 1):
        (path / "CHANGES").write_text(f"change {i}\n")
        git(path, "add", "CHANGES")
        git(path, "commit", "-q", "-m", f"change {i}")
    return git(path, "rev-list", "--reverse", "main").split()


def push_body(sha: str, before: str, clone_url: str) -> bytes:
    repo = "acme/app"
    user = {"login": "octocat", "id": 583231, "type": "User"}
    return json.dumps(
        {
            "ref": "refs/heads/main",
            "before": before,
            "after": sha,
            "created": False,
            "deleted": False,
            "forced": False,
            "compare": f"https://github.com/{repo}/compare/{before[:12]}...{sha[:12]}",
            "commits": [
                {
                    "id": sha,
                    "message": "change",
                    "timestamp": "2024-05-01T10:00:00Z",
                    "author": {"name": "bench", "email": "bench@example.com"},
                    "added": [],
                    "removed": [],
                    "modified": ["CHANGES"],
                }
            ],
            "head_commit": {"id": sha, "message": "change"},
            "repository": {
                "id": 654321,
                "name": "app",
                "full_name": repo,
                "owner": user,
                "clone_url": clone_url,
                "default_branch": "main",
            },
            "pusher": {"name": "octocat", "email": "octocat@example.com"},
            "sender": user,
        },
        separators=(",", ":"),
    ).encode()


@dataclass
class Push:
    delivery: str
    sha: str
    sent: float
    received: float = 0.0
    requested: float = 0.0
    run_started: float = 0.0
    step_started: float = 0.0
    finished: float = 0.0

    @property
    def latency(self) -> float:
        return self.step_started - self.sent


async def push_latency(
    base: str, database: str, shas: list[str], clone_url: str, tag: str
) -> list[Push]:
    """Send one push per sha, each after the previous run finished; the stored timestamps."""
    store = open_store(database)
    await store.open()
    pushes: list[Push] = []
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            await client.get("/healthz")  # the connection is open before the first send
            before = "0" * 40
            for n, sha in enumerate(shas):
                body = push_body(sha, before, clone_url)
                headers = {
                    "Content-Type": "application/json",
                    "X-GitHub-Event": "push",
                    "X-GitHub-Delivery": f"{tag}-{n:04d}",
                    "X-Hub-Signature-256": sign(body),
                }
                push = Push(delivery=headers["X-GitHub-Delivery"], sha=sha, sent=time.time())
                response = await client.post("/hooks/github", content=body, headers=headers)
                if response.status_code != 202:
                    raise Failed(f"push {n}: {response.status_code} {response.text[:200]}")
                before = sha
                deadline = time.monotonic() + RUN_DEADLINE
                while True:  # until its run finished: runs never overlap
                    runs = [
                        r
                        for r in await store.list_runs(workflow=WORKFLOW, limit=5)
                        if r.trigger.get("sha") == sha
                    ]
                    if runs and runs[0].finished_at is not None:
                        break
                    if time.monotonic() > deadline:
                        raise Failed(f"push {n}: no finished run in {RUN_DEADLINE:g}s ({runs})")
                    await asyncio.sleep(0.01)
                (run,) = runs
                if run.status != "succeeded":
                    raise Failed(f"push {n}: run {run.id} {run.status}: {run.error}")
                (step,) = await store.get_steps(run.id)
                push.requested, push.run_started = run.created_at, run.started_at or 0.0
                push.step_started, push.finished = step.started_at or 0.0, run.finished_at or 0.0
                pushes.append(push)
    finally:
        await store.close()
    received = dict(
        query(
            database,
            f"SELECT delivery_id, received_at FROM events WHERE forge = 'github'"
            f" AND delivery_id LIKE '{tag}-%'",
        )
    )
    for push in pushes:
        push.received = float(received[push.delivery])
    return pushes


def push_to_step(tmp: Path, database: str, args: argparse.Namespace, label: str) -> list[Push]:
    home = tmp / f"push-{label}"
    source = home / "workflows-repo"
    (source / "workflows").mkdir(parents=True)
    (source / "agents" / "noop").mkdir(parents=True)
    (source / "workflows" / f"{WORKFLOW}.yaml").write_text(PUSH_WORKFLOW)
    (source / "agents" / "noop" / "agent.yaml").write_text(NOOP_AGENT)
    shas = app_repository(home / "app", args.pushes + args.push_warmup)
    port = free_port()
    runner_yaml(
        home,
        port,
        database,
        f"sources: [{{name: bench, url: '{source}', interval: 60s}}]\n"
        "executor: {max_parallel: 4}\n",
    )
    tag = f"push-{label}-{os.getpid()}-{int(time.time())}"
    with runner_service("runner-all", home, "all", port).running("/readyz") as service:
        pushes = asyncio.run(push_latency(service.base, database, shas, str(home / "app"), tag))
    cold, warm = pushes[: args.push_warmup], pushes[args.push_warmup :]
    for push in cold:
        print(f"  {label:10s} first push (cold, not counted): {push.latency * 1000:.1f} ms")
    stages: list[tuple[str, Callable[[Push], float]]] = [
        ("received  (send -> event stored)", lambda p: p.received - p.sent),
        ("dispatched (event -> run requested)", lambda p: p.requested - p.received),
        ("leased    (run requested -> running)", lambda p: p.run_started - p.requested),
        ("engine    (running -> step started)", lambda p: p.step_started - p.run_started),
        ("total     (send -> step started)", lambda p: p.latency),
        ("agent+end (step started -> run done)", lambda p: p.finished - p.step_started),
    ]
    for name, stage in stages:
        values = [stage(p) * 1000 for p in warm]
        print(
            f"  {label:10s} {name:38s} p50 {pct(values, 0.5):7.1f}  p90 {pct(values, 0.9):7.1f}"
            f"  max {max(values):7.1f}  mean {statistics.fmean(values):7.1f} ms"
        )
    return warm


# -- main ------------------------------------------------------------------------------------------
def bench(
    tmp: Path, label: str, database: str, push_database: str, args: argparse.Namespace
) -> list[str]:
    rows = []
    if not args.skip_intake:
        print(
            f"{label}: intake of {BODY_BYTES}-byte signed issue_comment deliveries,"
            f" {args.concurrency} connections, {args.requests} requests x {args.rounds} rounds"
        )
        loads = intake(tmp, database, args, label)
        ours, bare = loads["ours"], loads["bare"]
        rows.append(
            f"{label:10s} intake (verify+store)   {ours.rate:7.0f} req/s | bare Starlette"
            f" {bare.rate:7.0f} req/s | {ours.rate / bare.rate:5.2f}x  (target >= 0.50x)"
            f" | server CPU {ours.server_cpu / ours.requests * 1e6:.0f}"
            f" vs {bare.server_cpu / bare.requests * 1e6:.0f} us/req"
        )
    if not args.skip_push:
        print(f"{label}: push -> first step, {args.pushes} pushes one at a time")
        pushes = push_to_step(tmp, push_database, args, label)
        values = [p.latency * 1000 for p in pushes]
        rows.append(
            f"{label:10s} push -> first step      p50 {pct(values, 0.5):6.1f} ms"
            f" | p90 {pct(values, 0.9):6.1f} ms | max {max(values):6.1f} ms"
            f"  (target p50 < 100 ms)"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="per target and round")
    parser.add_argument("--warmup", type=int, default=300, help="untimed requests per target")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; best is kept")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="raw: pre-built HTTP/1.1 requests on asyncio streams (httpx saturates a core first)",
    )
    parser.add_argument("--pushes", type=int, default=30)
    parser.add_argument("--push-warmup", type=int, default=1)
    parser.add_argument("--postgres", nargs="?", const="cluster", metavar="URL")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-intake", action="store_true")
    parser.add_argument("--skip-push", action="store_true")
    args = parser.parse_args()
    rows: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as name:
            tmp = Path(name)
            if not args.skip_sqlite:
                rows += bench(
                    tmp, "sqlite", f"sqlite:///{tmp}/intake.db", f"sqlite:///{tmp}/push.db", args
                )
            if args.postgres:
                with postgres_server(args.postgres) as server:
                    rows += bench(tmp, "postgresql", *postgres_databases(server), args)
    except Failed as exc:
        print("\n".join(rows))
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print()
    print("\n".join(rows))
    return 0


@contextlib.contextmanager
def postgres_server(given: str) -> Iterator[str]:
    if given != "cluster":
        yield given
        return
    from tests.pg import cluster

    with cluster() as server:
        yield server


def postgres_databases(server: str) -> tuple[str, str]:
    import psycopg

    base = server.rsplit("/", 1)[0]
    names = ("bench_webhooks_intake", "bench_webhooks_push")
    with psycopg.connect(server, autocommit=True) as conn:
        for db in names:
            conn.execute(f"DROP DATABASE IF EXISTS {db}")
            conn.execute(f"CREATE DATABASE {db}")
    return f"{base}/{names[0]}", f"{base}/{names[1]}"


if __name__ == "__main__":
    sys.exit(main())
