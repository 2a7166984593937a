"""Wiring: the parts of the runner put together from settings. Only this module and the CLI
know every part."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from runner import metrics
from runner.comments import CommentHandler
from runner.dag.engine import Engine, EngineOptions, Listener
from runner.dispatch import Dispatcher, Retries
from runner.errors import UsageError
from runner.executors import scratch
from runner.executors.base import open_executor
from runner.executors.breaker import CircuitBreaker
from runner.executors.images import ImagePolicy
from runner.forges.api import ForgeClient, ForgeReporting
from runner.forges.base import verifier
from runner.forges.github import GiteaClient, GitHubClient, GitHubReporting
from runner.forges.gitlab import GitLabClient
from runner.model import Bundle
from runner.prcheck import PullRequestCheck
from runner.reporting import Reporter
from runner.revisions import BundleLoader
from runner.scheduler import Scheduler
from runner.secrets.grants import AgentPolicy
from runner.secrets.store import SecretStore
from runner.settings import Settings, known_secrets, secret_values
from runner.source.git import GitSource, GitSourceConfig
from runner.source.local import DirectorySource
from runner.source.reconciler import Reconciler, Source
from runner.spec.quantity import memory_bytes
from runner.spec.repo import builtin_agents
from runner.spec.timing import parse_duration
from runner.store.base import Store, open_store
from runner.store.batch import EventWriter
from runner.store.sql import SqlStore
from runner.web.api import Api
from runner.web.app import Check, create_app
from runner.web.auth import load_tokens
from runner.web.hooks import Hooks, Receiver
from runner.worker import WorkerPool
from runner.workspace import Workspaces, sweep

log = logging.getLogger(__name__)


def node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class Runtime:
    settings: Settings
    store: Store
    executor: CircuitBreaker
    engine: Engine
    node: str


@asynccontextmanager
async def runtime(
    settings: Settings,
    *,
    listener: Listener | None = None,
    roots: Callable[[str, str], Path | None] | None = None,
    reporter: Reporter | None = None,
) -> AsyncIterator[Runtime]:
    """An open, migrated store and an engine on the configured executor. `roots` finds the
    checkout holding a source's repo-local agents at a revision (by default, from the
    configured sources: never the working directory)."""
    roots = roots or source_roots(settings)
    store = open_store(
        settings.database.url,
        pool_size=settings.database.pool_size,
        connect_timeout=settings.database.connect_timeout,
        log_limit=settings.database.log_limit,
    )
    await store.open()
    try:
        await store.migrate()
        executor = build_executor(settings)
        node = node_name()
        engine = Engine(
            store,
            executor,
            BundleLoader(store.revision_documents, builtin_agents(), roots),
            Workspaces(
                Path(settings.data_dir) / "workspaces",
                keep_failed=settings.executor.keep_failed_workspaces,
            ),
            EngineOptions(
                node=node,
                lease=run_lease(settings),
                max_parallel=settings.executor.max_parallel,
                secrets=secret_store(settings),
                fetch_deadline=parse_duration(settings.executor.fetch_deadline),
            ),
            listener=listener,
            reporter=reporter,
        )
        try:
            yield Runtime(
                settings=settings, store=store, executor=executor, engine=engine, node=node
            )
        finally:
            await executor.aclose()
    finally:
        await store.close()


def source_roots(settings: Settings) -> Callable[[str, str], Path | None]:
    """Where the configured sources keep their repo-local agents' programs at a revision; None
    for a source this process does not know (the step then fails, saying so)."""
    found: dict[str, Source] | None = None

    def root(source: str, revision: str) -> Path | None:
        nonlocal found
        if found is None:
            try:
                found = {s.name: s for s in build_sources(settings)}
            except UsageError:
                found = {}
        known = found.get(source)
        return known.agents_root(revision).resolve() if known else None

    return root


def retries(settings: Settings) -> Retries:
    """How stored deliveries are retried after a passing failure (`events:`)."""
    config = settings.events
    return Retries(
        max_attempts=config.max_attempts,
        backoff=parse_duration(config.retry_backoff),
        max_backoff=parse_duration(config.retry_max_backoff),
    )


def image_policy(settings: Settings) -> ImagePolicy:
    """Which agent images a revision may use (`executor.images`)."""
    images = settings.executor.images
    return ImagePolicy.of(
        images.get("allowed_registries", ()), bool(images.get("require_digest", False))
    )


def agent_policy(settings: Settings) -> AgentPolicy:
    """Which secrets and network a revision's repo-local agents may ask for (`secrets`,
    `executor.allow_network`)."""
    return AgentPolicy(
        grants=settings.secrets,
        network=frozenset(settings.executor.allow_network),
        config=settings.path or "runner.yaml",
        max_pids=settings.executor.max_pids,
        max_memory=memory_bytes(settings.executor.max_memory),
        max_timeout=parse_duration(settings.executor.max_timeout),
    )


def secret_store(settings: Settings) -> SecretStore:
    """The granted secrets' values, never one of the runner's own credentials."""
    return SecretStore(agent_policy(settings), known_secrets(settings))


def build_executor(settings: Settings) -> CircuitBreaker:
    """The configured executor inside its circuit breaker (`executor.breaker`)."""
    config = settings.executor
    options: dict[str, Any] = {}
    if config.kind == "local":
        options["sandbox"] = config.sandbox
        options["scratch"] = step_scratch(settings)
    elif config.kind == "dagger":
        durations = ("connect_timeout", "health_timeout", "kill_grace", "deadline_slack")
        for key, value in config.dagger.items():
            options[key] = parse_duration(str(value)) if key in durations else value
        options["allowed_registries"] = tuple(config.images.get("allowed_registries", ()))
        options["require_digest"] = bool(config.images.get("require_digest", False))
    breaker = config.breaker
    return CircuitBreaker(
        open_executor(config.kind, **options),
        failures=int(breaker.get("failures", 5)),
        window=parse_duration(str(breaker.get("window", "2m"))),
        cooldown=parse_duration(str(breaker.get("cooldown", "60s"))),
        successes=int(breaker.get("successes", 3)),
    )


def run_lease(settings: Settings) -> float:
    """`executor.lease` in seconds: how long a node's claim on a run lasts unrenewed."""
    lease = parse_duration(settings.executor.lease)
    if lease < 3:
        raise UsageError(
            f"executor.lease is {settings.executor.lease}: it must be at least 3s (a heartbeat"
            " renews it every third of it); the default is 60s"
        )
    return lease


