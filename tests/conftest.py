from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

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
