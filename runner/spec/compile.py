"""From files to a validated `Bundle`: schema checks, then every rule across documents.

Every problem is collected, not just the first: the semantic rules run on every document, even
one with schema errors, and skip only the values that have the wrong shape (the schema has already
said so). Each error points at the node to fix.

`Compiler` keeps what it found per file and per document, so that the reconciler pays for a
commit's changed files rather than for the repository: a change re-runs the rules across
documents only where it can alter their outcome, and the outcome is still the whole set's
(`compile_files` is one compiler given every file at once).
"""

from __future__ import annotations

import bisect
import difflib
import graphlib
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from runner.errors import SpecError
from runner.executors.images import ImagePolicy
from runner.model import (
    Agent,
    ApprovalPolicy,
    Bundle,
    RetryPolicy,
    Step,
    StoredDocument,
    Trigger,
    Workflow,
)
from runner.secrets.grants import AgentPolicy
from runner.spec import expr as cel
from runner.spec.admission import agent_problems, step_problems
from runner.spec.schema import check_schema, compile_schema, translate, validate_document
from runner.spec.timing import check_cron, parse_duration, zone
from runner.spec.yaml import Document, load_bytes

Role = Literal["workflows", "agent", "any"]


@dataclass(frozen=True, kw_only=True)
class SourceFile:
    """One file to compile. `role` says what it may hold: documents under `workflows/`, the one
    manifest of `agents/<name>/` (whose directory is `agent_dir`), or anything (files named on the
    command line)."""

    path: str
    data: bytes
    role: Role = "any"
    agent_dir: str | None = None
    key: str | None = None  # content id (a git blob id): files with a known key are not re-read


