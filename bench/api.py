"""Benchmark: reads per second on the REST API's run listing over real HTTP, with 10,000 stored
runs, next to a bare Starlette JSON endpoint in the same run.

The store is seeded first (timed and printed): `--runs` runs through `store.request_run`, from a
few concurrent tasks, then one UPDATE finishes most of them (90% succeeded, 10% failed with an
error, the newest 20 left queued) so the pages carry the timestamps a real listing has.
`runner serve --role web` then serves it with a viewer bearer token and `rate_limits: {reads:
100000000/minute}` (the limiter stays on the path and never refuses). Three reads are measured:

  list  GET /api/runs                          the default page (newest 50)
  deep  GET /api/runs?limit=50&cursor=<middle> a page from the middle of the runs
  one   GET /api/runs/{id}                     a run by id (ids drawn at random), with its steps
                                               and approvals (none here: two more queries)

The bare peer is a Starlette app on the same uvicorn settings (one process, log level warning,
no lifespan) whose `/api/runs` and `/api/runs/{id}` answer the very same JSON from memory: the
benchmark renders every stored run with `run_view` before starting it, and the bare app slices
that list and serializes the page per request with Starlette's JSONResponse, as the API does.
Before timing, each read is fetched from both servers and the answers must be equal.

Load comes from bench/webhooks.py's client: `--concurrency` HTTP/1.1 keep-alive connections in
this process, each sending its next pre-built request when the previous answer is in. Rounds
alternate between the two servers; the best of each is kept; each round also prints the
server's CPU per request (from /proc: the server process only, not PostgreSQL's backends),
steadier than req/s when other work shares the cores. Any non-2xx answer exits 1. No timing
is asserted: the figures are printed next to the peer's.

Usage: python bench/api.py [--runs N] [--requests N] [--warmup N] [--rounds R]
                           [--concurrency C] [--reads list,deep,one]
                           [--postgres [URL]] [--skip-sqlite]
`--postgres` alone starts a throwaway cluster (as the tests do; RUNNER_TEST_POSTGRES_URL names
an existing server instead); with a URL, a database is created on that server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1]))

import httpx

from bench.webhooks import (
    Deliveries,
    Failed,
    Load,
    Service,
    check_load,
    drive,
    free_port,
    pct,
    postgres_server,
)
from runner.model import RunRequest
from runner.store.base import Store, open_store
from runner.web.views import run_view

TOKEN = "bench-api-t0ken-0123456789abcdef"
WORKFLOWS = ("deploy-web", "pr-security-review", "nightly-backup", "lint", "release-notes")
QUEUED = 20  # the newest runs stay queued; the rest finish

BARE_APP = """\
import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

with open(sys.argv[2]) as f:
    ITEMS = json.load(f)  # every run as GET /api/runs renders it, newest first
AT = {item["id"]: n for n, item in enumerate(ITEMS)}


async def runs(request: Request) -> JSONResponse:
    limit = int(request.query_params.get("limit") or 50)
    cursor = request.query_params.get("cursor")
    start = AT[int(cursor)] + 1 if cursor else 0
    page = ITEMS[start : start + limit]
    more = len(ITEMS) > start + limit
    return JSONResponse({"items": page, "next_cursor": str(page[-1]["id"]) if more else None})


