"""What a step gets from the granted secrets, when the configuration may have changed since its
revision was applied: a repo-local agent's ungranted request stops the step, a built-in
agent's is a note; values are read at each step, never the runner's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.model import Agent
from runner.secrets.grants import AgentPolicy, Grant
from runner.secrets.store import SecretStore


def agent(name: str, *secrets: str, builtin: bool = False, network: bool = False) -> Agent:
    return Agent(
        name=name,
        command=("python", "main.py"),
        directory=".",
        source=f"agents/{name}/agent.yaml",
        digest="d",
        builtin=builtin,
        secrets=secrets,
        network=network,
    )


GRANTS = (
    Grant(name="DEPLOY", env="DEPLOY_VALUE", agents=frozenset({"deployer"}), where="r.yaml:3"),
    Grant(
        name="ONLY_RELEASE",
        env="RELEASE_VALUE",
        workflows=frozenset({"release"}),
        where="r.yaml:4",
    ),
    Grant(name="SLACK_WEBHOOK_URL", env="SLACK", agents=frozenset({"notifier"}), where="r.yaml:5"),
)
ENVIRON = {
    "DEPLOY_VALUE": "deploy-value",
    "RELEASE_VALUE": "release-value",
    "SLACK": "https://hooks.example/x",
}


def store(environ: dict[str, str] | None = None, **policy: object) -> SecretStore:
    rules = AgentPolicy(grants=GRANTS, config="r.yaml", **policy)  # type: ignore[arg-type]
    return SecretStore(
        rules, reserved=["the-runners-own-token"], environ=ENVIRON if environ is None else environ
    )


@pytest.mark.parametrize(
    ("who", "workflow", "values", "notes", "problems"),
    [
        (agent("deployer", "DEPLOY"), "ship", {"DEPLOY": "deploy-value"}, 0, []),
        (agent("other", "DEPLOY"), "ship", {}, 0, ["not granted to it (r.yaml:3 grants"]),
        (agent("deployer", "NOPE"), "ship", {}, 0, ["add {name: NOPE, env: NOPE"]),
        (agent("x", "ONLY_RELEASE"), "release", {"ONLY_RELEASE": "release-value"}, 0, []),
        (agent("x", "ONLY_RELEASE"), "ship", {}, 0, ["only in workflows [release]"]),
        (
            agent("notifier", "SLACK_WEBHOOK_URL", "NOTIFIER_WEBHOOK_SECRET", builtin=True),
            "ship",
            {"SLACK_WEBHOOK_URL": "https://hooks.example/x"},
            1,
            [],
        ),
    ],
)
def test_what_a_step_gets(
    who: Agent, workflow: str, values: dict[str, str], notes: int, problems: list[str]
) -> None:
    granted = store().for_step(who, workflow)
    assert dict(granted.values) == values
    assert len(granted.notes) == notes
    assert len(granted.problems) == len(problems)
    for found, expected in zip(granted.problems, problems, strict=True):
        assert expected in found


def test_a_missing_variable_is_a_problem_that_says_what_to_set() -> None:
    granted = store({}).for_step(agent("deployer", "DEPLOY"), "ship")
    (problem,) = granted.problems
    assert problem == "secret DEPLOY (r.yaml:3) has no value: set variable DEPLOY_VALUE"
    assert "has no value" in store({}).check()[0]


def test_file_values_are_read_at_each_step(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("first-value\n")
    rules = AgentPolicy(grants=(Grant(name="T", file=str(secret), where="r.yaml:2"),))
    reader = SecretStore(rules)
    assert reader.for_step(agent("a", "T"), "w").values == {"T": "first-value"}
    secret.write_text("rotated-value\n")
    assert reader.for_step(agent("a", "T"), "w").values == {"T": "rotated-value"}
    secret.unlink()
    assert "cannot be read from" in reader.for_step(agent("a", "T"), "w").problems[0]


def test_every_log_masks_the_runners_credentials_and_every_readable_grant() -> None:
    masked = set(store().masked())
    assert masked == {"the-runners-own-token", *ENVIRON.values()}


def test_network_is_for_built_ins_and_allowed_agents_only() -> None:
    assert store().network_problem(agent("notifier", builtin=True, network=True)) is None
    assert store().network_problem(agent("local", network=False)) is None
    problem = store().network_problem(agent("local", network=True))
    assert problem is not None
    assert "add 'local' to executor.allow_network in r.yaml" in problem
    assert store(network=frozenset({"local"})).network_problem(agent("local", network=True)) is None
    assert store(network=frozenset({"*"})).network_problem(agent("any", network=True)) is None