@dataclass(frozen=True, kw_only=True)
class Result:
    """What compiled (`bundle`), what did not (`errors`), and the documents of the files as
    they are stored for an applied revision (valid ones only)."""

    bundle: Bundle
    errors: list[SpecError]
    documents: list[StoredDocument] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def digest(data: Any) -> str:
    """Content digest of a document: formatting and comments do not change it."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _duration(value: Any) -> float | None:
    try:
        return parse_duration(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _strings(value: Any) -> list[tuple[list[str | int], str]]:
    """(relative path, text) of every string inside a `with` value."""
    if isinstance(value, str):
        return [([], value)]
    items: Iterable[tuple[str | int, Any]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return []
    return [([k, *sub], text) for k, v in items for sub, text in _strings(v)]


def _agent(
    doc: Document,
    role: Role,
    agent_dir: str | None,
    images: ImagePolicy | None = None,
    policy: AgentPolicy | None = None,
) -> tuple[Agent | None, list[SpecError]]:
    data, errors = doc.data, []
    spec = _get(data, "spec")
    name = _get(data, "metadata", "name")
    directory = agent_dir or (doc.path.rsplit("/", 1)[0] if "/" in doc.path else ".")
    if role == "workflows":
        errors.append(
            doc.error(
                ["kind"],
                "an Agent belongs in agents/<name>/agent.yaml, next to its program, "
                "not under workflows/",
            )
        )
    if (
        role == "agent"
        and isinstance(name, str)
        and agent_dir
        and agent_dir.rsplit("/")[-1] != name
    ):
        errors.append(
            doc.error(
                ["metadata", "name"],
                f"agent {name!r} is in directory {agent_dir.rsplit('/')[-1]!r}; "
                f"a repo-local agent lives in agents/{name}/agent.yaml",
            )
        )
    for key in ("inputs", "outputs"):
        schema = _get(spec, key)
        if isinstance(schema, dict):
            errors += check_schema(doc, ["spec", key], schema)
    if not isinstance(name, str) or not isinstance(spec, dict):
        return None, errors
    timeout = _duration(spec.get("timeout"))
    if timeout == 0:
        errors.append(doc.error(["spec", "timeout"], "a timeout must be longer than 0s"))
    raw_resources = spec.get("resources")
    resources: dict[str, Any] = raw_resources if isinstance(raw_resources, dict) else {}
    command = spec.get("command")
    agent = Agent(
        name=name,
        command=tuple(str(c) for c in command) if isinstance(command, list) else (),
        directory=directory,
        source=doc.path,
        digest=digest(data),
        description=str(_get(data, "metadata", "description") or ""),
        image=spec.get("image") if isinstance(spec.get("image"), str) else None,
        risk="approval_required" if spec.get("risk") == "approval_required" else "auto",
        inputs=spec.get("inputs") if isinstance(spec.get("inputs"), dict) else None,
        outputs=spec.get("outputs") if isinstance(spec.get("outputs"), dict) else None,
        timeout=timeout,
        memory=str(resources["memory"]) if "memory" in resources else None,
        cpu=str(resources["cpu"]) if "cpu" in resources else None,
        pids=resources["pids"] if isinstance(resources.get("pids"), int) else None,
        network=spec.get("network") is True,
        secrets=tuple(s for s in spec.get("secrets") or () if isinstance(s, str)),
    )
    errors += agent_problems(doc, agent, spec, images, policy)
    return agent, errors


class _WorkflowChecker:
    """The rules of one workflow document that need more than its schema."""

    def __init__(
        self,
        doc: Document,
        agents: Mapping[str, Agent],
        broken_agents: frozenset[str],
        validators: dict[str, Any],
        policy: AgentPolicy | None = None,
    ) -> None:
        self.policy = policy
        self.doc = doc
        self.agents = agents
        self.broken_agents = broken_agents
        self.validators = validators
        self.errors: list[SpecError] = []
        steps = _get(doc.data, "spec", "steps")
        self.steps: list[tuple[int, dict[str, Any]]] = [
            (i, s)
            for i, s in enumerate(steps if isinstance(steps, list) else [])
            if isinstance(s, dict)
        ]
        self.ids: dict[str, int] = {}
        self.needs: dict[str, list[str]] = {}
        self.upstream: dict[str, set[str]] = {}

    def error(self, parts: list[str | int], message: str, *, key: bool = False) -> None:
        self.errors.append(self.doc.error(parts, message, key=key))

    def run(self) -> list[SpecError]:
        self._ids()
        self._needs()
        self._cycles()
        self.upstream = self._upstream()
        for i, step in self.steps:
            sid = step.get("id")
            self._step(i, step, self.upstream.get(sid, set()) if isinstance(sid, str) else set())
        self._triggers()
        self._workflow_fields()
        return self.errors

    def _ids(self) -> None:
        for i, step in self.steps:
            sid = step.get("id")
            if not isinstance(sid, str):
                continue
            if sid in self.ids:
                first = self.doc.position(["spec", "steps", self.ids[sid], "id"])[0]
                self.error(
                    ["spec", "steps", i, "id"],
                    f"duplicate step id {sid!r} (first used on line {first}); step ids are unique",
                )
            else:
                self.ids[sid] = i

    def _needs(self) -> None:
        for i, step in self.steps:
            sid, raw = step.get("id"), step.get("needs", [])
            here: list[str | int] = ["spec", "steps", i, "needs"]
            entries: list[tuple[list[str | int], Any]] = []
            if isinstance(raw, str):
                entries = [(here, raw)]
            elif isinstance(raw, list):
                entries = [([*here, j], n) for j, n in enumerate(raw)]
            valid = []
            for parts, need in entries:
                if not isinstance(need, str):
                    continue
                if need == sid:
                    self.error(parts, f"step {sid!r} needs itself; remove it from needs")
                elif need not in self.ids:
                    self.error(
                        parts,
                        f"step {sid!r} needs {need!r}, which is not a step of this workflow"
                        + (
                            _suggest(need, self.ids)
                            or f"; steps are: {', '.join(i for i in self.ids if i != sid)}"
                        ),
                    )
                else:
                    valid.append(need)
            if isinstance(sid, str) and self.ids.get(sid) == i:
                self.needs[sid] = valid

    def _cycles(self) -> None:
        """Report every cycle, each once (graphlib finds one at a time)."""
        graph = {sid: list(needs) for sid, needs in self.needs.items()}
        while True:
            try:
                graphlib.TopologicalSorter(graph).prepare()
                return
            except graphlib.CycleError as exc:
                cycle: list[str] = list(reversed(exc.args[1]))
                start = min(range(len(cycle) - 1), key=lambda k: self.ids[cycle[k]])
                cycle = cycle[start:-1] + cycle[: start + 1]
                self.error(
                    ["spec", "steps", self.ids[cycle[0]], "needs"],
                    f"steps form a cycle: {' -> '.join(cycle)} (each needs the next); "
                    "remove one of these needs",
                )
                for sid in cycle:
                    graph[sid] = []

    def _upstream(self) -> dict[str, set[str]]:
        """Every step's transitive needs (a step in a cycle is its own ancestor)."""
        out: dict[str, set[str]] = {}
        for sid in self.needs:
            seen: set[str] = set()
            todo = list(self.needs[sid])
            while todo:
                need = todo.pop()
                if need not in seen:
                    seen.add(need)
                    todo.extend(self.needs.get(need, []))
            out[sid] = seen
        return out

    def _expression(
        self,
        parts: list[str | int],
        source: str,
        *,
        sid: str | None,
        upstream: set[str],
        scope: tuple[str, ...] = cel.SCOPE,
    ) -> None:
        try:
            compiled = cel.compile_expression(source)
        except cel.ExpressionError as exc:
            self.error(parts, str(exc))
            return
        for problem in cel.check_names(compiled, scope):
            self.error(parts, problem)
        if "steps" not in scope:
            return
        for ref in sorted(compiled.steps):
            if ref == sid:
                self.error(parts, f"step {sid!r} reads its own result in {compiled.source!r}")
            elif ref not in self.ids:
                self.error(
                    parts,
                    f"{compiled.source!r} reads steps.{ref}, which is not a step of this workflow"
                    + _suggest(ref, self.ids),
                )
            elif ref not in upstream and sid is not None and sid in self.upstream.get(ref, ()):
                self.error(
                    parts,
                    f"{compiled.source!r} reads steps.{ref}, which runs after step {sid!r} "
                    f"({ref} needs {sid}): a step can only read steps upstream of it",
                )
            elif ref not in upstream:
                self.error(
                    parts,
                    f"{compiled.source!r} reads steps.{ref}, which does not run before step "
                    f"{sid!r}: add {ref!r} to its needs",
                )

    def _step(self, i: int, step: dict[str, Any], upstream: set[str]) -> None:
        here: list[str | int] = ["spec", "steps", i]
        sid = step.get("id") if isinstance(step.get("id"), str) else None
        when = step.get("when")
        if isinstance(when, str):
            self._expression([*here, "when"], cel.when_source(when), sid=sid, upstream=upstream)
        agent = self.agents.get(step["agent"]) if isinstance(step.get("agent"), str) else None
        named = step.get("agent")
        if isinstance(named, str) and agent is None and named not in self.broken_agents:
            self.error(
                [*here, "agent"],
                f"unknown agent {step['agent']!r}"
                + (
                    _suggest(step["agent"], self.agents)
                    or "; an agent is built in or lives in agents/<name>/agent.yaml"
                ),
            )
        workflow = _get(self.doc.data, "metadata", "name")
        if agent is not None and not agent.builtin and self.policy and isinstance(workflow, str):
            timeout = _duration(step.get("timeout"))
            self.errors += step_problems(self.doc, here, workflow, agent, timeout, self.policy)
        with_ = step.get("with")
        if isinstance(with_, dict):
            self._with([*here, "with"], with_, agent, sid=sid, upstream=upstream)
        approval = step.get("approval")
        if isinstance(approval, dict):
            self._approval([*here, "approval"], approval)
        if _duration(step.get("timeout")) == 0:
            self.error([*here, "timeout"], "a timeout must be longer than 0s")

    def _with(
        self,
        parts: list[str | int],
        with_: dict[str, Any],
        agent: Agent | None,
        *,
        sid: str | None,
        upstream: set[str],
    ) -> None:
        templated: set[str] = set()
        for sub, text in _strings(with_):
            if "${{" not in text:
                continue
            templated.add(str(sub[0]))
            try:
                sources = cel.template_parts(text)
            except cel.ExpressionError as exc:
                self.error([*parts, *sub], str(exc))
                continue
            for source in sources:
                self._expression([*parts, *sub], source, sid=sid, upstream=upstream)
        if agent is None or agent.inputs is None:
            return
        if agent.name not in self.validators:
            try:
                self.validators[agent.name] = compile_schema(dict(agent.inputs))
            except ValueError:
                self.validators[agent.name] = None  # its own document reports the schema
        validator = self.validators[agent.name]
        if validator is None:
            return
        literal = {k: v for k, v in with_.items() if k not in templated}
        for sub, message, at_key in translate(validator, dict(agent.inputs), literal):
            if message.startswith("missing required property") and any(
                repr(k) in message for k in templated
            ):
                continue  # a templated value may well provide it
            self.error([*parts, *sub], f"agent {agent.name!r}: {message}", key=at_key)

    def _approval(self, parts: list[str | int], approval: dict[str, Any]) -> None:
        required, approvers = approval.get("required", 1), approval.get("approvers")
        count = len(approvers) if isinstance(approvers, list) else 0
        if count and isinstance(required, int) and required > count:
            self.error(
                [*parts, "required"],
                f"{required} approvals required but only {count} approver(s) listed; "
                "list more approvers (a team counts once) or lower required",
            )
        if "on_timeout" in approval and "timeout" not in approval:
            self.error(
                [*parts, "on_timeout"],
                "on_timeout has no effect without a timeout; add approval.timeout (e.g. 24h)",
                key=True,
            )
        if _duration(approval.get("timeout")) == 0:
            self.error([*parts, "timeout"], "an approval timeout must be longer than 0s")

    def _triggers(self) -> None:
        triggers = _get(self.doc.data, "spec", "triggers")
        for i, trigger in enumerate(triggers if isinstance(triggers, list) else []):
            schedule = _get(trigger, "schedule")
            if not isinstance(schedule, dict):
                continue
            here: list[str | int] = ["spec", "triggers", i, "schedule"]
            cron = schedule.get("cron")
            if isinstance(cron, str) and (problem := check_cron(cron)):
                self.error([*here, "cron"], problem)
            tz = schedule.get("timezone")
            if isinstance(tz, str):
                try:
                    zone(tz)
                except ValueError as exc:
                    self.error([*here, "timezone"], str(exc))

    def _workflow_fields(self) -> None:
        spec = _get(self.doc.data, "spec")
        group = _get(spec, "concurrency", "group")
        if isinstance(group, str) and "${{" in group:
            try:
                sources = cel.template_parts(group)
            except cel.ExpressionError as exc:
                self.error(["spec", "concurrency", "group"], str(exc))
                sources = []
            for source in sources:
                self._expression(
                    ["spec", "concurrency", "group"],
                    source,
                    sid=None,
                    upstream=set(),
                    scope=("inputs", "trigger", "run"),
                )
        inputs = _get(spec, "inputs")
        if isinstance(inputs, dict):
            self.errors += check_schema(self.doc, ["spec", "inputs"], inputs)
        if _duration(_get(spec, "timeout")) == 0:
            self.error(["spec", "timeout"], "a timeout must be longer than 0s")


