"""What a plan says an agent change grants: each widening and narrowing of secrets, network and
risk, new and removed agents, steps that reach further, and built-ins left out. Table-driven on
hand-built bundles (the compiler is tested elsewhere)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest

from runner.model import Agent, ApprovalPolicy, Bundle, Step, Trigger, Workflow
from runner.spec.plan import AgentChange, Reach, StepReach, make_plan
from runner.spec.plan_text import (
    grant_lines,
    markdown_code,
    narrowing_lines,
    reach_text,
    step_text,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def agent(name: str = "deployer", *, builtin: bool = False, **spec: Any) -> Agent:
    """An agent whose digest follows its spec, as the compiler's content digest does."""
    digest = hashlib.sha256(repr(sorted(spec.items())).encode()).hexdigest()
    source = f"/site/runner/agents/{name}/agent.yaml" if builtin else f"agents/{name}/agent.yaml"
    return Agent(
        name=name,
        command=("python", "main.py"),
        directory=source.rsplit("/", 1)[0],
        source=source,
        digest=digest,
        builtin=builtin,
        **spec,
    )


def bundle(*agents: Agent, workflows: tuple[Workflow, ...] = ()) -> Bundle:
    return Bundle(workflows={w.name: w for w in workflows}, agents={a.name: a for a in agents})


def workflow(*steps: Step, name: str = "deploy") -> Workflow:
    return Workflow(
        name=name,
        source=f"workflows/{name}.yaml",
        digest=hashlib.sha256(repr(steps).encode()).hexdigest(),
        triggers=(Trigger(kind="manual"),),
        steps=steps,
    )


GATED: dict[str, Any] = {"risk": "approval_required"}


def secret(name: str, *, widens: bool) -> Reach:
    return Reach(
        kind="secret", old=None if widens else name, new=name if widens else None, widens=widens
    )


AGENT_CASES = [
    # (case, old agent or None, new agent or None, action, widened, narrowed)
    (
        "secret asked for",
        agent(secrets=("A",), **GATED),
        agent(secrets=("A", "DEPLOY_TOKEN"), **GATED),
        "changed",
        (secret("DEPLOY_TOKEN", widens=True),),
        (),
    ),
    (
        "secret dropped",
        agent(secrets=("A", "B"), **GATED),
        agent(secrets=("B",), **GATED),
        "changed",
        (),
        (secret("A", widens=False),),
    ),
    (
        "network off to on",
        agent(**GATED),
        agent(network=True, **GATED),
        "changed",
        (Reach(kind="network", old="off", new="on", widens=True),),
        (),
    ),
    (
        "network removed",
        agent(network=True, **GATED),
        agent(**GATED),
        "changed",
        (),
        (Reach(kind="network", old="on", new="off", widens=False),),
    ),
    (
        "gate dropped",
        agent(**GATED),
        agent(risk="auto"),
        "changed",
        (Reach(kind="risk", old="approval_required", new="auto", widens=True),),
        (),
    ),
    (
        "risk raised",
        agent(),
        agent(**GATED),
        "changed",
        (),
        (Reach(kind="risk", old="auto", new="approval_required", widens=False),),
    ),
    (
        "new agent with everything",
        None,
        agent(secrets=("DEPLOY_TOKEN",), network=True),
        "added",
        (
            secret("DEPLOY_TOKEN", widens=True),
            Reach(kind="network", old=None, new="on", widens=True),
            Reach(kind="risk", old=None, new="auto", widens=True),
        ),
        (),
    ),
    ("new gated agent without reach", None, agent(**GATED), "added", (), ()),
    (
        "removed agent",
        agent(secrets=("DEPLOY_TOKEN",), network=True),
        None,
        "removed",
        (),
        (
            secret("DEPLOY_TOKEN", widens=False),
            Reach(kind="network", old="on", new=None, widens=False),
        ),
    ),
    (
        "changed without reach",
        agent(description="old", secrets=("A",)),
        agent(description="new", secrets=("A",)),
        "changed",
        (),
        (),
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "action", "widened", "narrowed"),
    [case[1:] for case in AGENT_CASES],
    ids=[case[0] for case in AGENT_CASES],
)
def test_agent_reach(
    old: Agent | None,
    new: Agent | None,
    action: str,
    widened: tuple[Reach, ...],
    narrowed: tuple[Reach, ...],
) -> None:
    plan = make_plan(bundle(*[new] if new else []), bundle(*[old] if old else []), now=NOW)
    (change,) = plan.agents
    assert (change.name, change.file, change.action) == (
        "deployer",
        "agents/deployer/agent.yaml",
        action,
    )
    assert (change.widened, change.narrowed) == (widened, narrowed)
    assert plan.agents_changed == (change,)
    assert plan.grants == ((change,) if widened else ())


