"""The incremental compiler: after any sequence of changes, the same outcome as compiling the
whole set from scratch (every error, the bundle, the stored documents), and a delta that turns
the documents stored last into the current ones."""

from __future__ import annotations

import hashlib
import random

import pytest

from runner.model import StoredDocument
from runner.spec.compile import Compiler, Result, SourceFile, compile_files
from runner.spec.repo import builtin_agents, repo_layout


def agent(name: str, *, level: str = "string", timeout: str = "1m", extra: str = "") -> str:
    return f"""\
apiVersion: runner/v1
kind: Agent
metadata: {{name: {name}}}
spec:
  command: [python, main.py]
  timeout: {timeout}
  inputs:
    type: object
    additionalProperties: false
    properties: {{level: {{type: {level}}}}}
{extra}"""


def workflow(name: str, agent: str = "security-scanner", with_: str = "{}") -> str:
    return f"""\
apiVersion: runner/v1
kind: Workflow
metadata: {{name: {name}}}
spec:
  triggers: [{{manual: {{}}}}]
  steps:
    - {{id: scan, agent: security-scanner}}
    - {{id: check, agent: {agent}, needs: [scan], with: {with_}}}
"""


WORKFLOW_TEXTS = [
    workflow("alpha"),
    workflow("alpha", "lint", "{level: high}"),
    workflow("beta", "lint", "{level: high}"),
    workflow("beta", "fmt"),
    workflow("gamma", "lnt"),  # unknown agent, suggests lint while lint exists
    workflow("gamma", "fmt", "{level: 3}"),
    workflow("delta", "security-scanner", "{nope: 1}"),
    workflow("alpha") + "---\n" + workflow("beta", "fmt"),  # two documents
    "apiVersion: runner/v1\nkind: Workflow\nmetadata: {name: Bad}\n",  # schema errors
    "kind: [unclosed\n",  # not YAML
    agent("lint"),  # an Agent under workflows/
]
AGENT_TEXTS = {
    "lint": [agent("lint"), agent("lint", level="integer"), agent("lint", timeout="0s")],
    "fmt": [agent("fmt"), agent("fmt", level="integer"), agent("lint")],  # last: wrong folder
    "security-scanner": [agent("security-scanner")],  # shadows a built-in
}
PATHS = [f"workflows/w{i}.yaml" for i in range(6)] + [
    f"agents/{name}/agent.yaml" for name in AGENT_TEXTS
]


def source_files(tree: dict[str, str]) -> list[SourceFile]:
    return [
        SourceFile(
            path=rel,
            data=tree[rel].encode(),
            role="workflows" if role == "workflows" else "agent",
            agent_dir=agent_dir,
            key=hashlib.sha1(tree[rel].encode()).hexdigest(),
        )
        for rel, role, agent_dir in repo_layout(tree)
    ]


def outcome(result: Result) -> tuple[object, ...]:
    return (
        [str(e) for e in result.errors],
        result.bundle.workflows,
        result.bundle.agents,
        sorted((d.kind, d.name, d.digest, d.path) for d in result.documents),
    )


def stored(result: Result) -> dict[tuple[str, str], StoredDocument]:
    return {(d.kind, d.name): d for d in result.documents}


def random_text(rng: random.Random, path: str) -> str:
    if path.startswith("agents/"):
        name = path.split("/")[1]
        return rng.choice(AGENT_TEXTS[name] + [workflow("alpha")])  # or a Workflow there
    return rng.choice(WORKFLOW_TEXTS)


@pytest.mark.parametrize("seed", range(12))
def test_any_sequence_of_changes_matches_a_full_compile(seed: int) -> None:
    rng = random.Random(seed)
    builtins = builtin_agents()
    tree: dict[str, str] = {}
    compiler = Compiler(builtins)
    mirror: dict[tuple[str, str], StoredDocument] = {}  # what a store would hold
    for _ in range(40):
        changed, removed = [], []
        for path in rng.sample(PATHS, rng.randint(1, 3)):
            if path in tree and rng.random() < 0.3:
                del tree[path]
                removed.append(path)
            else:
                tree[path] = random_text(rng, path)
                changed.append(path)
        files = {f.path: f for f in source_files(tree)}
        result = compiler.update([files[p] for p in changed], removed)
        full = compile_files(source_files(tree), builtins=builtins)
        assert outcome(result) == outcome(full)
        if rng.random() < 0.6:  # "applied": the delta brings the stored set up to date
            puts, gone = compiler.delta()
            for key in gone:
                del mirror[key]
            mirror.update({(d.kind, d.name): d for d in puts})
            compiler.mark()
            assert mirror == stored(full)


def test_sync_compiles_only_files_whose_key_changed() -> None:
    tree = {f"workflows/w{i}.yaml": workflow(f"w{i}") for i in range(5)}
    compiler = Compiler(builtin_agents())
    compiler.sync(source_files(tree))
    tree["workflows/w2.yaml"] = workflow("w2", "fmt")
    del tree["workflows/w4.yaml"]
    listed = source_files(tree)
    assert [f.path for f in listed if not compiler.knows(f.path, f.key)] == ["workflows/w2.yaml"]
    result = compiler.sync(listed)
    assert outcome(result) == outcome(compile_files(listed, builtins=builtin_agents()))
    assert "unknown agent 'fmt'" in str(result.errors[0])
    assert sorted(result.bundle.workflows) == ["w0", "w1", "w3"]


def test_a_new_file_taking_an_unchanged_files_name_is_refused() -> None:
    compiler = Compiler(builtin_agents())
    compiler.update(source_files({"workflows/b.yaml": workflow("build")}))
    result = compiler.update(source_files({"workflows/a.yaml": workflow("build")}))
    assert [str(e) for e in result.errors] == [
        "workflows/b.yaml:3:18: workflow 'build' is already defined in workflows/a.yaml:3; "
        "names are unique per kind [/metadata/name]"
    ]
    result = compiler.update([], ["workflows/a.yaml"])  # taken back: b defines it again
    assert result.errors == []
    assert result.bundle.workflows["build"].source == "workflows/b.yaml"


def test_removing_an_agent_an_unchanged_workflow_uses_is_refused() -> None:
    compiler = Compiler(builtin_agents())
    tree = {"agents/lint/agent.yaml": agent("lint"), "workflows/w.yaml": workflow("w", "lint")}
    assert compiler.update(source_files(tree)).errors == []
    result = compiler.update([], ["agents/lint/agent.yaml"])
    assert [e.message for e in result.errors] == [
        "unknown agent 'lint'; an agent is built in or lives in agents/<name>/agent.yaml"
    ]
    assert "w" not in result.bundle.workflows


def test_changing_an_agents_inputs_checks_the_unchanged_workflows_again() -> None:
    compiler = Compiler(builtin_agents())
    tree = {
        "agents/lint/agent.yaml": agent("lint"),
        "workflows/w.yaml": workflow("w", "lint", "{level: high}"),
        "workflows/x.yaml": workflow("x"),
    }
    assert compiler.update(source_files(tree)).errors == []
    compiler.mark()
    tree["agents/lint/agent.yaml"] = agent("lint", level="integer")
    result = compiler.update(
        source_files({"agents/lint/agent.yaml": tree["agents/lint/agent.yaml"]})
    )
    assert [(e.path, e.message) for e in result.errors] == [
        ("workflows/w.yaml", "agent 'lint': expected integer, got string")
    ]
    changed, removed = compiler.delta()
    assert ([d.name for d in changed], removed) == (["lint"], [("Workflow", "w")])
