"""Pull-request comment commands (SPEC §5): one per line, anywhere in a comment.

`/approve [RUN] [STEP]`, `/reject [RUN] [reason...]`, `/run WORKFLOW [key=value ...]`,
`/retry [RUN]`, `/cancel [RUN]`, `/help`. Lines inside fenced code blocks and quoted lines
(`>`) are not commands: quoting someone's `/approve` must not approve anything.
"""

from __future__ import annotations

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
            inputs[key] = yaml.safe_load(value) if value else ""
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


def parse_comment(text: str) -> tuple[list[Command], list[str]]:
    """The commands of a comment, and an error message for each line that looked like one."""
    commands: list[Command] = []
    errors: list[str] = []
    fenced = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced or line.startswith(">") or not line.startswith("/") or len(line) < 2:
            continue
        if not line[1].isalpha():
            continue  # a path such as /usr/bin, not a command
        try:
            commands.append(_parse_line(line))
        except CommandError as exc:
            errors.append(str(exc))
    return commands, errors