def step_scratch(settings: Settings) -> Path:
    """Where steps' scratch folders go: `<data_dir>/steps`, absolute (the service may change
    its working directory later; a step's own directory is its agent's)."""
    return Path(settings.data_dir).resolve() / "steps"


def sweep_step_scratch(settings: Settings) -> None:
    """At a node's start: remove the scratch folders of steps a killed runner left behind."""
    try:
        scratch.sweep(step_scratch(settings))
    except OSError as exc:  # not a reason to stay down: the next start tries again
        log.warning("cannot sweep the step scratch folders: %s", exc)


def build_sources(settings: Settings) -> list[Source]:
    """The configured sources; with none, the bundled example next to the working directory."""
    configured = list(settings.sources)
    if not configured:
        example = Path("workflows-repo-example")
        if not example.is_dir():
            raise UsageError(
                "no source is configured: set sources in runner.yaml or RUNNER_SOURCE_URL"
            )
        configured = [{"name": "main", "url": str(example), "interval": "10s"}]
    sources: list[Source] = []
    for raw in configured:
        url = str(raw["url"])
        interval = parse_duration(str(raw.get("interval", "60s")))
        local = Path(url.removeprefix("file://"))
        if (
            "://" not in url.replace("file://", "", 1)
            and local.is_dir()
            and not (local / ".git").exists()
            and not local.name.endswith(".git")
        ):
            folder = local / str(raw.get("path", "."))
            sources.append(DirectorySource(str(raw["name"]), folder, interval))
            continue
        config = GitSourceConfig(
            name=str(raw["name"]),
            url=url,
            branch=str(raw.get("branch", "main")),
            path=str(raw.get("path", ".")),
            interval=interval,
            credentials=dict(raw.get("credentials", {})),
        )
        sources.append(GitSource(config, Path(settings.data_dir)))
    return sources


