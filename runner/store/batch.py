"""Group commit for webhook deliveries: deliveries that arrive while a write is in flight are
stored together in the next transaction, so a burst costs one commit per batch instead of one
per delivery. Each caller still gets its answer only after its row is committed: a delivery is
durable before it is acknowledged."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from runner.store import rows
from runner.store.sql import SqlStore
from runner.store.tx import Tx


@dataclass(frozen=True)
class Stored:
    id: int
    new: bool  # False: a delivery with this (forge, delivery id) was stored before


_Item = tuple[tuple[str, str, str, str, bytes, float, str | None], "asyncio.Future[Stored]"]


class EventWriter:
    def __init__(self, store: SqlStore, *, max_batch: int = 128) -> None:
        self.store = store
        self.max_batch = max_batch
        self._pending: list[_Item] = []
        self._flushing = False
        self._task: asyncio.Future[None] | None = None

    async def add(
        self,
        *,
        forge: str,
        delivery_id: str,
        event_type: str,
        headers: Mapping[str, str],
        body: bytes,
        body_digest: str | None = None,
    ) -> Stored:
        """Store a delivery (deduplicated on forge and delivery id, and on the body's digest
        when given) once it is committed; a repeat of a failed delivery is handled again."""
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        values = (
            forge,
            delivery_id,
            event_type,
            rows.dumps(dict(headers)),
            body,
            self.store.clock(),
            body_digest,
        )
        self._pending.append((values, future))
        if not self._flushing:
            self._flushing = True
            self._task = asyncio.ensure_future(self._flush())
        return await future  # a caller that goes away does not stop the batch's write

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]

                tries = 0

                async def write(tx: Tx, batch: list[_Item] = batch) -> list[Stored]:
                    nonlocal tries
                    tries += 1
                    return await self._write(tx, batch, retry=tries > 1)

                try:
                    stored = await self.store._in_tx(write, single=True)
                except Exception as exc:  # every caller of the batch hears of it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), result in zip(batch, stored, strict=True):
                        if not future.done():
                            future.set_result(result)
        finally:
            self._flushing = False

    async def _write(self, tx: Tx, batch: list[_Item], *, retry: bool) -> list[Stored]:
        """One multi-row insert for the batch; a delivery seen before (in an earlier batch or
        earlier in this one, by delivery id or body) is answered with the first one's id."""
        marks = ", ".join("(?, ?, ?, ?, ?, ?, ?)" for _ in batch)
        inserted = await tx.all(
            "INSERT INTO events (forge, delivery_id, event_type, headers, body, received_at,"
            f" body_digest) VALUES {marks} ON CONFLICT DO NOTHING"
            " RETURNING id, forge, delivery_id",
            [value for values, _ in batch for value in values],
        )
        new = {(str(forge), str(delivery)): int(i) for i, forge, delivery in inserted}
        out = []
        seen: set[tuple[str, str]] = set()
        for values, _ in batch:
            key = (values[0], values[1])
            if key in new:
                out.append(Stored(new.pop(key), True))
                seen.add(key)
                continue
            existing = await self.store._same_delivery(tx, values[0], values[1], values[6])
            # on a retry, a row of this very batch stored by the try whose answer was lost
            # (same receipt time and delivery id) is still new
            mine = (
                retry
                and key not in seen
                and existing.delivery_id == values[1]
                and existing.received_at == values[5]
            )
            seen.add(key)
            if not mine and existing.status == "failed":
                again = await self.store._redelivered(tx, existing.id)
                mine = again is not None
            out.append(Stored(existing.id, mine))
        return out
