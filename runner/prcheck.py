"""Pull requests that change the workflows repo: the PR head is validated and planned before it
can be merged. The head is fetched into a bare repository of its own (never the source's mirror,
which only ever holds what the branch held), its documents compiled like the reconciler would,
and the result reported on the PR: a `runner/validate` commit status, and one comment, kept up
to date, with every error as `file:line: message` or the plan against what is applied now."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pygit2

from runner.errors import SpecError, TransientError
from runner.executors.images import ImagePolicy
from runner.forges.api import ForgeReporting
from runner.forges.events import ForgeEvent
from runner.model import Bundle
from runner.revisions import BundleLoader
from runner.secrets.grants import AgentPolicy
from runner.source.git import GitSourceConfig, _callbacks, _in_daemon_thread
from runner.source.gittree import document_ids, program_ids, subtree, tree_files
from runner.spec.compile import compile_files
from runner.spec.plan import Plan, make_plan
from runner.spec.plan_text import (
    GRANTS_TITLE,
    NARROWINGS_TITLE,
    NOTHING_GRANTED,
    agent_file_line,
    grant_lines,
    markdown_code,
    narrowing_lines,
)
from runner.spec.repo import builtin_agents
from runner.store.base import Store

log = logging.getLogger(__name__)
CONTEXT = "runner/validate"
MARKER = "<!-- runner:validate -->"
ACTIONS = frozenset({"opened", "reopened", "synchronize"})
# Where each forge keeps a pull (merge) request's head.
HEAD_REFS = {
    "github": "refs/pull/{n}/head",
    "gitea": "refs/pull/{n}/head",
    "gitlab": "refs/merge-requests/{n}/head",
}


@dataclass(frozen=True, kw_only=True)
class Verdict:
    source: str
    sha: str
    errors: tuple[SpecError, ...]
    plan: Plan | None

    @property
    def ok(self) -> bool:
        return not self.errors


def verdict_comment(verdict: Verdict, limit: int = 50) -> str:
    head = f"**runner** · validation of `{verdict.source}` at {verdict.sha[:12]}: "
    if verdict.errors:
        lines = [head + f"**{len(verdict.errors)} error(s)**; this head would not be applied.", ""]
        lines += [f"- `{e.path}:{e.line}`: {e.message}" for e in verdict.errors[:limit]]
        if len(verdict.errors) > limit:
            lines.append(
                f"- … and {len(verdict.errors) - limit} more (`runner validate` lists all)"
            )
        return "\n".join(lines)
    plan = verdict.plan
    assert plan is not None
    lines = [head + "**valid**. Merging it would apply:", ""]
    changes = [c for c in plan.changes if c.action != "unchanged"]
    lines += [f"- {c.kind} `{c.name}`: {c.action}" for c in changes] or ["- no workflow changes"]
    lines += _reach_sections(plan, limit)
    schedules = [s for s in plan.schedules if s.action != "unchanged" or s.next_fires]
    if schedules:
        lines += ["", "Schedules:"]
        for s in schedules:
            fires = ", ".join(f.strftime("%Y-%m-%d %H:%M %Z") for f in s.next_fires)
            tail = f"; next fires {fires}" if fires else ""
            lines.append(
                f"- `{s.schedule.workflow}` `{s.schedule.cron}` ({s.schedule.timezone}): "
                f"{s.action}{tail}"
            )
    if plan.gates:
        lines += ["", "Steps that wait for approval:"]
        for g in plan.gates:
            who = ", ".join(g.policy.approvers) or "anyone with write access"
            lines.append(f"- `{g.workflow}` step `{g.step}`: {g.policy.required} from {who}")
    return "\n".join(lines)


def _capped(lines: list[str], limit: int) -> list[str]:
    # A comment over the forge's size limit is not posted at all, which would hide everything;
    # the count stays visible and `runner plan` prints the rest.
    out = [f"- {line}" for line in lines[:limit]]
    if len(lines) > limit:
        out.append(f"- … and {len(lines) - limit} more (`runner plan --against` lists all)")
    return out


def _reach_sections(plan: Plan, limit: int) -> list[str]:
    """The agent files changed, then what merging grants: a heading of its own, so that a new
    secret or a dropped gate is not one more "changed" line among many."""
    lines = []
    if plan.agents_changed:
        lines += ["", "Agents changed:"]
        lines += _capped([agent_file_line(a, markdown_code) for a in plan.agents_changed], limit)
    granted = grant_lines(plan, markdown_code)
    if granted:
        lines += ["", f"### ⚠️ {GRANTS_TITLE}", "", *_capped(granted, limit)]
    else:
        lines += ["", f"**{GRANTS_TITLE}**: {NOTHING_GRANTED}."]
    narrowed = narrowing_lines(plan, markdown_code)
    if narrowed:
        lines += ["", f"{NARROWINGS_TITLE}:", *_capped(narrowed, limit)]
    return lines


class PullRequestCheck:
    """Validates and plans the heads of pull requests against the workflows repos."""

    def __init__(
        self,
        store: Store,
        loader: BundleLoader,
        sources: Mapping[str, GitSourceConfig],
        data_dir: Path,
        reporting: Mapping[str, ForgeReporting],
        kinds: Mapping[str, str],
        *,
        deadline: float = 60.0,
        images: ImagePolicy | None = None,
        policy: AgentPolicy | None = None,
    ) -> None:
        self.images = images
        self.policy = policy
        self.store = store
        self.loader = loader
        self.sources = dict(sources)
        self.root = data_dir / "prchecks"
        self.reporting = dict(reporting)
        self.kinds = dict(kinds)
        self.deadline = deadline

    async def handle(self, event: ForgeEvent, source: str) -> Verdict | None:
        """Check the head of pull request `event` against source `source` (whose repository it
        targets); None when the PR does not touch the workflows folder."""
        config = self.sources[source]
        if event.action not in ACTIONS or event.base_branch != config.branch or not event.number:
            return None
        ref = HEAD_REFS.get(self.kinds.get(event.forge, "github"), HEAD_REFS["github"])
        head_ref = ref.format(n=event.number)
        try:
            await asyncio.wait_for(
                _in_daemon_thread(lambda: self._fetch(config, head_ref)), self.deadline
            )
        except (TimeoutError, pygit2.GitError) as exc:
            raise TransientError(
                f"fetching {head_ref} of {config.name}: {exc or 'deadline'}"
            ) from exc
        checked = await asyncio.to_thread(self._check_tree, config, event)
        if checked is None:
            return None
        errors, head, bundle, programs = checked
        plan = None
        if not errors:
            status = await self.store.get_source_status(source)
            applied = Bundle()
            if status is not None and status.applied_revision:
                applied = await self.loader.bundle(source, status.applied_revision)
            plan = make_plan(bundle, applied, now=datetime.now(UTC), programs=programs)
        verdict = Verdict(source=source, sha=head, errors=tuple(errors), plan=plan)
        await self._report(event, verdict)
        return verdict

    def _repo(self, config: GitSourceConfig) -> pygit2.Repository:
        digest = hashlib.sha256(config.url.encode()).hexdigest()[:12]
        path = self.root / f"{config.name}-{digest}.git"
        if path.exists():
            return pygit2.Repository(str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        return pygit2.init_repository(str(path), bare=True)

    def _fetch(self, config: GitSourceConfig, head_ref: str) -> str:
        repo = self._repo(config)
        url = config.url
        if "://" not in url and Path(url).exists():
            url = str(Path(url).resolve())
        remote = repo.remotes.create_anonymous(url)
        remote.fetch(
            [
                f"+refs/heads/{config.branch}:refs/heads/base",
                f"+{head_ref}:refs/heads/" + head_ref.replace("/", "-"),  # one ref per PR
            ],
            callbacks=_callbacks(config),
        )
        return head_ref

    def _check_tree(
        self, config: GitSourceConfig, event: ForgeEvent
    ) -> tuple[list[SpecError], str, Bundle, dict[str, tuple[str, ...]]] | None:
        """(errors, head sha, bundle, agents whose program changed) of the PR head's workflows
        folder; None when it changes no workflow, agent manifest or agent program."""
        repo = self._repo(config)
        try:
            head = repo.get(event.sha)  # the head the event names, nothing else
            if head is None:
                raise KeyError(event.sha)
            head_commit = head.peel(pygit2.Commit)
            base_commit = repo.revparse_single("refs/heads/base").peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError) as exc:
            raise TransientError(f"pull request head {event.sha[:12]} not fetched: {exc}") from exc
        head_tree = subtree(repo, head_commit, config.path)
        since = repo.merge_base(head_commit.id, base_commit.id)
        base_tree = subtree(repo, repo[since].peel(pygit2.Commit), config.path) if since else None
        head_programs, base_programs = program_ids(repo, head_tree), program_ids(repo, base_tree)
        prefix = "" if config.path in ("", ".") else config.path.strip("/") + "/"
        programs = {
            name: tuple(
                prefix + path
                for path in sorted(files.keys() | base_programs[name].keys())
                if files.get(path) != base_programs[name].get(path)
            )
            for name, files in head_programs.items()
            if name in base_programs and files != base_programs[name]
        }
        if not programs and document_ids(repo, head_tree) == document_ids(repo, base_tree):
            return None  # the PR changes no workflow, agent manifest or agent program
        files = tree_files(repo, head_tree, prefix) if head_tree is not None else []
        policy = self.policy.for_source(config.name) if self.policy else None
        result = compile_files(files, builtins=builtin_agents(), images=self.images, policy=policy)
        return list(result.errors), str(head_commit.id), result.bundle, programs

    async def _report(self, event: ForgeEvent, verdict: Verdict) -> None:
        forge = self.reporting.get(event.forge)
        if forge is None:
            log.info(
                "PR %s#%s validated; forge %s has no API token to report it",
                event.repository,
                event.number,
                event.forge,
            )
            return
        state = "success" if verdict.ok else "failure"
        description = (
            "valid; see the plan in the PR comment"
            if verdict.ok
            else f"{len(verdict.errors)} error(s); see the PR comment"
        )
        try:
            await forge.status(event.repository, verdict.sha, CONTEXT, state, description)
            await forge.upsert_comment(
                event.repository, event.number or 0, MARKER, verdict_comment(verdict)
            )
        except Exception as exc:  # reporting never breaks event handling
            log.warning("reporting validation of %s#%s: %s", event.repository, event.number, exc)
