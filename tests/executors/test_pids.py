"""The process-count limit of the local executor (runner/executors/pids.py): the mechanism the
probe picks, what the step log and health say, and what each mechanism really holds."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner.executors import pids
from runner.executors.base import StepResult, StepSpec
from runner.executors.local import LocalExecutor, pids_limiter
from runner.executors.sandbox import find_bwrap, system_args
from runner.model import Agent
from tests.executors.test_conformance import processes_with

pytestmark = pytest.mark.anyio

FORKS = """
import errno, json, os, time
children, refused = [], None
for _ in range({count}):
    try:
        pid = os.fork()
    except OSError as exc:
        refused = errno.errorcode[exc.errno]
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print(json.dumps({{"started": len(children), "refused": refused}}), flush=True)
"""


def cgroup_or_skip() -> pids.Limiter:
    limiter = pids_limiter(None)
    if limiter.why_not:
        pytest.skip(f"no cgroup to limit processes on this host: {limiter.why_not}")
    return limiter


async def run(executor: LocalExecutor, tmp_path: Path, program: str, **spec: object) -> str:
    folder = tmp_path / "agent"
    folder.mkdir(exist_ok=True)
    (folder / "main.py").write_text(textwrap.dedent(program))
    agent = Agent(
        name="probe",
        command=("python", "main.py"),
        directory=str(folder),
        source="test",
        digest="d",
        **spec,  # type: ignore[arg-type]
    )
    workspace = tmp_path / "workspace"
    workspace.mkdir(exist_ok=True)
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(data)

    step = StepSpec(
        run_id=1, step_id="s", attempt=1, agent=agent, inputs={}, workspace=workspace, timeout=60
    )
    result: StepResult = await executor.run_step(step, sink)
    assert result.exit_code is not None, result
    return b"".join(chunks).decode()


async def test_a_process_that_left_the_session_dies_with_the_step(tmp_path: Path) -> None:
    cgroup_or_skip()
    marker = str(4000 + os.getpid() % 1000)
    program = f"""
    import json, os, subprocess
    # out of the process group, and not holding the log open
    subprocess.Popen(["sleep", "{marker}"], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    json.dump({{}}, open(os.environ["RUNNER_OUTPUT"], "w"))
    """
    await run(LocalExecutor(sandbox=False), tmp_path, program)
    assert processes_with(marker) == []


async def test_the_limit_holds_without_the_sandbox_too(tmp_path: Path) -> None:
    cgroup_or_skip()
    log = await run(LocalExecutor(sandbox=False), tmp_path, FORKS.format(count=100), pids=20)
    counted = json.loads(next(line for line in log.splitlines() if line.startswith("{")))
    assert counted["refused"] == "EAGAIN"
    assert 0 < counted["started"] < 20


async def test_health_names_the_mechanism() -> None:
    limiter = cgroup_or_skip()
    health = await LocalExecutor(sandbox=False).health()
    assert f"pids limit: {limiter.mechanism}" in health.detail


async def test_an_unenforced_limit_is_said_in_the_step_log(tmp_path: Path) -> None:
    executor = LocalExecutor(sandbox=False)
    executor.pids = pids.Unlimited("no cgroup and RLIMIT_NPROC does not bind root")
    program = 'import json, os; json.dump({}, open(os.environ["RUNNER_OUTPUT"], "w"))'
    log = await run(executor, tmp_path, program)
    assert (
        "[runner] resources.pids is not enforced (no cgroup and RLIMIT_NPROC does not bind "
        "root): the agent may start any number of processes" in log
    )
    health = await executor.health()
    assert "pids limit not enforced: no cgroup and RLIMIT_NPROC" in health.detail


def test_rlimit_nproc_bounds_the_sandbox_not_the_runner_user() -> None:
    """The mechanism for a runner that is not root, tried as `nobody` (the runner's own Python
    lives under /root here, so the system's python3 runs the forks)."""
    bwrap, reason = find_bwrap()
    setpriv, python = shutil.which("setpriv"), "/usr/bin/python3"
    if os.geteuid() != 0 or bwrap is None or setpriv is None or not os.path.exists(python):
        pytest.skip(f"needs root, setpriv, {python} and bwrap to try it as nobody ({reason})")
    as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    scope = pids.Rlimit(python).open(10)
    # twenty processes of the same user outside: counted per user, the limit would refuse bwrap
    outside = [subprocess.Popen([*as_nobody, "sleep", "60"]) for _ in range(20)]
    try:
        sandbox = [bwrap, *system_args(), "--proc", "/proc", "--dev", "/dev", "--unshare-pid"]
        forks = textwrap.dedent(FORKS.format(count=50))
        done = subprocess.run(
            [*as_nobody, *sandbox, *scope.bwrap_args, "--", *scope.prefix, python, "-c", forks],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        for process in outside:
            process.kill()
            process.wait()
    if done.returncode != 0 and "namespace" in done.stderr:
        pytest.skip(f"no unprivileged user namespaces here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    counted = json.loads(done.stdout)
    assert counted["refused"] == "EAGAIN"
    assert 0 < counted["started"] < 10


@pytest.fixture
def fake_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cgroup v2 tree as systemd gives a `Delegate=yes` service (files only: no kernel)."""
    base = tmp_path / "system.slice" / "runner.service"
    base.mkdir(parents=True)
    (base / "cgroup.controllers").write_text("cpu memory pids\n")
    (base / "cgroup.subtree_control").write_text("")
    (base / "cgroup.procs").write_text("")
    monkeypatch.setattr(
        pids, "_own_cgroups", lambda: iter([([""], "/system.slice/runner.service")])
    )
    mounts = [("/", "/sys/fs/cgroup/pids", "cgroup", ["rw", "pids"])]
    mounts += [("/", str(tmp_path), "cgroup2", ["rw"])]
    monkeypatch.setattr(pids, "_mounts", lambda: iter(mounts))
    return base


def test_cgroup_v2_a_delegated_cgroup_gives_its_children_pids(
    fake_v2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert pids._v2_parent() == fake_v2
    assert (fake_v2 / "cgroup.subtree_control").read_text() == "+pids"
    # a runner started later, in the leaf where an earlier one moved the service's processes
    (fake_v2 / pids.SUPERVISOR).mkdir()
    leaf = f"/system.slice/runner.service/{pids.SUPERVISOR}"
    monkeypatch.setattr(pids, "_own_cgroups", lambda: iter([([""], leaf)]))
    assert pids._v2_parent() == fake_v2


def test_cgroup_v2_without_the_pids_controller_is_refused(fake_v2: Path) -> None:
    (fake_v2 / "cgroup.controllers").write_text("cpu memory\n")
    with pytest.raises(pids.Unavailable, match="the pids controller is not available in"):
        pids._v2_parent()


def test_a_killed_runners_step_cgroup_is_emptied_and_removed_at_start() -> None:
    """A runner killed mid-step leaves its step cgroup with the step's processes in it; the next
    runner to start kills them and removes it."""
    limiter = cgroup_or_skip()
    assert isinstance(limiter, pids.Cgroup)
    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process has this pid
    left = limiter.parent / f"{pids._PREFIX}{gone}-killed"
    left.mkdir()
    scope = pids.Scope(procs=os.fsencode(left / "cgroup.procs"))
    stray = subprocess.Popen(["sleep", "600"], preexec_fn=scope.enter)
    try:
        pids.choose(None, python=sys.executable)  # what a runner does as it starts
        assert stray.wait(timeout=30) == -signal.SIGKILL
        assert not left.exists()
    finally:
        stray.kill()
        stray.wait()
        with contextlib.suppress(OSError):
            left.rmdir()
