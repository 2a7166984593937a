"""Pull-request comment commands (SPEC §5): one per line, anywhere in a comment.

`/approve [RUN] [STEP]`, `/reject [RUN] [reason...]`, `/run WORKFLOW [key=value ...]`,
`/retry [RUN]`, `/cancel [RUN]`, `/help`. Lines inside fenced code blocks and quoted lines
(`>`) are not commands: quoting someone's `/approve` must not approve anything.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Literal

import yaml

Verb = Literal["approve", "reject", "run", "retry", "cancel", "help"]
VERBS: tuple[Verb, ...] = ("approve", "reject", "run", "retry", "cancel", "help")

HELP = """\
Commands (one per line):
- `/approve [RUN] [STEP]`: approve the pending gates of this PR's runs (or of one run or step)
- `/reject [RUN] [reason...]`: reject them; the run ends rejected
- `/run WORKFLOW [key=value ...]`: start a workflow with a pull_request trigger on this PR's head
- `/retry [RUN]`: run the failed steps again
- `/cancel [RUN]`: cancel
- `/help`: this list
"""


@dataclass(frozen=True, kw_only=True)
class Command:
    verb: Verb
    run: int | None = None
    step: str | None = None
    workflow: str | None = None
    reason: str = ""
    inputs: dict[str, object] = field(default_factory=dict)
    line: str = ""


class CommandError(ValueError):
    """A line that starts like a command but cannot be one; the message says how to write it."""


def _run_id(token: str) -> int | None:
    token = token.lstrip("#")
    return int(token) if token.isdigit() else None


def _value(key: str, text: str) -> object:
    """A /run input read as YAML (a number, a list...); text when YAML would make it something
    JSON cannot hold (a date), an error the commenter is told about when it is not YAML."""
    if not text:
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        raise CommandError(f"/run input {key}={text!r} is not a YAML value: {problem}") from None
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return text
    return value


def _parse_line(line: str) -> Command:
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise CommandError(f"{line!r}: {exc}") from None
    verb, args = words[0][1:].lower(), words[1:]
    if verb not in VERBS:
        raise CommandError(f"unknown command /{verb}; try /help")
    if verb == "help":
        return Command(verb="help", line=line)
    if verb == "run":
        if not args:
            raise CommandError("write /run WORKFLOW [key=value ...]")
        inputs: dict[str, object] = {}
        for pair in args[1:]:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise CommandError(f"/run input {pair!r}: write key=value")
            inputs[key] = _value(key, value)
        return Command(verb="run", workflow=args[0], inputs=inputs, line=line)
    run = _run_id(args[0]) if args else None
    rest = args[1:] if run is not None else args
    if verb == "approve":
        if len(rest) > 1:
            raise CommandError("write /approve [RUN] [STEP]")
        return Command(verb="approve", run=run, step=rest[0] if rest else None, line=line)
    if verb == "reject":
        return Command(verb="reject", run=run, reason=" ".join(rest), line=line)
    if rest:
        raise CommandError(f"write /{verb} [RUN]")
    return Command(verb=verb, run=run, line=line)


# Characters other than \n that some renderers or Python's str.splitlines() treat as a line
# break: a line holding one is never a command (a quoted `/approve` could otherwise hide behind
# one, rendered as part of the quote).
_ODD_BREAKS = frozenset("\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def _fence(line: str) -> str | None:
    """The fence a line opens or closes (its character run: ``` or ~~~ and longer), if any."""
    for char in "`~":
        if line.startswith(char * 3):
            return char * (len(line) - len(line.lstrip(char)))
    return None


def parse_comment(text: str) -> tuple[list[Command], list[str]]:
    """The commands of a comment, and an error message for each line that looked like one.
    Lines are split at \n only; code fences close only on the same character, at least as
    long (CommonMark)."""
    commands: list[Command] = []
    errors: list[str] = []
    fence: str | None = None
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip(" \t")
        marker = _fence(line)
        if marker is not None:
            if fence is None:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence) and line == marker:
                fence = None
            continue
        if fence is not None or line.startswith(">") or not line.startswith("/") or len(line) < 2:
            continue
        if not line[1].isalpha() or _ODD_BREAKS & set(line):
            continue  # a path such as /usr/bin, or a line a renderer would break
        try:
            commands.append(_parse_line(line))
        except CommandError as exc:
            errors.append(str(exc))
    return commands, errors
