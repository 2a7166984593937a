"""Which workflows a forge event starts: `push` and `pull_request` triggers matched the way
GitHub Actions users expect (glob patterns with `**`; path filters against the changed files
when the forge told us which; `types` default to opened, synchronize, reopened)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from wcmatch import glob

from runner.forges.events import ForgeEvent
from runner.model import Workflow

_FLAGS = glob.GLOBSTAR | glob.BRACE | glob.DOTGLOB | glob.NEGATE
DEFAULT_TYPES = ("opened", "synchronize", "reopened")


def _any(value: str, patterns: Sequence[str]) -> bool:
    return any(glob.globmatch(value, p, flags=_FLAGS) for p in patterns)


def _paths_match(config: Mapping[str, Any], changed: tuple[str, ...] | None) -> bool:
    if changed is None:
        return True  # not known: the filter cannot rule the event out
    paths, ignore = config.get("paths"), config.get("paths_ignore")
    if paths is not None and not any(_any(f, paths) for f in changed):
        return False
    return not (ignore is not None and changed and all(_any(f, ignore) for f in changed))


def _push_matches(config: Mapping[str, Any], event: ForgeEvent) -> bool:
    branches, tags = config.get("branches"), config.get("tags")
    if event.tag is not None:
        if tags is None or not _any(event.tag, tags):
            return False
    elif event.branch is not None:
        if branches is None and tags is not None:
            return False
        if branches is not None and not _any(event.branch, branches):
            return False
        if config.get("branches_ignore") and _any(event.branch, config["branches_ignore"]):
            return False
    else:
        return False
    return _paths_match(config, event.changed_files)


def _pull_request_matches(config: Mapping[str, Any], event: ForgeEvent) -> bool:
    types = config.get("types") or DEFAULT_TYPES
    if event.action not in types:
        return False
    branches = config.get("branches")
    if branches is not None and not _any(event.base_branch or "", branches):
        return False
    return _paths_match(config, event.changed_files)


def matches(workflow: Workflow, event: ForgeEvent) -> bool:
    """Whether any of the workflow's triggers fires on `event`."""
    for trigger in workflow.triggers:
        if trigger.kind == "push" and event.kind == "push" and _push_matches(trigger.config, event):
            return True
        if (
            trigger.kind == "pull_request"
            and event.kind == "pull_request"
            and _pull_request_matches(trigger.config, event)
        ):
            return True
    return False
