"""A PostgreSQL restart under a running store is a pause, not a crash."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from runner.model import RunRequest
from runner.store.base import open_store
from tests.pg import LocalCluster

pytestmark = pytest.mark.anyio


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    local = LocalCluster()  # its own server: this test stops and starts it
    local.start()
    try:
        yield local
    finally:
        local.remove()


def request(key: str) -> RunRequest:
    return RunRequest(workflow="wf", source="main", revision="r", idempotency_key=key)


async def test_store_survives_a_server_restart(own_cluster: LocalCluster) -> None:
    store = open_store(own_cluster.url)
    await store.open()
    try:
        await store.migrate()
        before, _ = await store.request_run(request("before"))
        own_cluster.stop()  # every pooled connection is now dead
        results = []

        async def during() -> None:
            results.append(await store.request_run(request("during")))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(during)
            await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(own_cluster.start)
        ((run, created),) = results
        assert created
        assert run.idempotency_key == "during"
        assert {r.idempotency_key for r in await store.list_runs()} == {"before", "during"}
        assert await store.get_run(before.id) is not None
    finally:
        await store.close()