async def run(request: Request) -> JSONResponse:
    item = ITEMS[AT[int(request.path_params["id"])]]
    return JSONResponse({**item, "steps": [], "approvals": []})


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/healthz", healthz),
        Route("/api/runs", runs),
        Route("/api/runs/{id}", run),
    ]
)
# the settings `runner serve` gives uvicorn (runner/services.py)
uvicorn.Server(
    uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                   lifespan="off")
).run()
"""


# -- the stored runs -------------------------------------------------------------------------------
def sha(*parts: object) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()


def run_request(i: int, tag: str) -> RunRequest:
    """The i-th seeded run: a push, a pull request or a manual start of one of a few workflows."""
    workflow = WORKFLOWS[i % len(WORKFLOWS)]
    if i % 3 == 0:
        trigger: dict[str, Any] = {
            "event": "pull_request",
            "actor": "octocat",
            "sha": sha("pr", i),
            "number": 1000 + i % 700,
            "delivery": f"{tag}-{i:07d}",
        }
    elif i % 3 == 1:
        trigger = {
            "event": "push",
            "actor": "octocat",
            "sha": sha("push", i),
            "ref": "refs/heads/main",
            "delivery": f"{tag}-{i:07d}",
        }
    else:
        trigger = {"event": "manual", "actor": "ci", "via": "api"}
    return RunRequest(
        workflow=workflow,
        source="main",
        revision=sha("rev", i // 100),
        idempotency_key=f"{tag}:{i}",
        trigger=trigger,
        inputs={"environment": "staging", "dry_run": False} if i % 4 == 0 else {},
    )


async def seed(database: str, count: int, tasks: int) -> tuple[float, list[dict[str, Any]]]:
    """Store `count` runs (`tasks` concurrent request_run callers); the seconds that took, and
    every stored run as the API renders it, newest first."""
    tag = f"bench-api-{os.getpid()}"
    store = open_store(database)
    await store.open()
    try:
        await store.migrate()
        numbers = iter(range(count))

        async def requester() -> None:
            for i in numbers:
                _, created = await store.request_run(run_request(i, tag))
                if not created:
                    raise Failed(f"run {i} of the seed already existed")

        started = time.perf_counter()
        await asyncio.gather(*(requester() for _ in range(tasks)))
        seconds = time.perf_counter() - started
        await finish_runs(store, database)
        views = [run_view(r) for r in await store.list_runs(limit=count + 1)]
    finally:
        await store.close()
    if len(views) != count:
        raise Failed(f"seeded {count} runs, the store lists {len(views)}")
    return seconds, views


async def finish_runs(store: Store, database: str) -> None:
    """All but the newest QUEUED runs finished: 10% failed (with an error), the rest succeeded."""
    (newest,) = await store.list_runs(limit=1)
    sql = (
        "UPDATE runs SET"
        " status = CASE WHEN id % 10 = 0 THEN 'failed' ELSE 'succeeded' END,"
        " error = CASE WHEN id % 10 = 0 THEN 'step build: the agent exited with status 1' END,"
        " started_at = created_at + 0.4, finished_at = created_at + 42.5,"
        f" updated_at = created_at + 42.5 WHERE id <= {newest.id - QUEUED}"
    )
    if database.startswith("sqlite:///"):
        path = database.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn, conn:
            conn.execute(sql)
    else:
        import psycopg

        with psycopg.connect(database, autocommit=True) as pg:
            pg.execute(sql)


# -- the reads -------------------------------------------------------------------------------------
def get(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Accept: application/json\r\n\r\n"
    ).encode()


def reads(views: list[dict[str, Any]], total: int) -> dict[str, tuple[str, list[bytes]]]:
    """Per read: a label and `total` pre-built requests (the same one, or random run ids)."""
    middle = views[len(views) // 2]["id"]
    ids = [v["id"] for v in views]
    pick = random.Random(42)
    list_path, deep_path = "/api/runs", f"/api/runs?limit=50&cursor={middle}"
    return {
        "list": (f"GET {list_path}", [get(list_path)] * total),
        "deep": (f"GET {deep_path}", [get(deep_path)] * total),
        "one": ("GET /api/runs/{id}", [get(f"/api/runs/{pick.choice(ids)}") for _ in range(total)]),
    }


def same_answers(ours: Service, bare: Service, requests: dict[str, tuple[str, list[bytes]]]) -> str:
    """Each read from both servers: both 200 with equal JSON, or Failed. Their sizes, printed."""
    sizes = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for name, (_, raw) in requests.items():
        path = raw[0].split(b" ", 2)[1].decode()
        answers = [httpx.get(s.base + path, headers=headers, timeout=30) for s in (ours, bare)]
        for service, answer in zip((ours, bare), answers, strict=True):
            if answer.status_code != 200:
                raise Failed(f"{service.name} {path}: {answer.status_code} {answer.text[:300]}")
        if answers[0].json() != answers[1].json():
            raise Failed(f"{path}: the bare peer's answer differs from the API's")
        if name != "one" and len(answers[0].json()["items"]) != 50:
            raise Failed(f"{path}: {len(answers[0].json()['items'])} items, not 50")
        sizes.append(f"{name} {len(answers[0].content)} B")
        if len(answers[0].content) != len(answers[1].content):
            sizes[-1] += f" (bare {len(answers[1].content)} B)"
    return ", ".join(sizes)


def measure(
    tmp: Path, database: str, views: list[dict[str, Any]], args: argparse.Namespace, label: str
) -> dict[str, dict[str, Load]]:
    """Per read, the best round of ours and of the bare endpoint, alternating over rounds."""
    home = tmp / f"api-{label}"
    home.mkdir()
    (home / "items.json").write_text(json.dumps(views))
    (home / "bare.py").write_text(BARE_APP)
    ours_port, bare_port = free_port(), free_port()
    (home / "runner.yaml").write_text(
        f"listen: {{port: {ours_port}}}\n"
        f"database: {{url: '{database}'}}\n"
        f"data_dir: '{home / 'data'}'\n"
        "api: {tokens: [{name: bench, role: viewer, token_env: BENCH_TOKEN}]}\n"
        # the limiter stays on the path, with room for the load (1000/minute by default)
        "rate_limits: {reads: 100000000/minute}\n"
    )
    env = {**os.environ, "BENCH_TOKEN": TOKEN}
    env.pop("RUNNER_CONFIG", None)
    ours = Service(
        "runner-web",
        [sys.executable, "-m", "runner", "serve", "--role", "web", "--grace", "5"],
        home,
        env,
        ours_port,
    )
    bare = Service(
        "bare",
        [sys.executable, "bare.py", str(bare_port), "items.json"],
        home,
        dict(os.environ),
        bare_port,
    )
    warm, per_round = args.warmup, args.requests
    requests = reads(views, warm + per_round * args.rounds)
    best: dict[str, dict[str, Load]] = {}
    with bare.running(), ours.running():
        print(f"  {label:10s} answers: {same_answers(ours, bare, requests)}")
        for read in args.reads:
            what, raw = requests[read]
            load_of = Deliveries(bodies=[], headers=[], raw=raw)
            results: dict[str, list[Load]] = {"bare": [], "ours": []}
            for name, service in (("bare", bare), ("ours", ours)):  # warm-up, not counted
                load = asyncio.run(drive(service.base, load_of, 0, warm, args.concurrency, "raw"))
                check_load(f"{label} {read} {name} warm-up", load)
            offset = warm
            for _ in range(args.rounds):
                for name, service in (("bare", bare), ("ours", ours)):
                    cpu = service.cpu_seconds()
                    load = asyncio.run(
                        drive(service.base, load_of, offset, per_round, args.concurrency, "raw")
                    )
                    load.server_cpu = service.cpu_seconds() - cpu
                    check_load(f"{label} {read} {name}", load)
                    results[name].append(load)
                offset += per_round
            print(f"  {label:10s} {what}")
            for name in ("bare", "ours"):
                for n, load in enumerate(results[name], 1):
                    print(
                        f"  {label:10s}   {name:4s} round {n}: {load.rate:6.0f} req/s"
                        f"  p50 {pct(load.latencies, 0.5) * 1000:6.1f} ms"
                        f"  p99 {pct(load.latencies, 0.99) * 1000:6.1f} ms"
                        f"  server CPU {load.server_cpu / load.requests * 1e6:5.0f} us/req"
                        f" ({load.server_cpu / load.seconds:4.0%})"
                        f"  client CPU {load.client_cpu:4.0%}"
                    )
            best[read] = {name: max(loads, key=lambda x: x.rate) for name, loads in results.items()}
    return best


# -- main ------------------------------------------------------------------------------------------
def quantiles(load: Load) -> str:
    p50, p99 = pct(load.latencies, 0.5) * 1000, pct(load.latencies, 0.99) * 1000
    return f"p50 {p50:5.1f} p99 {p99:5.1f} ms"


def bench(tmp: Path, label: str, database: str, args: argparse.Namespace) -> list[str]:
    seconds, views = asyncio.run(seed(database, args.runs, args.seed_tasks))
    print(
        f"{label}: seeded {args.runs} runs in {seconds:.1f} s ({args.runs / seconds:.0f} runs/s,"
        f" request_run from {args.seed_tasks} tasks); {args.concurrency} connections,"
        f" {args.requests} requests x {args.rounds} rounds per read"
    )
    best = measure(tmp, database, views, args, label)
    rows = []
    for read, loads in best.items():
        ours, bare = loads["ours"], loads["bare"]
        rows.append(
            f"{label:10s} {read:4s} ours {ours.rate:6.0f} req/s {quantiles(ours)}"
            f" | bare {bare.rate:6.0f} req/s {quantiles(bare)}"
            f" | {ours.rate / bare.rate:4.2f}x"
            f" | server CPU {ours.server_cpu / ours.requests * 1e6:4.0f}"
            f" vs {bare.server_cpu / bare.requests * 1e6:4.0f} us/req"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000, help="stored runs")
    parser.add_argument("--seed-tasks", type=int, default=8, help="concurrent request_run tasks")
    parser.add_argument("--requests", type=int, default=4000, help="per read, target and round")
    parser.add_argument("--warmup", type=int, default=300, help="untimed requests per target")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; best is kept")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--reads",
        type=lambda v: [r for r in v.split(",") if r],
        default=["list", "deep", "one"],
        help="comma-separated: list, deep, one",
    )
    parser.add_argument("--postgres", nargs="?", const="cluster", metavar="URL")
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    if unknown := set(args.reads) - {"list", "deep", "one"}:
        parser.error(f"unknown reads {sorted(unknown)}")
    if args.runs < 2 * QUEUED + 100:
        parser.error(f"--runs must be at least {2 * QUEUED + 100}")
    rows: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-api-") as name:
            tmp = Path(name)
            if not args.skip_sqlite:
                rows += bench(tmp, "sqlite", f"sqlite:///{tmp}/runner.db", args)
            if args.postgres:
                with postgres_server(args.postgres) as server:
                    rows += bench(tmp, "postgresql", postgres_database(server), args)
    except Failed as exc:
        print("\n".join(rows))
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print()
    print("\n".join(rows))
    return 0


def postgres_database(server: str) -> str:
    import psycopg

    name = "bench_api"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return f"{server.rsplit('/', 1)[0]}/{name}"


if __name__ == "__main__":
    sys.exit(main())
