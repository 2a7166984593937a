"""Steps' scratch folders (runner/executors/scratch.py): under the given folder, removed after the
step, never swept while a live runner's step uses them, and a folder that cannot be made is the
machine's fault (the run waits), not the step's. The sweep of a killed node's folders at start is
tested through `runner serve` in tests/test_step_kill.py."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from runner.executors import scratch
from runner.executors.base import ExecutorUnavailable
from runner.executors.local import LocalExecutor
from tests.executors.test_conformance import agent, run

pytestmark = pytest.mark.anyio


async def test_a_running_steps_folder_is_not_swept_and_goes_when_it_ends(
    tmp_path: Path,
) -> None:
    steps = tmp_path / "data" / "steps"
    started = tmp_path / "started"
    program = f"""
    import json, os, time
    open({str(started)!r}, "w").close()
    while os.path.exists({str(started)!r}):
        time.sleep(0.05)
    json.dump({{"answer": 1}}, open(os.environ["RUNNER_OUTPUT"], "w"))
    """
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    executor = LocalExecutor(sandbox=False, scratch=steps)
    async with anyio.create_task_group() as group:
        group.start_soon(run, executor, agent(tmp_path, program), workspace)
        with anyio.fail_after(60):
            while not started.exists():
                await anyio.sleep(0.05)
        (held,) = steps.iterdir()
        assert held.name.startswith("runner-step-")
        assert scratch.sweep(steps) == 0  # another runner starting beside this one
        assert held.exists()
        started.unlink()  # the step ends
    assert list(steps.iterdir()) == []


def test_a_folder_nobody_holds_is_swept(tmp_path: Path) -> None:
    left = tmp_path / "runner-step-left"
    (left / "io" / "home").mkdir(parents=True)
    (left / scratch.HELD).touch()
    (left / "io" / "home").chmod(0o500)  # what a step may leave read-only
    unrelated = tmp_path / "mine"
    unrelated.mkdir()
    assert scratch.sweep(tmp_path) == 1
    assert not left.exists()
    assert unrelated.exists()


async def test_a_scratch_folder_that_cannot_be_made_is_the_machines_fault(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    executor = LocalExecutor(sandbox=False, scratch=tmp_path / "a-file" / "steps")
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    with pytest.raises(ExecutorUnavailable, match="cannot make the step's scratch folder in"):
        await run(executor, agent(tmp_path, "print('never')"), workspace)