def test_unchanged_and_builtin_agents_are_left_out() -> None:
    kept = agent("kept", secrets=("A",))
    old = bundle(kept, agent("notifier", builtin=True))
    # A runner upgrade may widen a built-in; that is not the merge's doing.
    new = bundle(kept, agent("notifier", builtin=True, network=True, secrets=("B",)))
    plan = make_plan(new, old, now=NOW)
    assert plan.agents == ()
    assert grant_lines(plan, markdown_code) == narrowing_lines(plan, markdown_code) == []


def step(agent: str, sid: str = "ship", approval: ApprovalPolicy | None = None) -> Step:
    return Step(id=sid, agent=agent, approval=approval)


NOTIFIER = agent("notifier", builtin=True, network=True, secrets=("SLACK_WEBHOOK_URL",))
REVIEWER = agent("code-reviewer", builtin=True)
DEPLOYER = agent(secrets=("DEPLOY_TOKEN",), network=True)
GATE = ApprovalPolicy()

STEP_CASES = [
    # (case, old bundle, new bundle, the agent entry expected to carry the step, its StepReach)
    (
        "new step runs a built-in with reach",
        bundle(REVIEWER, NOTIFIER),
        bundle(REVIEWER, NOTIFIER, workflows=(workflow(step("notifier")),)),
        ("notifier", "", True),
        StepReach(
            workflow="deploy", step="ship", was=None, secrets=("SLACK_WEBHOOK_URL",), network=True
        ),
    ),
    (
        "step switches to an agent with more reach",
        bundle(REVIEWER, NOTIFIER, DEPLOYER, workflows=(workflow(step("code-reviewer")),)),
        bundle(REVIEWER, NOTIFIER, DEPLOYER, workflows=(workflow(step("deployer")),)),
        ("deployer", "agents/deployer/agent.yaml", False),
        StepReach(
            workflow="deploy",
            step="ship",
            was="code-reviewer",
            secrets=("DEPLOY_TOKEN",),
            network=True,
        ),
    ),
    (
        "approval dropped from the step",
        bundle(REVIEWER, workflows=(workflow(step("code-reviewer", approval=GATE)),)),
        bundle(REVIEWER, workflows=(workflow(step("code-reviewer")),)),
        ("code-reviewer", "", True),
        StepReach(workflow="deploy", step="ship", was="code-reviewer", ungated=True),
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "entry", "reach"),
    [case[1:] for case in STEP_CASES],
    ids=[case[0] for case in STEP_CASES],
)
def test_steps_that_reach_further_show_under_their_agent(
    old: Bundle, new: Bundle, entry: tuple[str, str, bool], reach: StepReach
) -> None:
    plan = make_plan(new, old, now=NOW)
    (change,) = plan.grants
    assert (change.name, change.file, change.builtin) == entry
    assert change.steps == (reach,)
    assert plan.agents_changed == ()  # no agent file changed


def test_step_switching_to_less_reach_and_agent_widening_in_place_are_not_step_grants() -> None:
    less = make_plan(
        bundle(REVIEWER, DEPLOYER, workflows=(workflow(step("code-reviewer")),)),
        bundle(REVIEWER, DEPLOYER, workflows=(workflow(step("deployer")),)),
        now=NOW,
    )
    assert less.agents == ()
    # The agent's own new secret is its line; the step that keeps running it adds none.
    wider = agent(secrets=("DEPLOY_TOKEN", "EXTRA"), network=True)
    flow = (workflow(step("deployer")),)
    plan = make_plan(bundle(wider, workflows=flow), bundle(DEPLOYER, workflows=flow), now=NOW)
    (change,) = plan.agents
    assert change.widened == (secret("EXTRA", widens=True),)
    assert change.steps == ()


def test_dropping_an_agent_gate_lists_the_steps_that_stop_waiting() -> None:
    gated, auto = agent(**GATED), agent(risk="auto")
    old = bundle(gated, workflows=(workflow(step("deployer", approval=GATE)),))
    new = bundle(auto, workflows=(workflow(step("deployer")),))
    (change,) = make_plan(new, old, now=NOW).agents
    assert change.widened == (Reach(kind="risk", old="approval_required", new="auto", widens=True),)
    assert change.steps == (
        StepReach(workflow="deploy", step="ship", was="deployer", ungated=True),
    )


