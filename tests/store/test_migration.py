"""Migration 0002 (revisions as shared pages) on a database written by 0001, on every backend:
the revisions applied before stay readable in full, and a new revision can be written as a
change to one of them."""

from __future__ import annotations

import pytest

from runner.model import StoredDocument
from runner.store import rows, sql
from runner.store.base import Store, open_store
from runner.store.sql import SqlStore, Tx

pytestmark = pytest.mark.anyio


def doc(name: str, digest: str, kind: str = "Workflow") -> StoredDocument:
    return StoredDocument(
        kind=kind,  # type: ignore[arg-type]
        name=name,
        digest=digest,
        content={"metadata": {"name": name}, "v": digest},
        path=f"workflows/{name}.yaml",
    )


async def apply_as_0001(store: SqlStore, revision: str, docs: list[StoredDocument]) -> None:
    """What `apply_revision` wrote before 0002: one `documents` row per document."""

    async def body(tx: Tx) -> None:
        await tx.execute(
            "INSERT INTO revisions (source, revision, applied_at) VALUES (?, ?, ?)",
            ("main", revision, 1.0),
        )
        await tx.many(
            "INSERT INTO document_contents (digest, content) VALUES (?, ?)"
            " ON CONFLICT (digest) DO NOTHING",
            [(d.digest, rows.dumps(d.content)) for d in docs],
        )
        await tx.many(
            "INSERT INTO documents (source, revision, kind, name, digest, path)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [("main", revision, d.kind, d.name, d.digest, d.path) for d in docs],
        )
        await tx.execute(
            "INSERT INTO sources (name, applied_revision, applied_at, updated_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
            " applied_revision = excluded.applied_revision",
            ("main", revision, 1.0, 1.0),
        )

    await store._in_tx(body)


def listed(docs: list[StoredDocument]) -> list[tuple[str, str, str, str, object]]:
    return [(d.kind, d.name, d.digest, d.path, d.content) for d in docs]


async def test_revisions_written_before_0002_stay_whole_and_can_be_built_on(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = sql.migrations
    store: Store = open_store(store_url)
    assert isinstance(store, SqlStore)
    await store.open()
    try:
        monkeypatch.setattr(sql, "migrations", lambda dialect: every(dialect)[:1])
        assert await store.migrate() == ["0001_initial"]
        old = [doc("b", "d2"), doc("a", "d1"), doc("lint", "d3", kind="Agent")]
        many = [doc(f"w{i:03}", f"m{i}") for i in range(150)]
        await apply_as_0001(store, "r1", old)
        await apply_as_0001(store, "big", many)
        monkeypatch.setattr(sql, "migrations", lambda dialect: every(dialect)[:2])
        assert await store.pending_migrations() == ["0002_document_pages"]
        assert await store.migrate() == ["0002_document_pages"]
        monkeypatch.setattr(sql, "migrations", every)
        later = [name for _, name, _ in every(store.dialect)[2:]]
        assert later[:2] == ["0003_audit_trail", "0004_audit_doors"]
        assert await store.migrate() == later

        ordered = sorted(old, key=lambda d: (d.kind, d.name))
        assert listed(await store.revision_documents("main", "r1")) == listed(ordered)
        assert listed((await store.applied_documents("main"))[1]) == listed(many)

        assert await store.apply_changes(
            "main", "r2", parent="r1", changed=[doc("c", "d4")], removed=[("Workflow", "b")]
        )
        assert [d.name for d in (await store.applied_documents("main"))[1]] == ["lint", "a", "c"]
        assert await store.apply_changes(
            "main", "big2", parent="big", changed=[doc("w007", "x")], removed=[]
        )
        assert [(d.name, d.digest) for d in await store.revision_documents("main", "big2")] == [
            (d.name, "x" if d.name == "w007" else d.digest) for d in many
        ]
        await store.apply_revision("main", "r3", [doc("a", "d1")])
        assert [d.name for d in await store.revision_documents("main", "r3")] == ["a"]
        assert listed(await store.revision_documents("main", "r1")) == listed(ordered)
        assert await store.migrate() == []
    finally:
        await store.close()
