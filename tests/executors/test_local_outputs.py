"""The local executor reads a step's output file as the runner (root, maybe), outside the
sandbox, from a folder the agent owned: only a regular file, never through a symlink, never
more than `max_output_bytes`. Both with and without the sandbox."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from runner.executors.local import LocalExecutor, find_bwrap
from tests.executors.test_conformance import agent, run

pytestmark = pytest.mark.anyio

HOST_JSON = '{"answer": 7}'  # a host file an agent should never get read back as its output


@pytest.fixture(params=["sandboxed", "unsandboxed"])
def sandboxed(request: pytest.FixtureRequest) -> bool:
    if request.param == "sandboxed" and find_bwrap()[0] is None:
        pytest.skip(f"no sandbox on this host: {find_bwrap()[1]}")
    return bool(request.param == "sandboxed")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


async def test_an_output_symlinked_to_a_host_file_is_refused(
    sandboxed: bool, tmp_path: Path, workspace: Path
) -> None:
    host = tmp_path / "host.json"
    host.write_text(HOST_JSON)
    program = f"import os; os.symlink({str(host)!r}, os.environ['RUNNER_OUTPUT'])"
    result, _ = await run(LocalExecutor(sandbox=sandboxed), agent(tmp_path, program), workspace)
    assert result.outputs is None
    assert result.error == "the agent's output is a symlink: write a file to $RUNNER_OUTPUT"


async def test_an_output_that_is_a_fifo_is_refused_without_waiting(
    sandboxed: bool, tmp_path: Path, workspace: Path
) -> None:
    program = "import os; os.mkfifo(os.environ['RUNNER_OUTPUT'])"
    result, _ = await run(LocalExecutor(sandbox=sandboxed), agent(tmp_path, program), workspace)
    assert result.outputs is None
    assert result.error == "the agent's output is not a regular file"


async def test_an_output_over_the_limit_is_refused_and_one_at_it_is_read(
    sandboxed: bool, tmp_path: Path, workspace: Path
) -> None:
    executor = LocalExecutor(sandbox=sandboxed, max_output_bytes=len(HOST_JSON) + 10)
    padded = HOST_JSON + " " * 10  # exactly at the limit: JSON allows trailing spaces
    program = "import os, sys; open(os.environ['RUNNER_OUTPUT'], 'w').write(sys.argv[1])"
    folder = agent(tmp_path, program)
    fits, _ = await run(executor, replace(folder, command=("python", "main.py", padded)), workspace)
    assert fits.outputs == {"answer": 7}, fits.error
    over = replace(folder, command=("python", "main.py", padded + " "))
    result, log = await run(executor, over, workspace)
    assert result.outputs is None
    assert result.error == f"the agent's output is over {len(padded)} bytes"
    assert result.error in log
