"""Fixtures for the Dagger executor: the engine DOUBLE (tests/executors/dagger_double.py) on
127.0.0.1 and a `DaggerExecutor` attached to it through the real dagger-io SDK."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from runner.executors.local import find_bwrap


def double_or_skip() -> str:
    """The bwrap the engine double runs "containers" with; skips (saying why) without one."""
    if importlib.util.find_spec("dagger") is None:
        pytest.skip("dagger-io is not installed (the `dagger` extra)")
    path, reason = find_bwrap()
    if path is None:
        pytest.skip(f"the Dagger engine double needs bubblewrap for its containers: {reason}")
    return path


@pytest.fixture
def engine_double(tmp_path: Path) -> Iterator[object]:
    bwrap = double_or_skip()  # before importing the double: it needs graphql-core
    from tests.executors.dagger_double import EngineDouble

    with EngineDouble(tmp_path / "engine-double", bwrap=bwrap) as engine:
        yield engine


@pytest.fixture
async def dagger_executor(engine_double: object) -> AsyncIterator[object]:
    from runner.executors.dagger import DaggerExecutor
    from tests.executors.dagger_double import EngineDouble

    assert isinstance(engine_double, EngineDouble)
    executor = DaggerExecutor(
        session_port=engine_double.port, session_token=engine_double.token, connect_timeout=10
    )
    try:
        yield executor
    finally:
        await executor.aclose()
