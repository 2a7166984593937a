"""Wiring: the parts of the runner put together from settings. Only this module and the CLI
know every part."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from runner.dag.engine import Engine, EngineOptions, Listener
from runner.executors.base import Executor, open_executor
from runner.revisions import BundleLoader
from runner.settings import Settings
from runner.spec.repo import builtin_agents
from runner.store.base import Store, open_store
from runner.workspace import Workspaces


def node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class Runtime:
    settings: Settings
    store: Store
    executor: Executor
    engine: Engine
    node: str


@asynccontextmanager
async def runtime(
    settings: Settings, *, listener: Listener | None = None
) -> AsyncIterator[Runtime]:
    """An open, migrated store and an engine on the configured executor."""
    store = open_store(
        settings.database.url,
        pool_size=settings.database.pool_size,
        connect_timeout=settings.database.connect_timeout,
        log_limit=settings.database.log_limit,
    )
    await store.open()
    try:
        await store.migrate()
        options = (
            {"sandbox": settings.executor.sandbox} if settings.executor.kind == "local" else {}
        )
        executor = open_executor(settings.executor.kind, **options)
        node = node_name()
        engine = Engine(
            store,
            executor,
            BundleLoader(store.revision_documents, builtin_agents()),
            Workspaces(
                Path(settings.data_dir) / "workspaces",
                keep_failed=settings.executor.keep_failed_workspaces,
            ),
            EngineOptions(
                node=node, max_parallel=settings.executor.max_parallel, secrets=dict(os.environ)
            ),
            listener=listener,
        )
        yield Runtime(settings=settings, store=store, executor=executor, engine=engine, node=node)
    finally:
        await store.close()
