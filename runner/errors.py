"""Error types shared by every part of the runner.

Every error is either transient (retry with backoff) or permanent (needs a new revision or a
person). Spec problems are not raised one by one: they are collected as `SpecError` records, each
pointing at a file, line and column, so a user sees every mistake in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass


class RunnerError(Exception):
    """Root of every error the runner raises on purpose."""


class TransientError(RunnerError):
    """Worth retrying with backoff: network, lock timeout, engine unreachable, forge 5xx."""


class PermanentError(RunnerError):
    """Retrying will not help: it needs a new revision or a person."""


class UsageError(PermanentError):
    """The command line or a configuration value is wrong."""


@dataclass(frozen=True, kw_only=True, order=True)
class SpecError:
    """One problem in a workflow or agent document, at an exact position.

    `line` and `column` are 1-based and point at the offending node (or the key, for a property
    that should not be there). `pointer` is the RFC 6901 JSON pointer of that node inside its
    document; `document` is the 0-based index of the document within a multi-document file.
    """

    path: str
    line: int
    column: int
    message: str
    pointer: str = ""
    document: int = 0

    def __str__(self) -> str:
        where = f" [{self.pointer}]" if self.pointer else ""
        return f"{self.path}:{self.line}:{self.column}: {self.message}{where}"

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "pointer": self.pointer,
            "document": self.document,
            "message": self.message,
        }


class SpecInvalid(PermanentError):
    """Raised where a whole set of documents must be valid (applying a revision)."""

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = sorted(errors)
        first = f": {self.errors[0]}" if self.errors else ""
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(f"invalid workflow spec{first}{more}")
