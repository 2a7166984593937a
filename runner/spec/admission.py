"""What the runner's configuration admits of a revision's repo-local agents: the images they
run in, the secrets and network they ask for, the limits they set themselves; and what a
workflow's steps may ask for with them. Each problem is a `SpecError` at the line asking.

The checks need the configuration's policies (`ImagePolicy`, `AgentPolicy`), so they run only
where one is given: the reconciler, the pull-request check, `runner run`, and `runner validate
--config`."""

from __future__ import annotations

from typing import Any

from runner.errors import SpecError
from runner.executors.images import ImagePolicy, image_problems
from runner.model import Agent
from runner.secrets.grants import AgentPolicy
from runner.spec.quantity import memory_bytes
from runner.spec.yaml import Document


def agent_problems(
    doc: Document,
    agent: Agent,
    spec: dict[str, Any],
    images: ImagePolicy | None,
    policy: AgentPolicy | None,
) -> list[SpecError]:
    """A repo-local agent's image, secrets, network and resource requests against the
    configuration (the image is checked as a valid reference even without a policy)."""
    errors = []
    if isinstance(spec.get("image"), str):  # a valid reference, from an allowed registry
        errors += [doc.error(["spec", "image"], p) for p in image_problems(spec["image"], images)]
    if policy is None:
        return errors
    requested = spec.get("secrets")
    for i, secret in enumerate(requested if isinstance(requested, list) else []):
        problem = policy.request_problem(agent.name, secret) if isinstance(secret, str) else None
        if problem:
            errors.append(doc.error(["spec", "secrets", i], problem))
    problem = policy.network_problem(agent.name) if agent.network else None
    if problem:
        errors.append(doc.error(["spec", "network"], problem))
    try:
        memory = memory_bytes(agent.memory) if agent.memory else None
    except (ValueError, KeyError):  # the schema reports the malformed size
        memory = None
    for name, why in policy.limit_problems(agent.pids, memory, agent.timeout):
        at: list[str | int] = ["spec", "timeout"] if name == "timeout" else []
        errors.append(doc.error(at or ["spec", "resources", name], why))
    return errors


def step_problems(
    doc: Document,
    parts: list[str | int],
    workflow: str,
    agent: Agent,
    timeout: float | None,
    policy: AgentPolicy,
) -> list[SpecError]:
    """A step of `workflow` (at `parts`) running repo-local `agent`: its secrets must be granted
    in this workflow, and its own timeout within the ceiling."""
    errors = []
    for secret in agent.secrets:
        problem = policy.step_problem(agent.name, workflow, secret)
        if problem:
            errors.append(
                doc.error([*parts, "agent"], f"step runs agent {agent.name!r}: {problem}")
            )
    for _, why in policy.limit_problems(None, None, timeout):
        errors.append(doc.error([*parts, "timeout"], why))
    return errors
