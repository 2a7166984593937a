"""The words for what a plan grants, shared by the PR comment (Markdown) and `runner plan`
(terminal), so that a reviewer reads the same sentence in both places.

Each function takes `code`, which renders a name or path as code in the target format: names
and paths come from the pull request under review, so the Markdown form must keep them from
being read as formatting (a crafted path must never pass for a calm line of the comment).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from runner.spec.plan import AgentChange, Plan, Reach, StepReach

Code = Callable[[str], str]

GRANTS_TITLE = "What this merge grants"
NARROWINGS_TITLE = "Reach reduced"
NOTHING_GRANTED = "nothing widens: no new secret, network access or step without approval"


def printable(text: str) -> str:
    """`text` with control characters (newlines, terminal escapes) shown as '?'."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def markdown_code(text: str) -> str:
    """`text` as one Markdown code span, whatever backticks or line breaks it holds."""
    clean = printable(text)
    fence = "`" * (max((len(run) for run in re.findall("`+", clean)), default=0) + 1)
    pad = " " if clean.startswith("`") or clean.endswith("`") else ""
    return f"{fence}{pad}{clean}{pad}{fence}"


def reach_text(reach: Reach, code: Code) -> str:
    """One change of an agent's reach, e.g. "asks for secret `DEPLOY_TOKEN` (new)"."""
    if reach.kind == "secret":
        if reach.widens:
            return f"asks for secret {code(reach.new or '')} (new)"
        return f"no longer asks for secret {code(reach.old or '')}"
    if reach.kind == "network":
        if reach.old is None:
            return "network access: on (new agent)"
        return f"network access: {reach.old} → {reach.new or 'off (agent removed)'}"
    if reach.widens and reach.old is None:
        return f"risk: {reach.new} (new agent; its steps run without waiting for approval)"
    if reach.widens:
        return f"risk: {reach.old} → {reach.new} (its steps no longer wait for approval)"
    return f"risk: {reach.old} → {reach.new} (its steps now wait for approval)"


def step_text(step: StepReach, code: Code) -> str:
    """A step that reaches further, e.g. "new step `deploy/ship` runs it: network access"."""
    ref = code(f"{step.workflow}/{step.step}")
    if step.was is None:
        head = f"new step {ref} runs it"
    elif step.secrets or step.network:
        head = f"step {ref} now runs it (was {code(step.was)})"
    else:
        head = f"step {ref}"
    named = ", ".join(code(s) for s in step.secrets)
    details = [f"secret{'s' if len(step.secrets) > 1 else ''} {named}"] if step.secrets else []
    details += ["network access"] if step.network else []
    details += ["no longer waits for approval"] if step.ungated else []
    details += [f"its approval gate is weaker: {w}" for w in step.weakened]
    return f"{head}: {', '.join(details)}"


def agent_label(agent: AgentChange, code: Code) -> str:
    where = "built-in" if agent.builtin else code(agent.file)
    return f"agent {code(agent.name)} ({where})"


def program_text(agent: AgentChange, code: Code) -> str:
    """An agent's new code that holds secrets or the network, e.g. "its program changed, and
    it receives secret `DEPLOY_TOKEN`, network access"."""
    held = (
        [
            f"secret{'s' if len(agent.holds_secrets) > 1 else ''} "
            + ", ".join(code(s) for s in agent.holds_secrets)
        ]
        if agent.holds_secrets
        else []
    )
    held += ["network access"] if agent.holds_network else []
    return f"its program changed, and it receives {', '.join(held)}: read the new code"


def grant_lines(plan: Plan, code: Code) -> list[str]:
    """One line per widening, agent by agent; empty when the plan grants nothing new."""
    return [
        f"{agent_label(a, code)}: {text}"
        for a in plan.grants
        for text in [reach_text(r, code) for r in a.widened]
        + [step_text(s, code) for s in a.steps]
        + ([program_text(a, code)] if a.new_code_holds else [])
    ]


def narrowing_lines(plan: Plan, code: Code) -> list[str]:
    """One line per narrowing (a secret dropped, network removed, risk raised)."""
    return [
        f"{agent_label(a, code)}: {reach_text(r, code)}"
        for a in plan.narrowings
        for r in a.narrowed
    ]


def agent_file_line(agent: AgentChange, code: Code) -> str:
    """A changed agent file, e.g. "`agents/deployer/agent.yaml`: agent `deployer` added", or
    its folder when only its program changed."""
    if agent.action == "unchanged":
        files = ", ".join(code(f) for f in agent.program_files) or code(
            agent.file.rsplit("/", 1)[0] + "/"
        )
        return f"{files}: program of agent {code(agent.name)} changed"
    what = f"{agent.action}, and its program" if agent.program else agent.action
    return f"{code(agent.file)}: agent {code(agent.name)} {what}"