def forge_clients(
    settings: Settings,
) -> tuple[dict[str, ForgeClient], dict[str, ForgeReporting]]:
    """API clients of the forges that have a token (needed to act on PR comments and to report
    back): what to ask, and how to report, by forge name."""
    clients: dict[str, ForgeClient] = {}
    reporting: dict[str, ForgeReporting] = {}
    for forge in settings.forges:
        kind, name = forge.get("kind"), str(forge["name"])
        token = secret_values(forge.get("token_env"), forge.get("token_file"))
        if not token:
            continue
        if kind in ("gitea", "gitlab") and not forge.get("api_url"):
            example = (
                "https://gitea.example.com/api/v1"
                if kind == "gitea"
                else "https://gitlab.example.com/api/v4"
            )
            raise UsageError(f"forge {name!r}: a {kind} forge needs api_url (like {example})")
        if kind == "gitlab":
            gitlab = GitLabClient(str(forge["api_url"]), token[0])
            clients[name], reporting[name] = gitlab, gitlab
            continue
        api = str(forge.get("api_url", "https://api.github.com"))
        client = (GitHubClient if kind == "github" else GiteaClient)(api, token[0])
        clients[name], reporting[name] = client, GitHubReporting(client)
    return clients, reporting


def receivers(settings: Settings) -> dict[str, Receiver]:
    out = {}
    for forge in settings.forges:
        name = str(forge["name"])
        secrets = secret_values(forge.get("webhook_secret_env"), forge.get("webhook_secret_file"))
        if not secrets:
            raise UsageError(
                f"forge {name!r} has no webhook secret: set webhook_secret_env (and that "
                "variable) or webhook_secret_file"
            )
        out[name] = Receiver(name=name, verifier=verifier(str(forge["kind"])), secrets=secrets)
    return out


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the service handles signals itself
        yield


