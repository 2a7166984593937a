"""A plain folder as a source: each pass reads it, and only the files whose content changed are
compiled again (the whole revision is still checked)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runner.source.local import DirectorySource
from runner.source.reconciler import Reconciler
from runner.spec import compile as compiling
from runner.store.base import Store, open_store
from tests.source.test_reconciler import NIGHTLY

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path}/runner.db")
    await opened.open()
    await opened.migrate()
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_folder_is_compiled_by_changed_files(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "repo"
    (root / "workflows").mkdir(parents=True)
    for name in ("a", "b", "c"):
        (root / "workflows" / f"{name}.yaml").write_text(
            NIGHTLY.format(name=name, cron="0 3 * * *")
        )
    reconciler = Reconciler(store, DirectorySource("main", root))
    assert (await reconciler.reconcile()).applied
    parsed: list[str] = []
    load = compiling._load

    def spy(source: compiling.SourceFile) -> object:
        parsed.append(source.path)
        return load(source)

    monkeypatch.setattr(compiling, "_load", spy)

    (root / "workflows" / "c.yaml").write_text(NIGHTLY.format(name="a", cron="0 4 * * *"))
    refused = await reconciler.reconcile()
    assert (refused.applied, refused.errors, parsed) == (False, 1, ["workflows/c.yaml"])

    (root / "workflows" / "c.yaml").unlink()
    (root / "workflows" / "b.yaml").write_text(NIGHTLY.format(name="b", cron="0 5 * * *"))
    assert (await reconciler.reconcile()).applied
    assert parsed == ["workflows/c.yaml", "workflows/b.yaml"]
    revision, docs = await store.applied_documents("main")
    assert revision not in (None, refused.revision)
    assert [(d.name, d.content["spec"]["triggers"][0]["schedule"]["cron"]) for d in docs] == [
        ("a", "0 3 * * *"),
        ("b", "0 5 * * *"),
    ]


async def test_each_pass_is_counted_and_timed_by_outcome(tmp_path: Path, store: Store) -> None:
    from prometheus_client import REGISTRY

    def count(outcome: str) -> float:
        value = REGISTRY.get_sample_value(
            "runner_reconcile_total", {"source": "metered", "outcome": outcome}
        )
        return value or 0.0

    root = tmp_path / "metered"
    (root / "workflows").mkdir(parents=True)
    (root / "workflows" / "a.yaml").write_text(NIGHTLY.format(name="a", cron="0 3 * * *"))
    reconciler = Reconciler(store, DirectorySource("metered", root))
    before = {o: count(o) for o in ("applied", "unchanged", "refused")}
    await reconciler.reconcile()
    await reconciler.reconcile()
    (root / "workflows" / "b.yaml").write_text("kind: Workflow\n")
    await reconciler.reconcile()
    assert {o: count(o) - before[o] for o in before} == {"applied": 1, "unchanged": 1, "refused": 1}
    timed = REGISTRY.get_sample_value(
        "runner_reconcile_duration_seconds_count", {"source": "metered"}
    )
    assert timed is not None
    assert timed >= 3
