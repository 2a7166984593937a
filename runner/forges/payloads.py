"""Webhook bodies, checked before anything reads them: JSON, an object, not nested too deep,
and, for the forge events the runner acts on, the fields it reads with the types it expects.

The shape of each forge event is a JSON Schema under `runner/schemas/events/`
(`<forge kind>-<event>.schema.json`), checked with jsonschema-rs. The receiver checks a delivery
before storing it (a bad one is answered 400 with the reason); the dispatcher checks a stored
event again before parsing it (events stored by an older runner), and marks one that fails
`failed` with the same reason.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from runner.errors import PermanentError
from runner.spec.schema import compile_schema, translate
from runner.spec.yaml import pointer_of

MAX_DEPTH = 64  # forge payloads nest about 8 levels; generic inputs are small objects

# (forge kind, event header) -> schema name; events not listed are not read by the runner
_SCHEMAS = {
    **{
        (kind, event): f"{kind}-{event}"
        for kind in ("github", "gitea")
        for event in ("push", "pull_request", "issue_comment")
    },
    ("gitlab", "Push Hook"): "gitlab-push",
    ("gitlab", "Tag Push Hook"): "gitlab-push",
    ("gitlab", "Merge Request Hook"): "gitlab-merge_request",
    ("gitlab", "Note Hook"): "gitlab-note",
}


class BadPayload(PermanentError):
    """A body the runner will not read; `code` is the error code (and metric result)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _depth(value: Any) -> int:
    """How deep lists and objects nest in `value` (0 for a scalar), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            items: Any = node.values()
        elif isinstance(node, list):
            items = node
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((item, depth + 1) for item in items)
    return deepest


def _what(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "null" if value is None else "a number"


def load_object(body: bytes, *, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The body as a JSON object, or `BadPayload` saying what is wrong with it."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise BadPayload(
            "too_deep", f"the JSON body nests deeper than {max_depth} levels"
        ) from None
    except UnicodeDecodeError:
        raise BadPayload("bad_json", "the body is not UTF-8 JSON") from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise BadPayload("bad_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadPayload("bad_json", f"the body must be a JSON object, not {_what(value)}")
    if _depth(value) > max_depth:
        raise BadPayload("too_deep", f"the JSON body nests deeper than {max_depth} levels")
    return value


def schema_name(kind: str, event_type: str) -> str | None:
    """The schema a forge event is checked against; None for events the runner does not read."""
    return _SCHEMAS.get((kind, event_type))


@cache
def _validator(name: str) -> tuple[Any, dict[str, Any]]:
    text = resources.files("runner").joinpath("schemas", "events", f"{name}.schema.json")
    schema: dict[str, Any] = json.loads(text.read_text("utf-8"))
    return compile_schema(schema), schema


def check_event(kind: str, event_type: str, body: dict[str, Any]) -> None:
    """Raise `BadPayload` naming each field of a forge event that is missing or of the wrong
    type (at most five, then how many more)."""
    name = schema_name(kind, event_type)
    if name is None:
        return
    validator, schema = _validator(name)
    try:
        problems = translate(validator, schema, body)
    except (OverflowError, ValueError) as exc:  # a number beyond what the validator reads
        raise BadPayload("invalid_payload", f"{event_type} payload: {exc}") from None
    if not problems:
        return
    shown = [f"{pointer_of(parts) or '/'}: {message}" for parts, message, _ in problems[:5]]
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise BadPayload(
        "invalid_payload",
        f"{kind} {event_type} payload does not have the fields the runner reads"
        f" ({name}.schema.json): {'; '.join(shown)}{more}",
    )
