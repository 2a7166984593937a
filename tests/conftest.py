from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runner.model import Approval, ApprovalPolicy, Run, RunRequest
from runner.spec.compile import compile_files
from runner.spec.repo import builtin_agents, repo_files
from runner.store.base import Store, open_store
from tests.pg import cluster

_names = itertools.count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL of the maintenance database of a real PostgreSQL server, for the whole session."""
    with cluster() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the test server; dropped afterwards."""
    name = f"runner_test_{next(_names)}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_server.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def apply_example(store: Store, revision: str = "rev1") -> None:
    """Apply the bundled example repo to `store` as source `main` at `revision`."""
    example = Path(__file__).parents[1] / "workflows-repo-example"
    result = compile_files(repo_files(example, ""), builtins=builtin_agents())
    await store.apply_revision("main", revision, result.documents)


@pytest.fixture
async def example_store(tmp_path: Path) -> AsyncIterator[Store]:
    """A SQLite store with the bundled example repo applied as source `main`, revision rev1."""
    opened = open_store(f"sqlite:///{tmp_path}/runner.db")
    await opened.open()
    await opened.migrate()
    await apply_example(opened)
    try:
        yield opened
    finally:
        await opened.close()


async def gated_run(
    store: Store,
    *,
    key: str,
    trigger: dict[str, Any],
    approvers: tuple[str, ...] = ("@acme/security", "alice"),
) -> tuple[Run, Approval]:
    """A run of the example's pr-security-review (revision rev1) waiting at its `patch` gate,
    bound to the trigger's sha."""
    run, _ = await store.request_run(
        RunRequest(
            workflow="pr-security-review",
            source="main",
            revision="rev1",
            idempotency_key=key,
            trigger=trigger,
        )
    )
    await store.transition_run(run.id, "running")
    await store.transition_run(run.id, "waiting_approval")
    gate = await store.create_approval(
        Approval(
            id=0,
            run_id=run.id,
            step_id="patch",
            status="pending",
            policy=ApprovalPolicy(required=1, approvers=approvers),
            sha=trigger.get("sha"),
            revision="rev1",
            inputs_digest="sha256:x",
            requested_at=1.0,
        )
    )
    return run, gate
