"""A separate process working on a store, for the concurrency tests.

python -m tests.store.worker URL COMMAND [ARGS]
  request FROM TO       request runs with keys k<FROM>..k<TO-1>; print how many it created
  acquire NODE          acquire until nothing is left (long leases, never released); print ids
  commit-loop           request runs one by one, printing each id once committed, forever
  big-apply N           apply one revision of N documents in one transaction, then print "done"
"""

from __future__ import annotations

import asyncio
import json
import sys

from runner.model import RunRequest, StoredDocument
from runner.store.base import open_store


def _request(key: str) -> RunRequest:
    return RunRequest(workflow="wf", source="main", revision="r", idempotency_key=key)


async def main(url: str, command: str, args: list[str]) -> None:
    store = open_store(url)
    await store.open()
    try:
        if command == "request":
            created = 0
            for i in range(int(args[0]), int(args[1])):
                _, new = await store.request_run(_request(f"k{i}"))
                created += new
            print(created)
        elif command == "acquire":
            held: list[int] = []
            while True:
                got = await store.acquire_runs(args[0], 600, 7)
                if not got:
                    break
                held += [r.id for r in got]
            print(json.dumps(held))
        elif command == "commit-loop":
            i = 0
            while True:
                run, _ = await store.request_run(_request(f"loop{i}"))
                print(run.id, flush=True)
                i += 1
        elif command == "big-apply":
            docs = [
                StoredDocument(kind="Workflow", name=f"w{i}", digest=f"d{i}", content={"i": i})
                for i in range(int(args[0]))
            ]
            print("start", flush=True)
            await store.apply_revision("main", "big", docs)
            print("done", flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
