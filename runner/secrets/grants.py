"""Which secrets and how much reach agents are granted: the configuration's `secrets` entries
and `executor.allow_network`, and the questions a revision is checked against.

An agent gets a secret only when its manifest asks for it (`spec.secrets`) *and* an entry of
the configuration grants that name to that agent and workflow. A repo-local agent asking for a
secret no entry grants makes its revision invalid, and so does `network: true` on a repo-local
agent the configuration does not allow; built-in agents are part of the runner: their requests
are optional (granted or not, never an error) and they keep their network. Pure data: values
are read by `runner.secrets.store`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

ANY = "*"  # in `executor.allow_network`: every agent


@dataclass(frozen=True, kw_only=True)
class Grant:
    """One entry of the configuration's `secrets`: the name agents ask for (the variable they
    receive), where the value comes from (`env` or `file`), and whom it is for (None: any agent,
    any workflow)."""

    name: str
    env: str | None = None
    file: str | None = None
    agents: frozenset[str] | None = None
    workflows: frozenset[str] | None = None
    sources: frozenset[str] | None = None  # the workflows repos whose agents it is for
    where: str = "the configuration"  # e.g. runner.yaml:14, for messages

    def covers(self, agent: str, workflow: str | None = None) -> bool:
        """Whether this entry gives its secret to `agent` (in `workflow`, when one is named)."""
        if self.agents is not None and agent not in self.agents:
            return False
        return workflow is None or self.workflows is None or workflow in self.workflows

    @property
    def origin(self) -> str:
        return f"variable {self.env}" if self.env else f"file {self.file}"


def _listed(names: frozenset[str] | None) -> str:
    return "[" + ", ".join(sorted(names or ())) + "]"


@dataclass(frozen=True, kw_only=True)
class AgentPolicy:
    """What the configuration lets a revision's agents have. `config` names the file the
    messages point at."""

    grants: tuple[Grant, ...] = ()
    network: frozenset[str] = field(default_factory=frozenset)
    config: str = "runner.yaml"
    # ceilings on what a repo-local agent may ask for (None: no ceiling)
    max_pids: int | None = None
    max_memory: int | None = None  # bytes
    max_timeout: float | None = None  # seconds

    def for_source(self, source: str) -> AgentPolicy:
        """The policy for the agents of workflows repo `source`: grants naming other sources
        are not theirs (an agent of another repository with the same name gets nothing)."""
        mine = tuple(g for g in self.grants if g.sources is None or source in g.sources)
        return replace(self, grants=mine)

    def limit_problems(
        self, pids: int | None, memory: int | None, timeout: float | None
    ) -> list[tuple[str, str]]:
        """(field, why) for each resource a repo-local agent asks for beyond the ceilings."""
        found = []
        if pids is not None and self.max_pids is not None and pids > self.max_pids:
            found.append(("pids", f"{pids} processes is over executor.max_pids ({self.max_pids})"))
        if memory is not None and self.max_memory is not None and memory > self.max_memory:
            found.append(
                ("memory", f"{memory} bytes is over executor.max_memory ({self.max_memory} bytes)")
            )
        if timeout is not None and self.max_timeout is not None and timeout > self.max_timeout:
            found.append(
                (
                    "timeout",
                    f"{timeout:g}s is over executor.max_timeout ({self.max_timeout:g}s)",
                )
            )
        return [
            (name, f"{why}: ask for less, or raise the ceiling in {self.config}")
            for name, why in found
        ]

    def grant_for(self, agent: str, workflow: str, name: str) -> Grant | None:
        """The first entry giving secret `name` to `agent` in `workflow`, or None."""
        return next((g for g in self.grants if g.name == name and g.covers(agent, workflow)), None)

    def request_problem(self, agent: str, name: str) -> str | None:
        """Why a repo-local agent may not ask for secret `name` at all, saying which entry
        would grant it; None when some entry grants it to this agent."""
        named = [g for g in self.grants if g.name == name]
        if any(g.covers(agent) for g in named):
            return None
        if not named:
            return (
                f"agent {agent!r} asks for secret {name!r}, which the runner's configuration does"
                f" not grant: add {{name: {name}, env: {name}, agents: [{agent}]}} under secrets:"
                f" in {self.config}"
            )
        where = ", ".join(f"{g.where} grants it to agents {_listed(g.agents)}" for g in named)
        return (
            f"agent {agent!r} asks for secret {name!r}, which is not granted to it ({where}):"
            f" add {agent!r} to the agents of that entry"
        )

    def step_problem(self, agent: str, workflow: str, name: str) -> str | None:
        """Why a step of `workflow` may not run `agent`, which may ask for secret `name` but
        not in this workflow; None when it may."""
        named = [g for g in self.grants if g.name == name and g.covers(agent)]
        if not named or any(g.covers(agent, workflow) for g in named):
            return None
        where = ", ".join(f"{g.where} only in workflows {_listed(g.workflows)}" for g in named)
        return (
            f"agent {agent!r} asks for secret {name!r}, granted {where}: add {workflow!r} to"
            " the workflows of that entry, or use another agent here"
        )

    def network_problem(self, agent: str) -> str | None:
        """Why a repo-local agent may not declare `network: true`; None when it may."""
        if ANY in self.network or agent in self.network:
            return None
        return (
            f"agent {agent!r} asks for network access, which the runner's configuration does not"
            f" allow repo-local agents: add {agent!r} to executor.allow_network in {self.config},"
            " or remove network: true"
        )