def _approval_policy(step: dict[str, Any], agent: Agent | None) -> ApprovalPolicy | None:
    raw = step.get("approval")
    if not isinstance(raw, dict):
        return ApprovalPolicy() if agent is not None and agent.risk == "approval_required" else None
    return ApprovalPolicy(
        required=int(raw.get("required", 1)),
        approvers=tuple(raw.get("approvers", ())),
        allow_author=bool(raw.get("allow_author", False)),
        timeout=_duration(raw.get("timeout")),
        on_timeout=raw.get("on_timeout", "reject"),
    )


def _build_workflow(doc: Document, agents: Mapping[str, Agent]) -> Workflow:
    data = doc.data
    spec = data["spec"]
    steps = []
    for raw in spec["steps"]:
        needs = raw.get("needs", [])
        retry = raw.get("retry", {})
        steps.append(
            Step(
                id=raw["id"],
                agent=raw["agent"],
                name=raw.get("name", raw["id"]),
                needs=(needs,) if isinstance(needs, str) else tuple(needs),
                when=cel.when_source(raw["when"]) if isinstance(raw.get("when"), str) else None,
                run_if=raw.get("run_if", "success"),
                with_=raw.get("with", {}),
                approval=_approval_policy(raw, agents.get(raw["agent"])),
                retry=RetryPolicy(
                    max=retry.get("max", 0), backoff=_duration(retry.get("backoff")) or 10.0
                ),
                timeout=_duration(raw.get("timeout")),
            )
        )
    concurrency = spec.get("concurrency") or {}
    return Workflow(
        name=data["metadata"]["name"],
        source=doc.path,
        digest=digest(data),
        description=data["metadata"].get("description", ""),
        labels=data["metadata"].get("labels", {}),
        triggers=tuple(
            Trigger(kind=kind, config=config or {})
            for t in spec["triggers"]
            for kind, config in t.items()
        ),
        steps=tuple(steps),
        inputs=spec.get("inputs"),
        concurrency_group=concurrency.get("group"),
        concurrency_policy=concurrency.get("policy", "queue"),
        timeout=_duration(spec.get("timeout")),
    )


