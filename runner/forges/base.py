"""What the webhook receiver needs of a forge: who signed a delivery, which delivery and event
it is. Parsing, matching and forge API calls happen after the delivery is stored."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from runner.errors import UsageError


@dataclass(frozen=True, kw_only=True)
class Delivery:
    forge: str
    delivery_id: str
    event_type: str


class Verifier(Protocol):
    kind: str

    def verify(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]) -> bool:
        """Whether the delivery was signed (or tokened) with one of `secrets` (rotation: any of
        them). Compared in constant time."""

    def delivery(self, name: str, headers: Mapping[str, str], body: bytes) -> Delivery:
        """The delivery id (for dedupe) and event type, from the headers."""


def hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def matches_any(given: str | None, expected: Sequence[str]) -> bool:
    """Constant-time comparison of `given` with each expected value."""
    if not given:
        return False
    found = False
    for value in expected:
        found |= hmac.compare_digest(given.encode(), value.encode())
    return found


class GitHub:
    kind = "github"

    def verify(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]) -> bool:
        given = headers.get("x-hub-signature-256")
        return matches_any(given, [f"sha256={hmac_hex(s, body)}" for s in secrets])

    def delivery(self, name: str, headers: Mapping[str, str], body: bytes) -> Delivery:
        return Delivery(
            forge=name,
            delivery_id=headers.get("x-github-delivery") or _digest(body),
            event_type=headers.get("x-github-event", "unknown"),
        )


class GitLab:
    kind = "gitlab"

    def verify(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]) -> bool:
        return matches_any(headers.get("x-gitlab-token"), secrets)

    def delivery(self, name: str, headers: Mapping[str, str], body: bytes) -> Delivery:
        return Delivery(
            forge=name,
            delivery_id=headers.get("x-gitlab-event-uuid")
            or headers.get("x-gitlab-webhook-uuid")
            or _digest(body),
            event_type=headers.get("x-gitlab-event", "unknown"),
        )


class Gitea:
    kind = "gitea"

    def verify(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]) -> bool:
        return matches_any(headers.get("x-gitea-signature"), [hmac_hex(s, body) for s in secrets])

    def delivery(self, name: str, headers: Mapping[str, str], body: bytes) -> Delivery:
        return Delivery(
            forge=name,
            delivery_id=headers.get("x-gitea-delivery") or _digest(body),
            event_type=headers.get("x-gitea-event", "unknown"),
        )


class Generic:
    """POST /hooks/generic/<workflow>: `X-Runner-Signature: sha256=<hex HMAC of the body>`;
    `X-Runner-Delivery` names the delivery (else the body's digest: the same body twice is one
    delivery)."""

    kind = "generic"

    def verify(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]) -> bool:
        given = headers.get("x-runner-signature")
        return matches_any(given, [f"sha256={hmac_hex(s, body)}" for s in secrets])

    def delivery(self, name: str, headers: Mapping[str, str], body: bytes) -> Delivery:
        return Delivery(
            forge="generic",
            delivery_id=headers.get("x-runner-delivery") or _digest(body),
            event_type=f"generic:{name}",
        )


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


VERIFIERS: dict[str, Verifier] = {v.kind: v for v in (GitHub(), GitLab(), Gitea(), Generic())}


def verifier(kind: str) -> Verifier:
    try:
        return VERIFIERS[kind]
    except KeyError:
        raise UsageError(
            f"unknown forge kind {kind!r}; expected one of {sorted(set(VERIFIERS) - {'generic'})}"
        ) from None
