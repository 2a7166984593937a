"""Forge payloads, normalised: the push or pull request an event is, whatever forge sent it.

Only what trigger matching and the run's `trigger` need is kept. A payload of an event this module
does not act on is None (the event is recorded as handled, with nothing to do). A payload of an
event it acts on is first checked against its JSON Schema (`runner/forges/payloads.py`): the
fields read below are there with their types, or `BadPayload` says which one is not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from runner.forges.payloads import check_event

ZERO = "0" * 40
# GitLab's hooks carry no bot flag; project, group and service-account tokens act through bot
# users named like this (GitLab 13.9+: project_<id>_bot_<hex>; earlier project_<id>_bot<n>)
_GITLAB_BOT = re.compile(r"^(project|group)_\d+_bot(_[0-9a-f]+|\d*)$|^service_account_")
# the forges' words for pull request activity, in GitHub's terms (the workflow's `types`)
_ACTIONS = {
    "open": "opened",
    "reopen": "reopened",
    "update": "synchronize",
    "synchronized": "synchronize",
    "close": "closed",
    "merge": "closed",
}


@dataclass(frozen=True, kw_only=True)
class ForgeEvent:
    kind: Literal["push", "pull_request", "comment"]
    forge: str
    repository: str
    clone_url: str
    sha: str
    actor: str
    ref: str = ""
    branch: str | None = None
    tag: str | None = None
    changed_files: tuple[str, ...] | None = None  # None: not known (path filters then match)
    action: str | None = None
    number: int | None = None
    base_branch: str | None = None
    author: str | None = None
    comment: str | None = None  # the text of a new pull-request comment
    comment_url: str | None = None
    comment_id: str | None = None  # the forge's id of the comment: its commands act once
    comment_at: float | None = None  # when the forge says it was written (epoch seconds)
    extra: dict[str, Any] = field(default_factory=dict)

    def trigger(self, event_type: str) -> dict[str, Any]:
        """The run's `trigger` (what expressions and agents see)."""
        info: dict[str, Any] = {
            "event": self.kind,
            "forge": self.forge,
            "repository": self.repository,
            "ref": self.ref,
            "sha": self.sha,
            "actor": self.actor,
            "clone_url": self.clone_url,
        }
        if self.changed_files is not None:
            info["changed_files"] = list(self.changed_files)
        if self.kind == "pull_request":
            info["pull_request"] = {
                "number": self.number,
                "action": self.action,
                "base": self.base_branch,
                "author": self.author,
            }
        return info