# What one file may ask of the expression compiler, so that validating any repository takes
# bounded time per file (the YAML loader bounds its size, nodes and nesting; `expr` bounds each
# expression): a real workflow file holds a few dozen expressions.
MAX_EXPRESSIONS = 1000  # `when:` conditions and `${{ }}` templates
MAX_EXPRESSION_TEXT = 32 * 1024  # characters of the strings holding them


def _expression_budget(documents: list[Document]) -> SpecError | None:
    """An error at the string that takes a file past the expression budget, if one does."""
    count = chars = 0
    for doc in documents:
        stack: list[tuple[list[str | int], Any]] = [([], doc.data)]
        while stack:
            parts, value = stack.pop()
            if isinstance(value, dict):
                stack.extend(([*parts, k], v) for k, v in reversed(value.items()))
            elif isinstance(value, list):
                stack.extend(([*parts, i], v) for i, v in reversed(list(enumerate(value))))
            elif isinstance(value, str) and ("${{" in value or parts[-1:] == ["when"]):
                count += max(value.count("${{"), 1)
                chars += len(value)
                if count > MAX_EXPRESSIONS or chars > MAX_EXPRESSION_TEXT:
                    return doc.error(
                        parts,
                        f"this file holds more than {MAX_EXPRESSIONS} expressions or"
                        f" {MAX_EXPRESSION_TEXT} characters of them, the most one file may"
                        " hold (so that validating it stays quick): split it into several files",
                    )
    return None


