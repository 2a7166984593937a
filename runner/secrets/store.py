"""The values of granted secrets, read when a step is about to run (so a rotated file or
variable takes effect at the next step), and never one of the runner's own credentials."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runner.model import Agent
from runner.secrets.grants import AgentPolicy, Grant
from runner.secrets.mask import MIN_LENGTH

log = logging.getLogger(__name__)


class SecretUnavailable(Exception):
    """A granted secret has no usable value; the message says what to set."""


@dataclass(frozen=True, kw_only=True)
class Granted:
    """What a step gets: the values it may have (by name), notes for its log (optional secrets
    of built-in agents that are not granted), and problems that keep it from running."""

    values: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


class SecretStore:
    """Reads granted secrets. `reserved` are the runner's own credentials (forge tokens and
    webhook secrets, API tokens, git credentials): a grant whose value is one of them is refused,
    and every step's log masks them along with every granted value."""

    def __init__(
        self,
        policy: AgentPolicy,
        reserved: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.policy = policy
        self.reserved = frozenset(v for v in reserved if v)
        self.environ = os.environ if environ is None else environ

    def value(self, grant: Grant) -> str:
        """The value of `grant`, or `SecretUnavailable` saying why not."""
        if grant.env is not None:
            if not self.environ.get(grant.env):
                raise SecretUnavailable(
                    f"secret {grant.name} ({grant.where}) has no value: set variable {grant.env}"
                )
            value = self.environ[grant.env]
        else:
            assert grant.file is not None
            try:
                value = Path(grant.file).read_text(encoding="utf-8").removesuffix("\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise SecretUnavailable(
                    f"secret {grant.name} ({grant.where}) cannot be read from {grant.file}: {exc}"
                ) from None
        if "\0" in value:
            raise SecretUnavailable(
                f"secret {grant.name} ({grant.where}) holds a NUL byte, which no environment"
                " variable can: it is refused"
            )
        if len(value) < MIN_LENGTH:
            raise SecretUnavailable(
                f"secret {grant.name} ({grant.where}) is shorter than {MIN_LENGTH} characters,"
                " too short to be masked in logs: it is refused"
            )
        if any(own in value for own in self.reserved if len(own) >= MIN_LENGTH):
            raise SecretUnavailable(
                f"secret {grant.name} ({grant.where}) holds one of the runner's own credentials"
                " (a forge token, webhook secret, API token or git credential), which is never"
                " given to agents: give the agent a credential of its own"
            )
        return value

    def for_step(self, agent: Agent, workflow: str, source: str | None = None) -> Granted:
        """The secrets `agent` gets in a step of `workflow` (of workflows repo `source`): those
        it asks for that a grant covers. A repo-local agent's request without a grant is a
        problem (the configuration changed since its revision was applied); a built-in
        agent's is a note."""
        values: dict[str, str] = {}
        notes: list[str] = []
        problems: list[str] = []
        policy = self.policy if source is None else self.policy.for_source(source)
        for name in agent.secrets:
            grant = policy.grant_for(agent.name, workflow, name)
            if grant is None:
                if agent.builtin:
                    notes.append(
                        f"secret {name} is not granted to agent {agent.name} in workflow"
                        f" {workflow}, so it is not set (grant it under secrets: in"
                        f" {self.policy.config})"
                    )
                else:
                    why = policy.step_problem(agent.name, workflow, name)
                    problems.append(
                        why or policy.request_problem(agent.name, name) or "not granted"
                    )
                continue
            try:
                values[name] = self.value(grant)
            except SecretUnavailable as exc:
                problems.append(str(exc))
        return Granted(values=values, notes=tuple(notes), problems=tuple(problems))

    def network_problem(self, agent: Agent) -> str | None:
        """Why `agent` may not have the network it declares (the configuration changed since
        its revision was applied); None when it may. Built-in agents keep theirs."""
        if not agent.network or agent.builtin:
            return None
        return self.policy.network_problem(agent.name)

    def masked(self) -> list[str]:
        """Every value to keep out of every step's log: the runner's own credentials and each
        granted value that can be read now."""
        found = list(self.reserved)
        for grant in self.policy.grants:
            try:
                found.append(self.value(grant))
            except SecretUnavailable:
                continue
        return found

    def check(self) -> list[str]:
        """What is wrong with the grants' values now (for a warning when the service starts)."""
        problems = []
        for grant in self.policy.grants:
            try:
                self.value(grant)
            except SecretUnavailable as exc:
                problems.append(str(exc))
        return problems
