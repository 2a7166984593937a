"""From files to a validated `Bundle`: schema checks, then every rule across documents.

Every problem is collected, not just the first: the semantic rules run on every document, even
one with schema errors, and skip only the values that have the wrong shape (the schema has already
said so). Each error points at the node to fix.
"""

from __future__ import annotations

import difflib
import graphlib
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from runner.errors import SpecError
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
from runner.spec import expr as cel
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


@dataclass
class FileCache:
    """What compiling keyed files found, reused while their content (and, for workflows, the
    set of agents) is unchanged: the reconciler keys files by blob id, so a one-file commit
    costs one file's parsing and checking."""

    # (path, key) -> the file's documents and the errors found in it on its own
    files: dict[tuple[str, str], tuple[list[Document], list[SpecError]]] = field(
        default_factory=dict
    )
    # (path, key, document, agents fingerprint) -> (errors, compiled workflow, stored form)
    workflows: dict[
        tuple[str, str, int, str],
        tuple[list[SpecError], Workflow | None, StoredDocument | None],
    ] = field(default_factory=dict)

    def keep_only(self, current: set[tuple[str, str]]) -> None:
        """Forget files that are no longer in the tree."""
        for entry in [e for e in self.files if e not in current]:
            del self.files[entry]
        for wkey in [w for w in self.workflows if (w[0], w[1]) not in current]:
            del self.workflows[wkey]


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
    doc: Document, role: Role, agent_dir: str | None
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
        network=spec.get("network") is True,
        secrets=tuple(s for s in spec.get("secrets") or () if isinstance(s, str)),
    )
    return agent, errors


class _WorkflowChecker:
    """The rules of one workflow document that need more than its schema."""

    def __init__(
        self,
        doc: Document,
        agents: Mapping[str, Agent],
        broken_agents: frozenset[str],
        validators: dict[str, Any],
    ) -> None:
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
            self._step(i, step, self.upstream.get(step.get("id", ""), set()))
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


def _load(source: SourceFile) -> tuple[list[Document], list[SpecError]]:
    loaded = load_bytes(source.path, source.data)
    errors = list(loaded.errors)
    documents = loaded.documents
    if source.role == "agent" and len(documents) > 1:
        errors.append(documents[1].error([], "agent.yaml holds exactly one Agent document"))
        documents = documents[:1]
    for doc in documents:
        errors.extend(validate_document(doc))
    return documents, errors


def _documents(
    files: Iterable[SourceFile], errors: list[SpecError], cache: FileCache | None
) -> Iterator[tuple[SourceFile, Document]]:
    for source in files:
        entry = (source.path, source.key) if source.key else None
        if cache is not None and entry is not None and entry in cache.files:
            documents, problems = cache.files[entry]
        else:
            documents, problems = _load(source)
            if cache is not None and entry is not None:
                cache.files[entry] = (documents, problems)
        errors.extend(problems)
        for doc in documents:
            yield source, doc


def compile_files(
    files: Iterable[SourceFile], *, builtins: Mapping[str, Agent], cache: FileCache | None = None
) -> Result:
    """Validate and compile a set of files; the bundle holds what compiled, `errors` the rest.

    With a `cache`, files with a `key` seen before are not parsed or schema-checked again (the
    reconciler keys them by blob id); the rules across documents always run on all of them."""
    errors: list[SpecError] = []
    agents: dict[str, Agent] = dict(builtins)
    workflow_docs: list[tuple[SourceFile, Document]] = []
    broken_agents: set[str] = set()
    stored: list[StoredDocument] = []
    defined: dict[tuple[str, str], Document] = {}
    for source, doc in _documents(files, errors, cache):
        kind, name = _get(doc.data, "kind"), _get(doc.data, "metadata", "name")
        if isinstance(name, str) and kind in ("Workflow", "Agent"):
            if (kind, name) in defined:
                first = defined[(kind, name)]
                line = first.position(["metadata", "name"])[0]
                errors.append(
                    doc.error(
                        ["metadata", "name"],
                        f"{kind.lower()} {name!r} is already defined in {first.path}:{line}; "
                        f"names are unique per kind",
                    )
                )
                continue
            if kind == "Agent" and name in builtins:
                errors.append(
                    doc.error(
                        ["metadata", "name"],
                        f"{name!r} is a built-in agent; give this agent another name",
                    )
                )
                continue
            defined[(kind, name)] = doc
        if kind == "Agent":
            agent, problems = _agent(doc, source.role, source.agent_dir)
            errors.extend(problems)
            valid = not any(e.path == doc.path and e.document == doc.index for e in errors)
            if agent is not None and valid:
                agents[agent.name] = agent
                stored.append(_stored(doc, "Agent", agent.name))
            elif isinstance(name, str):
                broken_agents.add(name)
        elif kind == "Workflow":
            if source.role == "agent":
                errors.append(doc.error(["kind"], "a Workflow belongs under workflows/"))
            workflow_docs.append((source, doc))
    workflows: dict[str, Workflow] = {}
    validators: dict[str, Any] = {}  # compiled `inputs` schema of each agent, shared
    broken = frozenset(broken_agents)
    fingerprint = _agents_fingerprint(agents, broken)
    schema_failed = {(e.path, e.document) for e in errors}
    for source, doc in workflow_docs:
        wkey = (source.path, source.key, doc.index, fingerprint) if source.key else None
        if cache is not None and wkey is not None and wkey in cache.workflows:
            problems, workflow, as_stored = cache.workflows[wkey]
        else:
            problems = _WorkflowChecker(doc, agents, broken, validators).run()
            ok = not problems and (doc.path, doc.index) not in schema_failed
            workflow = _build_workflow(doc, agents) if ok else None
            as_stored = _stored(doc, "Workflow", workflow.name) if workflow else None
            if cache is not None and wkey is not None:
                cache.workflows[wkey] = (problems, workflow, as_stored)
        errors.extend(problems)
        if workflow is not None and as_stored is not None:
            workflows.setdefault(workflow.name, workflow)
            stored.append(as_stored)
    return Result(
        bundle=Bundle(workflows=workflows, agents=agents), errors=sorted(errors), documents=stored
    )


def _agents_fingerprint(agents: Mapping[str, Agent], broken: frozenset[str]) -> str:
    text = (
        "|".join(f"{n}={a.digest}" for n, a in sorted(agents.items()))
        + "|"
        + ",".join(sorted(broken))
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _stored(doc: Document, kind: Literal["Workflow", "Agent"], name: str) -> StoredDocument:
    return StoredDocument(
        kind=kind, name=name, digest=digest(doc.data), content=doc.data, path=doc.path
    )