def _load(source: SourceFile) -> tuple[list[Document], list[SpecError]]:
    loaded = load_bytes(source.path, source.data)
    errors = list(loaded.errors)
    documents = loaded.documents
    over = _expression_budget(documents)
    if over is not None:
        return [], [*errors, over]
    if source.role == "agent" and len(documents) > 1:
        errors.append(documents[1].error([], "agent.yaml holds exactly one Agent document"))
        documents = documents[:1]
    for doc in documents:
        errors.extend(validate_document(doc))
    return documents, errors


def _unexpected(path: str, exc: Exception) -> str:
    return (
        f"the validator failed on this ({type(exc).__name__}: {exc}); it is a bug in runner:"
        f" please report it with {path}"
    )


def _guarded_load(source: SourceFile) -> tuple[list[Document], list[SpecError]]:
    """`_load`, with any error it did not expect reported on the file, never raised."""
    try:
        return _load(source)
    except Exception as exc:  # RecursionError, MemoryError, a bug: a clear error all the same
        return [], [
            SpecError(path=source.path, line=1, column=1, message=_unexpected(source.path, exc))
        ]


Key = tuple[str, str]  # (kind, name) of a stored document


@dataclass(eq=False)
class _Doc:
    """One document of a compiled file and what it adds to the whole, so that it can be taken
    back when the file changes or another document takes its name."""

    doc: Document
    rank: tuple[Any, int]  # (file's rank, document index): the first to define a name keeps it
    role: Role
    agent_dir: str | None
    kind: Any
    name: str | None
    defines: Key | None  # takes part in "names are unique per kind"
    failed: bool  # its file's own checks (YAML, schema) found errors in it
    first: _Doc | None = None  # the document that defines this name first, when not this one
    adds: Literal["agent", "broken", "workflow"] | None = None
    refs: frozenset[str] = frozenset()  # the agents its steps name (workflows)


