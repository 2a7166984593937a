from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runner.store.base import Store, open_store


class Clock:
    """A clock the test moves by hand, so lease expiry needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/runner.db"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def store(store_url: str, clock: Clock) -> AsyncIterator[Store]:
    opened = open_store(store_url, clock=clock, log_limit=64)
    await opened.open()
    await opened.migrate()
    try:
        yield opened
    finally:
        await opened.close()
