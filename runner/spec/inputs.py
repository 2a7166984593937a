"""Run inputs: defaults from the workflow's `inputs` schema applied, then validated."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from runner.errors import PermanentError
from runner.spec.schema import compile_schema, translate


class InputsInvalid(PermanentError):
    """The run inputs do not satisfy the workflow's `inputs` schema (HTTP 422, CLI exit 2)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid inputs: " + "; ".join(problems))


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    return compile_schema(json.loads(schema_json))


def _with_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for name, sub in (schema.get("properties") or {}).items():
        if not isinstance(sub, dict):
            continue
        if name not in out and "default" in sub:
            out[name] = sub["default"]
        if name in out:
            out[name] = _with_defaults(sub, out[name])
    return out


def resolve_inputs(schema: Mapping[str, Any] | None, given: Mapping[str, Any]) -> dict[str, Any]:
    """`given` with defaults applied; `InputsInvalid` listing every problem otherwise."""
    if not schema:
        return dict(given)
    value = _with_defaults(schema, dict(given))
    problems = translate(_validator(json.dumps(schema, sort_keys=True)), dict(schema), value)
    if problems:
        raise InputsInvalid(
            [
                f"{'/'.join(map(str, parts)) or 'inputs'}: {message}"
                for parts, message, _ in problems
            ]
        )
    return dict(value)