@dataclass(eq=False)
class _File:
    key: str | None
    docs: list[_Doc]


def _rank(d: _Doc) -> tuple[Any, int]:
    return d.rank


class Compiler:
    """Compiles a set of files and keeps what it found, so that a change costs what it touches.

    A changed file is parsed and schema-checked again; the rules across documents run again only
    where the change can alter their outcome: the names the changed documents define (which one
    is first, who is a duplicate), the agents they define, and the workflows that name one of
    those agents (or name an unknown agent, whose suggestion reads every name). The outcome is
    always the outcome for the whole set: `update` returns every error of every file.

    Files are keyed by path and ranked by path (as `repo_layout` lists them). The stored form of
    the valid documents is tracked against a baseline (`mark`), so that a new revision can be
    written as its changes against the revision applied last (`delta`).
    """

    def __init__(
        self,
        builtins: Mapping[str, Agent],
        images: ImagePolicy | None = None,
        policy: AgentPolicy | None = None,
    ) -> None:
        self._builtins = builtins
        self._images = images
        self._policy = policy
        self._files: dict[Any, _File] = {}
        self._defs: dict[Key, list[_Doc]] = {}
        self._agents: dict[str, Agent] = dict(builtins)
        self._broken: set[str] = set()
        self._workflows: dict[str, Workflow] = {}
        self._stored: dict[Key, StoredDocument] = {}
        self._users: dict[str, set[_Doc]] = {}  # agent name -> workflows whose steps name it
        self._guessing: set[_Doc] = set()  # workflows naming an unknown agent
        self._errors: dict[object, list[SpecError]] = {}  # per file and per document
        self._validators: dict[str, Any] = {}  # compiled `inputs` schema of each agent
        self._baseline: dict[Key, StoredDocument | None] = {}

    def knows(self, path: str, key: str | None) -> bool:
        """Whether the file at `path` with content id `key` is the one compiled."""
        known = self._files.get(path)
        return key is not None and known is not None and known.key == key

    def sync(self, files: Iterable[SourceFile]) -> Result:
        """Make the set exactly `files` (a full listing): known files are not compiled again."""
        listed = list(files)
        seen = {f.path for f in listed}
        changed = [f for f in listed if not self.knows(f.path, f.key)]
        return self.update(changed, [p for p in self._files if p not in seen])

    def update(self, changed: Iterable[SourceFile], removed: Iterable[str] = ()) -> Result:
        """Add or replace the `changed` files and drop the `removed` paths; the whole outcome."""
        self._change([(f.path, f.path, f) for f in changed], list(removed))
        return self.result()

    def result(self) -> Result:
        errors = sorted(e for found in self._errors.values() for e in found)
        bundle = Bundle(workflows=dict(self._workflows), agents=dict(self._agents))
        return Result(bundle=bundle, errors=errors, documents=self.documents())

    def documents(self) -> list[StoredDocument]:
        """The stored form of every valid document."""
        return list(self._stored.values())

    def delta(self) -> tuple[list[StoredDocument], list[Key]]:
        """(documents added or changed, (kind, name) of those removed) since the last `mark`."""
        changed: list[StoredDocument] = []
        removed: list[Key] = []
        for key, old in self._baseline.items():
            new = self._stored.get(key)
            if new is None:
                if old is not None:
                    removed.append(key)
            elif old is None or (new.digest, new.path) != (old.digest, old.path):
                changed.append(new)
        return changed, removed

    def mark(self) -> None:
        """Make the current documents the baseline of `delta` (they were stored)."""
        self._baseline.clear()

    # -- the change ------------------------------------------------------------------------------
    def _change(self, added: list[tuple[Any, Any, SourceFile]], removed: list[Any]) -> None:
        before: dict[str, tuple[Agent | None, bool]] = {}  # agents' state before the change
        touched: set[Key] = set()
        fresh: list[_Doc] = []
        for fid in [*removed, *(fid for fid, _, _ in added)]:
            gone = self._files.pop(fid, None)
            if gone is None:
                continue
            self._errors.pop(gone, None)
            for d in gone.docs:
                self._retract(d, before)
                if d.defines is not None:
                    holders = self._defs[d.defines]
                    holders.remove(d)
                    if not holders:
                        del self._defs[d.defines]
                    touched.add(d.defines)
        for fid, rank, source in added:
            documents, problems = _guarded_load(source)
            failed = {e.document for e in problems}
            file = _File(key=source.key, docs=[])
            self._files[fid] = file
            if problems:
                self._errors[file] = problems
            for doc in documents:
                d = self._doc(doc, rank, source, doc.index in failed)
                file.docs.append(d)
                fresh.append(d)
                if d.defines is not None:
                    bisect.insort(self._defs.setdefault(d.defines, []), d, key=_rank)
                    touched.add(d.defines)
        dirty = set(fresh)
        for key in touched:  # which document defines each name now
            holders = self._defs.get(key, [])
            for d in holders:
                first = None if d is holders[0] else holders[0]
                if d not in dirty and d.first is not first:
                    self._retract(d, before)
                    dirty.add(d)
                    fresh.append(d)
                d.first = first
        fresh.sort(key=_rank)
        for d in fresh:
            if d.kind == "Agent":
                self._guarded(d, self._check_agent, before)
        changed = {name for name, was in before.items() if was != self._agent_state(name)}
        again: set[_Doc] = set()
        for name in changed:
            self._validators.pop(name, None)
            again |= self._users.get(name, set())
        if changed:
            again |= self._guessing
        again -= dirty
        for d in again:
            self._retract(d, before)
        broken = frozenset(self._broken)
        for d in sorted([*(d for d in fresh if d.kind == "Workflow"), *again], key=_rank):
            self._guarded(d, self._check_workflow, broken)

    def _doc(self, doc: Document, rank: Any, source: SourceFile, failed: bool) -> _Doc:
        kind, raw = _get(doc.data, "kind"), _get(doc.data, "metadata", "name")
        name = raw if isinstance(raw, str) else None
        builtin = kind == "Agent" and name in self._builtins
        return _Doc(
            doc=doc,
            rank=(rank, doc.index),
            role=source.role,
            agent_dir=source.agent_dir,
            kind=kind,
            name=name,
            defines=(kind, name)
            if name is not None and kind in ("Workflow", "Agent") and not builtin
            else None,
            failed=failed,
        )

    def _agent_state(self, name: str) -> tuple[Agent | None, bool]:
        return self._agents.get(name), name in self._broken

    def _store(self, key: Key, value: StoredDocument | None) -> None:
        if key not in self._baseline:
            self._baseline[key] = self._stored.get(key)
        if value is None:
            self._stored.pop(key, None)
        else:
            self._stored[key] = value

    def _retract(self, d: _Doc, before: dict[str, tuple[Agent | None, bool]]) -> None:
        """Take back what `d` added: its errors, its agent or workflow, its stored form."""
        self._errors.pop(d, None)
        if d.adds is not None and d.name is not None:
            if d.adds in ("agent", "broken"):
                before.setdefault(d.name, self._agent_state(d.name))
            if d.adds == "agent":
                del self._agents[d.name]
                self._store(("Agent", d.name), None)
            elif d.adds == "broken":
                self._broken.discard(d.name)
            else:
                del self._workflows[d.name]
                self._store(("Workflow", d.name), None)
        for name in d.refs:
            users = self._users.get(name)
            if users is not None:
                users.discard(d)
                if not users:
                    del self._users[name]
        self._guessing.discard(d)
        d.adds, d.refs = None, frozenset()

    def _clash(self, d: _Doc) -> bool:
        """Report a document whose name is taken (by an earlier document or a built-in)."""
        if d.first is not None:
            first = d.first.doc
            line = first.position(["metadata", "name"])[0]
            self._errors[d] = [
                d.doc.error(
                    ["metadata", "name"],
                    f"{str(d.kind).lower()} {d.name!r} is already defined in {first.path}:{line}; "
                    f"names are unique per kind",
                )
            ]
            return True
        if d.kind == "Agent" and d.name in self._builtins:
            self._errors[d] = [
                d.doc.error(
                    ["metadata", "name"],
                    f"{d.name!r} is a built-in agent; give this agent another name",
                )
            ]
            return True
        return False

    def _guarded(self, d: _Doc, check: Any, *args: Any) -> None:
        """Run a document's check; an error nothing expected is that document's error."""
        try:
            check(d, *args)
        except Exception as exc:
            self._errors[d] = [d.doc.error([], _unexpected(d.doc.path, exc))]

    def _check_agent(self, d: _Doc, before: dict[str, tuple[Agent | None, bool]]) -> None:
        if self._clash(d):
            return
        agent, problems = _agent(d.doc, d.role, d.agent_dir, self._images, self._policy)
        if problems:
            self._errors[d] = problems
        if d.name is None:
            return
        before.setdefault(d.name, self._agent_state(d.name))
        if agent is not None and not problems and not d.failed:
            self._agents[d.name] = agent
            self._store(("Agent", d.name), _stored(d.doc, "Agent", d.name))
            d.adds = "agent"
        else:
            self._broken.add(d.name)
            d.adds = "broken"

    def _check_workflow(self, d: _Doc, broken: frozenset[str]) -> None:
        if self._clash(d):
            return
        errors = []
        if d.role == "agent":
            errors.append(d.doc.error(["kind"], "a Workflow belongs under workflows/"))
        errors += _WorkflowChecker(
            d.doc, self._agents, broken, self._validators, self._policy
        ).run()
        if errors:
            self._errors[d] = errors
        elif not d.failed:
            workflow = _build_workflow(d.doc, self._agents)
            if workflow.name not in self._workflows:
                self._workflows[workflow.name] = workflow
                self._store(("Workflow", workflow.name), _stored(d.doc, "Workflow", workflow.name))
                d.adds = "workflow"
        steps = _get(d.doc.data, "spec", "steps")
        d.refs = frozenset(
            s["agent"]
            for s in (steps if isinstance(steps, list) else ())
            if isinstance(s, dict) and isinstance(s.get("agent"), str)
        )
        for name in d.refs:
            self._users.setdefault(name, set()).add(d)
        if any(name not in self._agents and name not in broken for name in d.refs):
            self._guessing.add(d)


def compile_files(
    files: Iterable[SourceFile],
    *,
    builtins: Mapping[str, Agent],
    images: ImagePolicy | None = None,
    policy: AgentPolicy | None = None,
) -> Result:
    """Validate and compile a set of files; the bundle holds what compiled, `errors` the rest.
    `images` says which agent images are allowed (any valid reference without it); `policy`
    which secrets and network repo-local agents may ask for (anything without it).

    Of two documents with one name, the one earlier in `files` defines it."""
    compiler = Compiler(builtins, images, policy)
    compiler._change([(i, i, f) for i, f in enumerate(files)], [])
    return compiler.result()


def _stored(doc: Document, kind: Literal["Workflow", "Agent"], name: str) -> StoredDocument:
    return StoredDocument(
        kind=kind, name=name, digest=digest(doc.data), content=doc.data, path=doc.path
    )
