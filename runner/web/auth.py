"""Bearer tokens and roles of the REST API. Tokens come from configuration (each named by the
environment variable or file holding it), are kept only as SHA-256 digests, and are compared in
constant time against every configured digest, so neither timing nor an early match tells a
caller anything."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from runner.errors import UsageError
from runner.settings import secret_values

Role = Literal["viewer", "operator", "approver", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "approver", "admin")


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who called: the token's configured name (recorded as the actor) and role."""

    name: str
    role: Role
    teams: frozenset[str] = field(default_factory=frozenset)

    def allows(self, needed: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(needed)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Tokens:
    def __init__(self, entries: Sequence[tuple[Principal, str]]) -> None:
        self._entries = [(_digest(token), principal) for principal, token in entries]

    def __bool__(self) -> bool:
        return bool(self._entries)

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal of an `Authorization: Bearer <token>` header, or None."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        presented = _digest(token.strip())
        found = None
        for digest, principal in self._entries:  # no early exit: constant time over all
            if hmac.compare_digest(digest, presented):
                found = principal
        return found


def load_tokens(config: Mapping[str, Any]) -> Tokens:
    """The tokens of the `api` settings section; a token whose variable or file is empty is a
    start-up error that says what to set."""
    entries = []
    for raw in config.get("tokens", ()):
        values = secret_values(raw.get("token_env"), raw.get("token_file"))
        if not values:
            where = raw.get("token_env") or raw.get("token_file") or "token_env"
            raise UsageError(
                f"API token {raw['name']!r} has no value: set {where} (or give it token_file)"
            )
        principal = Principal(
            name=str(raw["name"]), role=raw["role"], teams=frozenset(raw.get("teams", ()))
        )
        entries += [(principal, value) for value in values]
    return Tokens(entries)
