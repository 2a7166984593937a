"""What a backend's transaction offers the store's queries, and a helper to build filters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Tx(Protocol):
    """One open transaction."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it changed."""

    async def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """The first row of a query, or None."""

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of a query."""

    async def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each of `rows` (batched by the driver)."""

    async def script(self, sql: str) -> None:
        """Run a migration file (several statements)."""


def where(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """A WHERE clause from (condition, value) pairs whose value is not None; a condition
    ending in IN takes a list."""
    clauses, params = ["1 = 1"], list[Any]()
    for condition, value in conditions:
        if value is None:
            continue
        if condition.endswith(" IN"):
            clauses.append(f"{condition} ({', '.join('?' for _ in value)})")
            params.extend(value)
        else:
            clauses.append(condition)
            params.append(value)
    return " AND ".join(clauses), params
