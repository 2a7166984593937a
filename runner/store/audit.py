"""The store's approval audit trail: gates, the decisions on them, the comment commands acted
on, who pushed each pull request head, and retention, the one way anything here is removed.

The database holds the rules too (migration 0003): decisions are never updated or deleted, a
decision is recorded only on a pending gate, a gate changes state only to what its decisions
say, and rows of a run are deleted only while retention lists the run (finished runs only) in
`retention_runs`, inside the pruning transaction. These methods are the legitimate paths.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from runner.model import FINISHED, Approval, Decision
from runner.store import rows
from runner.store.tx import Tx, where

log = logging.getLogger(__name__)
T = TypeVar("T")
ApprovalEnd = Literal["approved", "rejected", "expired"]


class AuditQueries:
    """Mixed into `SqlStore`, which provides the transactions and the clock."""

    for_update = ""  # PostgreSQL: " FOR UPDATE" (SQLite's writers are serialised already)
    clock: Callable[[], float]

    async def _in_tx(
        self, body: Callable[[Tx], Awaitable[T]], *, write: bool = True, single: bool = False
    ) -> T:
        raise NotImplementedError

    # -- gates ------------------------------------------------------------------------------------
    async def create_approval(self, approval: Approval) -> Approval:
        policy = {
            "required": approval.policy.required,
            "approvers": list(approval.policy.approvers),
            "allow_author": approval.policy.allow_author,
            "timeout": approval.policy.timeout,
            "on_timeout": approval.policy.on_timeout,
        }
        values = (
            approval.run_id,
            approval.step_id,
            rows.dumps(policy),
            approval.sha,
            approval.revision,
            approval.inputs_digest,
            approval.requested_at or self.clock(),
            approval.deadline,
        )

        async def body(tx: Tx) -> Approval:
            existing = await tx.one(
                f"SELECT {rows.APPROVAL} FROM approvals WHERE run_id = ? AND step_id = ?"
                " AND status = 'pending'",
                (approval.run_id, approval.step_id),
            )
            if existing:
                return rows.approval(existing)
            row = await tx.one(
                "INSERT INTO approvals (run_id, step_id, status, policy, sha, revision,"
                " inputs_digest, requested_at, deadline) VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?)"
                f" RETURNING {rows.APPROVAL}",
                values,
            )
            assert row is not None
            return rows.approval(row)

        return await self._in_tx(body)

    async def get_approval(self, approval_id: int) -> Approval | None:
        async def body(tx: Tx) -> Approval | None:
            row = await tx.one(
                f"SELECT {rows.APPROVAL} FROM approvals WHERE id = ?", (approval_id,)
            )
            return rows.approval(row) if row else None

        return await self._in_tx(body, write=False, single=True)

    async def list_approvals(
        self, *, status: str | None = None, run_id: int | None = None
    ) -> list[Approval]:
        clause, params = where(("status = ?", status), ("run_id = ?", run_id))
        sql = f"SELECT {rows.APPROVAL} FROM approvals WHERE {clause} ORDER BY id"

        async def body(tx: Tx) -> list[Approval]:
            return [rows.approval(r) for r in await tx.all(sql, params)]

        return await self._in_tx(body, write=False, single=True)

    # -- decisions --------------------------------------------------------------------------------
    async def _pending(self, tx: Tx, approval_id: int) -> bool:
        """Whether the gate is pending, holding its row until the transaction ends."""
        row = await tx.one(
            f"SELECT status FROM approvals WHERE id = ?{self.for_update}", (approval_id,)
        )
        return row is not None and row[0] == "pending"

    async def _insert_decision(self, tx: Tx, decision: Decision) -> Decision:
        row = await tx.one(
            "INSERT INTO approval_decisions (approval_id, actor, decision, via, comment, url,"
            " sha, revision, inputs_digest, created_at, forge, comment_id)"
            f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {rows.DECISION}",
            (
                decision.approval_id,
                decision.actor,
                decision.decision,
                decision.via,
                decision.comment,
                decision.url,
                decision.sha,
                decision.revision,
                decision.inputs_digest,
                self.clock(),
                decision.forge,
                decision.comment_id,
            ),
        )
        assert row is not None
        return rows.decision(row)

    async def add_decision(self, decision: Decision) -> Decision | None:
        async def body(tx: Tx) -> Decision | None:
            if not await self._pending(tx, decision.approval_id):
                return None
            if decision.comment_id is not None:
                seen = await tx.one(
                    "SELECT 1 FROM approval_decisions WHERE approval_id = ? AND forge = ?"
                    " AND comment_id = ?",
                    (decision.approval_id, decision.forge, decision.comment_id),
                )
                if seen is not None:
                    return None
            return await self._insert_decision(tx, decision)

        return await self._in_tx(body)

    async def decisions(self, approval_id: int) -> list[Decision]:
        async def body(tx: Tx) -> list[Decision]:
            found = await tx.all(
                f"SELECT {rows.DECISION} FROM approval_decisions WHERE approval_id = ? ORDER BY id",
                (approval_id,),
            )
            return [rows.decision(r) for r in found]

        return await self._in_tx(body, write=False, single=True)

    async def close_approval(self, approval_id: int, status: str) -> Approval | None:
        if status not in ("approved", "rejected"):
            raise ValueError(
                f"a decision closes an approval as approved or rejected, not {status!r}"
                " (expire_approval records a timeout)"
            )

        async def body(tx: Tx) -> Approval | None:
            row = await tx.one(
                "UPDATE approvals SET status = ?, decided_at = ? WHERE id = ?"
                f" AND status = 'pending' RETURNING {rows.APPROVAL}",
                (status, self.clock(), approval_id),
            )
            return rows.approval(row) if row else None

        return await self._in_tx(body)

    async def expire_approval(self, approval_id: int, decision: Decision) -> Approval | None:
        async def body(tx: Tx) -> Approval | None:
            if not await self._pending(tx, approval_id):
                return None
            await self._insert_decision(tx, decision)
            row = await tx.one(
                "UPDATE approvals SET status = 'expired', decided_at = ? WHERE id = ?"
                f" AND status = 'pending' RETURNING {rows.APPROVAL}",
                (self.clock(), approval_id),
            )
            return rows.approval(row) if row else None

        return await self._in_tx(body)

    # -- comment commands and pull request heads --------------------------------------------------
    async def claim_comment(
        self,
        forge: str,
        comment_id: str,
        *,
        event_id: int | None,
        repository: str,
        number: int,
        actor: str,
    ) -> bool:
        async def body(tx: Tx) -> bool:
            await tx.execute(
                "INSERT INTO comment_commands (forge, comment_id, event_id, repository, number,"
                " actor, handled_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (forge, comment_id) DO NOTHING",
                (forge, comment_id, event_id, repository, number, actor, self.clock()),
            )
            row = await tx.one(
                "SELECT event_id FROM comment_commands WHERE forge = ? AND comment_id = ?",
                (forge, comment_id),
            )
            assert row is not None
            return event_id is not None and row[0] == event_id

        return await self._in_tx(body)

    async def record_push(
        self, forge: str, repository: str, number: int, sha: str, pusher: str
    ) -> None:
        async def body(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO pull_pushes (forge, repository, number, sha, pusher, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (forge, repository, number, sha, pusher) DO NOTHING",
                (forge, repository, number, sha, pusher, self.clock()),
            )

        await self._in_tx(body)

    async def pushers(self, forge: str, repository: str, sha: str) -> set[str]:
        async def body(tx: Tx) -> set[str]:
            found = await tx.all(
                "SELECT pusher FROM pull_pushes WHERE forge = ? AND repository = ? AND sha = ?",
                (forge, repository, sha),
            )
            return {str(r[0]) for r in found}

        return await self._in_tx(body, write=False, single=True)

    # -- retention --------------------------------------------------------------------------------
    async def prune(self, *, older_than: float, keep_last: int) -> int:
        finished = ", ".join(f"'{s}'" for s in sorted(FINISHED))

        async def body(tx: Tx) -> int:
            found = await tx.all(
                f"SELECT id FROM (SELECT id, finished_at, ROW_NUMBER() OVER"
                f" (PARTITION BY workflow ORDER BY id DESC) AS newest FROM runs"
                f" WHERE status IN ({finished})) ranked"
                " WHERE newest > ? AND finished_at < ?",
                (keep_last, older_than),
            )
            ids = [int(r[0]) for r in found]
            for start in range(0, len(ids), 500):
                batch = ids[start : start + 500]
                marks = ", ".join("?" for _ in batch)
                # the database lets rows of these runs go while they are listed here (and
                # lists finished runs only); the list is emptied before the transaction ends
                await tx.many(
                    "INSERT INTO retention_runs (run_id) VALUES (?)", [(i,) for i in batch]
                )
                await tx.execute(
                    "DELETE FROM approval_decisions WHERE approval_id IN"
                    f" (SELECT id FROM approvals WHERE run_id IN ({marks}))",
                    batch,
                )
                for table in ("approvals", "step_logs", "step_runs"):
                    await tx.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", batch)
                await tx.execute(f"DELETE FROM runs WHERE id IN ({marks})", batch)
                await tx.execute(f"DELETE FROM retention_runs WHERE run_id IN ({marks})", batch)
            await tx.execute(
                "DELETE FROM events WHERE status <> 'pending' AND handled_at < ?", (older_than,)
            )
            return len(ids)

        pruned = await self._in_tx(body)
        if pruned:
            log.warning(
                "retention removed %d finished run(s) older than %s, with their steps, logs,"
                " approvals and decisions",
                pruned,
                older_than,
            )
        return pruned
