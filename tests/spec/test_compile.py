"""What a valid repo compiles to: the records the engine and scheduler will run from."""

from __future__ import annotations

from pathlib import Path

from runner.model import ApprovalPolicy, Workflow
from runner.spec.compile import SourceFile, compile_files
from runner.spec.repo import builtin_agents, load_paths

EXAMPLE = Path(__file__).parents[2] / "workflows-repo-example"

GATED = b"""\
apiVersion: runner/v1
kind: Workflow
metadata: {name: gated}
spec:
  triggers: [{manual: {}}]
  steps:
    - id: scan
      agent: security-scanner
    - id: fix
      agent: patcher
      needs: scan
      when: "${{ steps.scan.outputs.summary.high > 0 }}"
      with: {findings: "${{ steps.scan.outputs.findings }}", push: false}
"""


def compile_one(data: bytes) -> Workflow:
    result = compile_files([SourceFile(path="w.yaml", data=data)], builtins=builtin_agents())
    assert result.errors == []
    return result.bundle.workflows["gated"]


def test_example_compiles_to_steps_with_policies() -> None:
    workflow = load_paths([str(EXAMPLE)]).bundle.workflows["pr-security-review"]
    steps = {s.id: s for s in workflow.steps}
    assert steps["patch"].needs == ("compliance", "review")
    assert steps["patch"].approval == ApprovalPolicy(
        required=1,
        approvers=("@acme/security", "alice"),
        allow_author=False,
        timeout=86400.0,
        on_timeout="reject",
    )
    assert steps["patch"].retry.max == 2
    assert steps["patch"].retry.backoff == 10.0
    assert steps["patch"].timeout == 600.0
    assert steps["notify"].run_if == "always"
    assert steps["scan"].approval is None
    assert workflow.timeout == 1800.0
    assert workflow.concurrency_policy == "cancel-running"
    assert [t.kind for t in workflow.triggers] == ["pull_request", "push", "manual"]


def test_risky_agent_implies_an_approval_gate_and_shorthands_normalise() -> None:
    workflow = compile_one(GATED)
    fix = workflow.steps[1]
    assert fix.approval == ApprovalPolicy()
    assert fix.needs == ("scan",)
    assert fix.when == " steps.scan.outputs.summary.high > 0 "
    assert fix.with_ == {"findings": "${{ steps.scan.outputs.findings }}", "push": False}


def test_digest_ignores_formatting_and_comments() -> None:
    reformatted = GATED.replace(b"spec:\n", b"# a comment\nspec:\n").replace(
        b"triggers: [{manual: {}}]", b"triggers:\n    - manual: {}"
    )
    assert compile_one(reformatted).digest == compile_one(GATED).digest
    changed = GATED.replace(b"push: false", b"push: true")
    assert compile_one(changed).digest != compile_one(GATED).digest


def test_builtin_agents_are_marked_and_repo_agents_are_not() -> None:
    agents = load_paths([str(EXAMPLE)]).bundle.agents
    assert agents["patcher"].builtin
    assert agents["patcher"].risk == "approval_required"
    assert not agents["spdx-headers"].builtin
    assert agents["spdx-headers"].directory.endswith("agents/spdx-headers")
    assert agents["spdx-headers"].command == ("python", "main.py")
