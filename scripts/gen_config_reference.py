"""The configuration reference of docs/operations.md, generated from the settings model.

Every key of `schemas/config.schema.json` (the schema `runner.settings` checks runner.yaml
against) becomes a row: its type and allowed values, the default `runner.settings` applies, the
environment variable that overrides it, and the schema's description. The rows replace what
lies between the two markers in docs/operations.md:

    python scripts/gen_config_reference.py            # print the reference
    python scripts/gen_config_reference.py --write    # update docs/operations.md
    python scripts/gen_config_reference.py --check    # exit 1 when the doc is out of date

tests/test_deploy.py runs `--check`, so a new setting cannot land undocumented.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner import settings as model  # noqa: E402
from runner.web import ratelimit  # noqa: E402

DOC = ROOT / "docs" / "operations.md"
BEGIN = "<!-- BEGIN config-reference (scripts/gen_config_reference.py --write; do not edit) -->"
END = "<!-- END config-reference -->"
# the top-level scalars runner.settings also reads from RUNNER_<KEY>
TOP_LEVEL_VARIABLES = ("generic_webhook_secret_env", "data_dir")
# variables that are not RUNNER_<SECTION>_<KEY> of a setting but still read by every command
EXTRA_VARIABLES = (
    ("RUNNER_CONFIG", "Path of the configuration file (instead of `--config`, or ./runner.yaml)."),
    (
        "RUNNER_LOG_LEVEL",
        "Level of the service's log on stderr: `ERROR` (the default), `WARNING`, `INFO`, `DEBUG`.",
    ),
    (
        "RUNNER_SOURCE_URL",
        "Shorthand for a single source named `main` (replaces `sources`); with "
        "`RUNNER_SOURCE_BRANCH`, `RUNNER_SOURCE_PATH`, `RUNNER_SOURCE_INTERVAL`.",
    ),
)


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = root["$defs"][ref.removeprefix("#/$defs/")]
        return {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _type(schema: Mapping[str, Any]) -> str:
    if "enum" in schema:
        return " | ".join(f"`{v}`" for v in schema["enum"])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if kind == "array":
        items = schema.get("items", {})
        inner = "object" if items.get("type") == "object" else _type(items)
        return f"list of {inner}"
    bounds = []
    if "minimum" in schema:
        bounds.append(f"≥ {schema['minimum']}")
    if "exclusiveMinimum" in schema:
        bounds.append(f"> {schema['exclusiveMinimum']}")
    if "maximum" in schema:
        bounds.append(f"≤ {schema['maximum']}")
    if kind == "string" and "pattern" in schema:
        bounds.append(f"pattern `{schema['pattern']}`")
    return f"{kind} ({', '.join(bounds)})" if bounds else str(kind)


def _defaults() -> dict[str, Any]:
    """Dotted key -> the default the runner applies when the key is absent: the settings
    records' defaults, and the rate limits' (which the web layer owns)."""
    out: dict[str, Any] = {f"rate_limits.{k}": v for k, v in ratelimit.DEFAULTS.items()}
    for top in dataclasses.fields(model.Settings):
        if top.name == "path":
            continue
        value = top.default_factory() if callable(top.default_factory) else top.default
        if dataclasses.is_dataclass(value):
            for sub in dataclasses.fields(value):
                out[f"{top.name}.{sub.name}"] = getattr(value, sub.name)
        else:
            out[top.name] = value
    return out


def _shown(value: Any) -> str:
    if value is None or value == () or value == {}:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple | list):
        return "`[" + ", ".join(map(str, value)) + "]`"
    return f"`{value}`"


def _rows(
    schema: Mapping[str, Any], root: Mapping[str, Any], prefix: str = "", env: str | None = None
) -> Iterator[tuple[str, Mapping[str, Any], str | None]]:
    """(dotted key, its schema, its environment variable) in schema order, depth first.

    `env` is the variable prefix of the section being walked: runner.settings reads
    RUNNER_<SECTION>_<KEY> for the scalars of its sections, and RUNNER_<KEY> for a few
    top-level scalars.
    """
    for key, raw in schema.get("properties", {}).items():
        sub = _resolve(raw, root)
        dotted = f"{prefix}{key}"
        variable = None
        if env is not None and sub.get("type") != "object":
            variable = f"{env}{key}".upper()
        elif not prefix and key in TOP_LEVEL_VARIABLES:
            variable = f"RUNNER_{key}".upper()
        yield dotted, sub, variable
        if sub.get("type") == "object" and "properties" in sub:
            inner = f"RUNNER_{key}_" if not prefix and key in model._SECTIONS else None
            yield from _rows(sub, root, f"{dotted}.", inner)
        items = sub.get("items", {})
        if sub.get("type") == "array" and items.get("type") == "object":
            yield from _rows(items, root, f"{dotted}[].")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def reference() -> str:
    """The Markdown of the reference (without the markers)."""
    schema = model.config_schema()
    defaults = _defaults()
    lines = [
        "| key | type | default | environment | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for dotted, sub, env in _rows(schema, schema):
        lines.append(
            "| "
            + " | ".join(
                [
                    f"`{dotted}`",
                    _cell(_type(sub)),
                    _shown(defaults.get(dotted, sub.get("default"))),
                    f"`{env}`" if env else "—",
                    _cell(str(sub.get("description", ""))),
                ]
            )
            + " |"
        )
    lines += ["", "Variables read besides these:", ""]
    lines += [f"- `{name}`: {text}" for name, text in EXTRA_VARIABLES]
    return "\n".join(lines) + "\n"


def render(doc: str) -> str:
    """`doc` with the text between the markers replaced by the current reference."""
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    return doc[:start] + "\n" + reference() + doc[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="update docs/operations.md")
    mode.add_argument("--check", action="store_true", help="exit 1 when it is out of date")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        sys.stdout.write(reference())
        return 0
    current = DOC.read_text(encoding="utf-8")
    wanted = render(current)
    if args.check:
        if wanted != current:
            sys.stderr.write(
                f"{DOC.relative_to(ROOT)}: the configuration reference is out of date; "
                "run python scripts/gen_config_reference.py --write\n"
            )
            return 1
        return 0
    DOC.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