def test_wording_of_grants_and_narrowings() -> None:
    new = bundle(
        agent(secrets=("DEPLOY_TOKEN",), network=True),
        agent("tidy", **GATED),
        NOTIFIER,
        workflows=(workflow(step("notifier", "announce")),),
    )
    old = bundle(agent(**GATED), agent("tidy", secrets=("OLD",)), NOTIFIER)
    plan = make_plan(new, old, now=NOW)
    assert grant_lines(plan, markdown_code) == [
        "agent `deployer` (`agents/deployer/agent.yaml`): asks for secret `DEPLOY_TOKEN` (new)",
        "agent `deployer` (`agents/deployer/agent.yaml`): network access: off → on",
        "agent `deployer` (`agents/deployer/agent.yaml`): risk: approval_required → auto "
        "(its steps no longer wait for approval)",
        "agent `notifier` (built-in): new step `deploy/announce` runs it: "
        "secret `SLACK_WEBHOOK_URL`, network access",
    ]
    assert narrowing_lines(plan, str) == [
        "agent tidy (agents/tidy/agent.yaml): no longer asks for secret OLD",
        "agent tidy (agents/tidy/agent.yaml): risk: auto → approval_required "
        "(its steps now wait for approval)",
    ]
    new_agent = Reach(kind="risk", old=None, new="auto", widens=True)
    assert reach_text(new_agent, str).startswith("risk: auto (new agent;")
    switched = StepReach(workflow="w", step="s", was="a", network=True, ungated=True)
    assert step_text(switched, str) == (
        "step w/s now runs it (was a): network access, no longer waits for approval"
    )
    two = StepReach(workflow="w", step="s", was=None, secrets=("A", "B"))
    assert step_text(two, markdown_code) == "new step `w/s` runs it: secrets `A`, `B`"


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ("agents/x/agent.yaml", "`agents/x/agent.yaml`"),
        ("a`b", "``a`b``"),
        ("`x", "`` `x ``"),
        ("x\n- nothing widens", "`x?- nothing widens`"),  # no line of its own in the comment
    ],
)
def test_markdown_code_keeps_names_inside_one_code_span(text: str, rendered: str) -> None:
    assert markdown_code(text) == rendered


def test_agent_change_grants_only_when_something_widens() -> None:
    calm = AgentChange(name="x", file="f", action="changed", narrowed=(secret("A", widens=False),))
    assert not calm.grants


GATE_CASES = [
    # (case, old policy, new policy, the words expected)
    ("fewer approvals", ApprovalPolicy(required=2), ApprovalPolicy(required=1),
     ["approvals required: 2 → 1"]),
    ("anyone may approve", ApprovalPolicy(approvers=("alice",)), ApprovalPolicy(),
     ["approvers: the listed ones → anyone with write access"]),
    ("approvers added", ApprovalPolicy(approvers=("alice",)),
     ApprovalPolicy(approvers=("alice", "bob")), ["approvers added: bob"]),
    ("authors allowed", ApprovalPolicy(), ApprovalPolicy(allow_author=True),
     ["the change's authors may now approve it"]),
    ("approves itself", ApprovalPolicy(), ApprovalPolicy(timeout=1.0, on_timeout="approve"),
     ["approves itself after 1s (on_timeout: approve)"]),
    ("approves itself sooner", ApprovalPolicy(timeout=3600.0, on_timeout="approve"),
     ApprovalPolicy(timeout=60.0, on_timeout="approve"),
     ["approves itself after 1m (on_timeout: approve)"]),
    ("stricter is not shown", ApprovalPolicy(required=1), ApprovalPolicy(required=2), []),
    ("rejects on timeout", ApprovalPolicy(), ApprovalPolicy(timeout=60.0), []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "old", "new", "words"), GATE_CASES, ids=[c[0] for c in GATE_CASES]
)
def test_a_weaker_approval_gate_is_shown_as_a_grant(
    case: str, old: ApprovalPolicy, new: ApprovalPolicy, words: list[str]
) -> None:
    deployer = agent(**GATED)
    before = bundle(
        deployer, workflows=(workflow(Step(id="ship", agent="deployer", approval=old)),)
    )
    after = bundle(deployer, workflows=(workflow(Step(id="ship", agent="deployer", approval=new)),))
    plan = make_plan(after, before, now=NOW)
    steps = [s for a in plan.agents for s in a.steps]
    assert [w for s in steps for w in s.weakened] == words
    for line in grant_lines(plan, markdown_code):
        assert "step `deploy/ship`: its approval gate is weaker:" in line