async def serve(settings: Settings, *, role: str, stop: asyncio.Event, grace: float = 30.0) -> None:
    """`runner serve`: reconcilers, scheduler and workers (role worker), the HTTP service (role
    web), or all of them, until `stop` is set."""
    sources = build_sources(settings) if role in ("all", "worker") else []
    if role in ("all", "worker"):
        sweep_step_scratch(settings)
    by_name = {source.name: source for source in sources}

    def roots(source: str, revision: str) -> Path | None:
        found = by_name.get(source)
        return found.agents_root(revision) if found else None

    clients, reporting = forge_clients(settings)
    reporter = Reporter(reporting)
    for problem in secret_store(settings).check():  # steps that need it fail, saying the same
        log.warning("granted secret unusable: %s", problem)
    kinds = {str(f["name"]): str(f["kind"]) for f in settings.forges}
    async with runtime(settings, roots=roots, reporter=reporter) as rt:
        if role in ("all", "worker"):  # what a killed node left, before anything is made
            await sweep(
                Path(settings.data_dir),
                rt.store,
                keep_failed=settings.executor.keep_failed_workspaces,
            )
        scheduler = Scheduler(rt.store.request_run)
        workers = WorkerPool(rt.engine, slots=settings.executor.max_parallel)

        async def sync(source: str, revision: str, bundle: Bundle, catch_up: bool) -> None:
            await scheduler.sync(source, revision, bundle, catch_up=catch_up)
            workers.nudge()

        reconcilers = [
            Reconciler(
                rt.store,
                source,
                sync=sync,
                images=image_policy(settings),
                policy=agent_policy(settings),
            )
            for source in sources
        ]
        by_source = {r.source.name: r for r in reconcilers}
        dispatcher = Dispatcher(
            rt.store,
            rt.engine.loader,
            retries=retries(settings),
            kinds=kinds,
            sources={
                str(s["name"]): (str(s["url"]), str(s.get("branch", "main")))
                for s in settings.sources
            },
            nudge_source=lambda name: by_source[name].nudge() if name in by_source else None,
            nudge_workers=workers.nudge,
            comments=CommentHandler(rt.store, rt.engine.loader, clients, reporter=reporter),
            clients=clients,
            prcheck=PullRequestCheck(
                rt.store,
                rt.engine.loader,
                {s.name: s.config for s in sources if isinstance(s, GitSource)},
                Path(settings.data_dir),
                reporting,
                kinds,
                images=image_policy(settings),
                policy=agent_policy(settings),
            ),
        )

        async def store_ready() -> tuple[bool, str]:
            pending = await rt.store.pending_migrations()
            return (not pending, "migrations current" if not pending else f"pending: {pending}")

        async def executor_state() -> dict[str, object]:
            # Reported, never "unready", in any breaker state: deliveries and API calls still
            # work, and runs wait queued until the engine is back (the alerts say so).
            with contextlib.suppress(Exception):  # asks the engine, unless the circuit is open
                await asyncio.wait_for(rt.executor.health(), timeout=1.5)  # within /readyz's 2s
            return rt.executor.snapshot().as_dict()

        async def sources_ready() -> tuple[bool, str]:
            statuses = {s.name: s for s in await rt.store.list_source_statuses()}
            states, missing = [], []
            for source in sources:
                status = statuses.get(source.name)
                if status is None or not status.applied_revision:
                    missing.append(source.name)
                    states.append(f"{source.name}: nothing applied yet")
                    continue
                stalled = [c for c in status.conditions if c.type == "Stalled" and c.status]
                state = f"stalled ({stalled[0].reason})" if stalled else "ready"
                states.append(f"{source.name}: {status.applied_revision[:12]} applied, {state}")
            return not missing, "; ".join(states)

        checks: dict[str, Check] = {"store": store_ready}
        if sources:
            checks["sources"] = sources_ready

        def stored() -> None:  # a delivery was stored: process it, and start its runs, now
            dispatcher.wake.set()
            workers.nudge()

        hooks = Hooks(
            rt.store,
            receivers(settings),
            generic_secrets=secret_values(settings.generic_webhook_secret_env, None),
            max_body=settings.listen.max_body_bytes,
            on_stored=stored,
            writer=EventWriter(rt.store) if isinstance(rt.store, SqlStore) else None,
        )
        api = Api(
            rt.store,
            rt.engine.loader,
            load_tokens(settings.api),
            source_names=[str(s["name"]) for s in settings.sources] or ["main"],
            on_requested=stored,
            clients=clients,
            reporter=reporter,
        )
        app = create_app(
            checks,
            hooks=hooks,
            api=api,
            refresh_metrics=lambda: metrics.refresh(
                rt.store, settings.executor.kind, rt.executor.health
            ),
            rate_limits=settings.rate_limits,
            trusted_proxies=settings.trusted_proxies,
            executor_state=executor_state if role in ("all", "worker") else None,
        )
        server = _Server(
            uvicorn.Config(
                app,
                host=settings.listen.host,
                port=settings.listen.port,
                log_level="warning",
                log_config=None,  # through the runner's handler: its format, secrets masked
                access_log=settings.logging.access,
                lifespan="off",
                # the app reads X-Forwarded-For from trusted_proxies only (web/app.py); uvicorn's
                # own default would believe any client on 127.0.0.1
                proxy_headers=False,
            )
        )
        if settings.logging.access:
            logging.getLogger("uvicorn.access").setLevel(logging.INFO)
        async with asyncio.TaskGroup() as group:
            if role in ("all", "worker"):
                scheduler.start()
                for reconciler in reconcilers:
                    group.create_task(reconciler.run_forever(stop))
                group.create_task(workers.run_forever(stop, grace=grace))
                group.create_task(
                    rt.executor.watch(
                        stop,
                        interval=parse_duration(
                            str(settings.executor.breaker.get("check_interval", "30s"))
                        ),
                    )
                )
                group.create_task(dispatcher.run_forever(stop, rt.node))
            if role in ("all", "web"):
                group.create_task(server.serve())

                async def stop_web() -> None:
                    await stop.wait()
                    server.should_exit = True

                group.create_task(stop_web())
        scheduler.shutdown()
        for client in clients.values():
            await client.close()
