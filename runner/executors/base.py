"""The Executor interface: run one agent step, return its result. Nothing else.

An executor never touches the store, a forge or the web. A step failing (the agent's exit code,
an invalid output) is a result; only infrastructure failures (the engine or sandbox unusable) are
raised, as `ExecutorUnavailable`, and only those count against an executor's health.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from runner.errors import TransientError, UsageError
from runner.model import Agent
from runner.secrets.mask import Masker as Masker  # re-exported: the executors mask with it
from runner.secrets.mask import mask_value
from runner.spec.schema import compile_schema, translate

LogSink = Callable[[bytes], Awaitable[None]]


class ExecutorUnavailable(TransientError):
    """The executor itself cannot run steps right now (not the agent's fault)."""


@dataclass(frozen=True, kw_only=True)
class StepSpec:
    """Everything needed to run one attempt of one step."""

    run_id: int
    step_id: str
    attempt: int
    agent: Agent
    inputs: Mapping[str, Any]
    workspace: Path
    timeout: float
    secrets: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    # values kept out of the log and outputs besides `secrets`: the runner's own credentials and
    # secrets granted to other agents, which this agent should never hold but might find
    masked: tuple[str, ...] = ()

    @property
    def masking(self) -> dict[str, str]:
        """Every value to mask in this step's log and outputs, by a name (for `Masker`)."""
        extra = {f"_masked_{i}": value for i, value in enumerate(self.masked)}
        return {**extra, **self.secrets}


@dataclass(frozen=True, kw_only=True)
class StepResult:
    """How an attempt ended. `outputs` is set only when the agent succeeded with a valid output."""

    exit_code: int | None
    outputs: Mapping[str, Any] | None = None
    error: str | None = None
    timed_out: bool = False
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_code == 0


@dataclass(frozen=True, kw_only=True)
class Health:
    ok: bool
    detail: str = ""
    sandboxed: bool = False


class Executor(Protocol):
    @property
    def name(self) -> str:
        """The executor's kind (local, dagger), for logs and metrics."""

    async def run_step(self, step: StepSpec, log: LogSink) -> StepResult:
        """Run the agent once. Its stdout and stderr go to `log` (secret values masked). The
        timeout kills the whole process tree; nothing is left running when this returns."""

    async def health(self) -> Health:
        """Whether steps can run now, and how (for readiness and the circuit breaker)."""


def open_executor(kind: str, **options: Any) -> Executor:
    """The executor named in configuration (`executor.kind`)."""
    if kind == "local":
        from runner.executors.local import LocalExecutor

        return LocalExecutor(**options)
    if kind == "dagger":
        try:
            from runner.executors.dagger import DaggerExecutor
        except ImportError as exc:  # the `dagger` extra is not installed
            raise UsageError(
                f"executor 'dagger' needs the dagger extra (pip install 'runner[dagger]'): {exc}"
            ) from None
        return DaggerExecutor(**options)
    raise UsageError(f"unknown executor {kind!r}; expected one of ['dagger', 'local']")


NO_OUTPUT = "the agent wrote no output: write one JSON object to $RUNNER_OUTPUT"


def python_environment(agent_dir: str) -> dict[str, str]:
    """Where Python run by an agent imports from: never its working directory or a script's
    folder (`python -m ruff` run in the workspace would import the project's own ruff.py, inside
    an agent holding secrets), but the agent's own folder, as `python main.py` had it."""
    return {"PYTHONSAFEPATH": "1", "PYTHONPATH": agent_dir}


@cache
def _validator(schema_json: str) -> Any:
    return compile_schema(json.loads(schema_json))


def read_outputs(text: str, step: StepSpec) -> tuple[Mapping[str, Any] | None, str | None]:
    """(outputs, None) from the text of an agent's output file, with secret values masked and
    checked against the agent's `outputs` schema; otherwise (None, what is wrong)."""
    try:
        outputs = json.loads(text or "null")
    except json.JSONDecodeError as exc:
        return None, f"the agent's output is not JSON: {exc}"
    if not isinstance(outputs, dict):
        return None, "the agent's output must be a JSON object"
    outputs = mask_value(outputs, step.masking)
    schema = step.agent.outputs
    if schema:
        problems = translate(_validator(json.dumps(schema, sort_keys=True)), dict(schema), outputs)
        if problems:
            listed = "; ".join(
                f"{'/' + '/'.join(map(str, parts)) if parts else '(root)'}: {message}"
                for parts, message, _ in problems[:10]
            )
            return None, f"the agent's output does not match its outputs schema: {listed}"
    return outputs, None