def _time(value: Any) -> float | None:
    """Epoch seconds of a forge's timestamp: ISO 8601 (GitHub, Gitea, GitLab 16+) or GitLab's
    older `2015-05-17 18:21:36 UTC`; None when absent or not a time."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace(" UTC", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _text(mapping: Any, key: str) -> str:
    """A string field of a checked payload ("" when absent or null)."""
    value = mapping.get(key) if isinstance(mapping, dict) else None
    return value if isinstance(value, str) else ""


def _object(mapping: Any, key: str) -> dict[str, Any]:
    """An object field of a checked payload ({} when absent or null)."""
    value = mapping.get(key) if isinstance(mapping, dict) else None
    return value if isinstance(value, dict) else {}


def _number(*values: Any) -> int:
    """The first integer among `values` (0 when none is)."""
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and value:
            return value
    return 0


def _id(value: Any) -> str | None:
    return str(value) if isinstance(value, int | str) and str(value) else None


def _ref_parts(ref: str) -> tuple[str | None, str | None]:
    if ref.startswith("refs/heads/"):
        return ref.removeprefix("refs/heads/"), None
    if ref.startswith("refs/tags/"):
        return None, ref.removeprefix("refs/tags/")
    return None, None


def _changed(commits: list[dict[str, Any]] | None, total: Any = None) -> tuple[str, ...] | None:
    """The files a push changed, or None when the payload cannot say: no commits, fewer commits
    than the push had (GitLab lists the newest 20, Gitea the newest 5 by default), or commits
    without file lists."""
    if not commits:
        return None
    if total is not None and str(total).isdigit() and int(total) > len(commits):
        return None
    keys = ("added", "modified", "removed")
    if any(not any(k in commit for k in keys) for commit in commits):
        return None
    files: set[str] = set()
    for commit in commits:
        for key in ("added", "modified", "removed"):
            files.update(f for f in commit.get(key) or [] if isinstance(f, str))
    return tuple(sorted(files))


def _push(
    forge: str, body: dict[str, Any], repository: str, clone_url: str, actor: str
) -> ForgeEvent | None:
    after = _text(body, "after") or _text(body, "checkout_sha")
    if not after or after == ZERO:
        return None  # a deleted branch or tag runs nothing
    ref = _text(body, "ref")
    branch, tag = _ref_parts(ref)
    return ForgeEvent(
        kind="push",
        forge=forge,
        repository=repository,
        clone_url=clone_url,
        sha=after,
        actor=actor,
        ref=ref,
        branch=branch,
        tag=tag,
        changed_files=_changed(
            body.get("commits"), body.get("total_commits_count", body.get("total_commits"))
        ),
    )


def _github_comment(name: str, body: dict[str, Any], full: str, url: str) -> ForgeEvent | None:
    """A new comment on a pull request (GitHub `issue_comment`, Gitea `issue_comment` with
    `is_pull`); edits, deletions, bots and comments on plain issues are not commands."""
    issue, comment = _object(body, "issue"), _object(body, "comment")
    on_pull = bool(issue.get("pull_request")) or body.get("is_pull") is True
    commenter = _object(comment, "user") or _object(body, "sender")
    if body.get("action") != "created" or not on_pull or commenter.get("type") == "Bot":
        return None
    return ForgeEvent(
        kind="comment",
        forge=name,
        repository=full,
        clone_url=url,
        sha="",  # the head of the pull request is asked of the forge when it matters
        actor=_text(commenter, "login"),
        number=_number(issue.get("number")),
        author=_text(_object(issue, "user"), "login"),
        comment=_text(comment, "body"),
        comment_url=_text(comment, "html_url"),
        comment_id=_id(comment.get("id")),
        comment_at=_time(comment.get("created_at")),
    )


def _gitlab_note(name: str, body: dict[str, Any], full: str, url: str) -> ForgeEvent | None:
    attrs, mr, user = (_object(body, key) for key in ("object_attributes", "merge_request", "user"))
    # GitLab 16.11+ says create/update; older ones: an edited note was updated after creation
    if "action" in attrs:
        edited = attrs.get("action") == "update"
    else:
        edited = attrs.get("updated_at") not in (None, attrs.get("created_at"))
    bot = user.get("bot") is True or _GITLAB_BOT.match(_text(user, "username"))
    if attrs.get("noteable_type") != "MergeRequest" or not mr or edited or bot:
        return None
    if attrs.get("system"):  # GitLab's own notes ("added 1 commit"), never a person's
        return None
    return ForgeEvent(
        kind="comment",
        forge=name,
        repository=full,
        clone_url=url,
        sha=_text(_object(mr, "last_commit"), "id"),
        actor=_text(user, "username"),
        number=_number(mr.get("iid")),
        author=None,  # the hook names the MR author by id only; pull_head asks for the login
        comment=_text(attrs, "note"),
        comment_url=_text(attrs, "url"),
        comment_id=_id(attrs.get("id")),
        comment_at=_time(attrs.get("created_at")),
    )


def parse(kind: str, name: str, event_type: str, body: dict[str, Any]) -> ForgeEvent | None:
    """A push, pull request or pull-request comment from a GitHub, GitLab or Gitea payload;
    `BadPayload` when the payload of such an event lacks a field read here, or has it with
    another type."""
    check_event(kind, event_type, body)
    if kind in ("github", "gitea"):
        repo = _object(body, "repository")
        sender = _text(_object(body, "sender"), "login") or _text(_object(body, "pusher"), "name")
        full, url = _text(repo, "full_name"), _text(repo, "clone_url")
        if event_type == "issue_comment":
            return _github_comment(name, body, full, url)
        if event_type == "push":
            return _push(name, body, full, url, sender)
        if event_type == "pull_request":
            pr = _object(body, "pull_request")
            action = _text(body, "action")
            number = _number(body.get("number"), pr.get("number"))
            return ForgeEvent(
                kind="pull_request",
                forge=name,
                repository=full,
                clone_url=url,
                sha=_text(_object(pr, "head"), "sha"),
                actor=sender,
                ref=f"refs/pull/{number}/head",
                action=_ACTIONS.get(action, action),
                number=number,
                base_branch=_text(_object(pr, "base"), "ref"),
                author=_text(_object(pr, "user"), "login"),
            )
        return None
    if kind == "gitlab":
        project = _object(body, "project")
        full, url = _text(project, "path_with_namespace"), _text(project, "git_http_url")
        if event_type == "Note Hook":
            return _gitlab_note(name, body, full, url)
        if event_type in ("Push Hook", "Tag Push Hook"):
            return _push(name, body, full, url, _text(body, "user_username"))
        if event_type == "Merge Request Hook":
            attrs = _object(body, "object_attributes")
            action = _text(attrs, "action")
            if action == "update" and not attrs.get("oldrev"):
                action = "edited"  # GitLab sends oldrev only when new code was pushed
            return ForgeEvent(
                kind="pull_request",
                forge=name,
                repository=full,
                clone_url=url,
                sha=_text(_object(attrs, "last_commit"), "id"),
                actor=_text(_object(body, "user"), "username"),
                ref=f"refs/merge-requests/{_number(attrs.get('iid'))}/head",
                action=_ACTIONS.get(action, action),
                number=_number(attrs.get("iid")),
                base_branch=_text(attrs, "target_branch"),
                author=None,  # `user` is who acted; the hook names the MR author by id only
            )
    return None
