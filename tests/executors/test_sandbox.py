"""Who a sandboxed step is, and the /proc it sees: never uid 0, the kernel's knobs read-only.

The attacks through the product are in tests/security/ (test_sandbox.py, test_attack_agents.py);
these check the mechanisms directly, also the path of a runner that is not root, run here as
nobody."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.executors import sandbox
from runner.executors.base import StepSpec
from runner.executors.local import LocalExecutor
from runner.model import Agent

pytestmark = pytest.mark.anyio

# What a step finds out about itself. Files are only opened for writing, never written.
SELF = """
import json, os, subprocess

def attempt(action):
    try:
        return {"ok": True, "got": action()}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

def opened(path):
    os.close(os.open(path, os.O_WRONLY))
    return "opened for writing"

def written(path):
    with open(path, "w") as f:
        f.write("x")
    return path

status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines())
mounts = {}
for line in open("/proc/self/mountinfo").read().splitlines():
    fields = line.split()
    mounts[fields[4]] = fields[5].split(",")
workspace = os.environ.get("RUNNER_WORKSPACE", "/tmp")
report = {
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "caps": [status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb")],
    "no_new_privs": status["NoNewPrivs"].strip(),
    "read_only": sorted(m for m, o in mounts.items() if m.startswith("/proc/") and "ro" in o),
    "core_pattern": attempt(lambda: opened("/proc/sys/kernel/core_pattern")),
    "modprobe": attempt(lambda: opened("/proc/sys/kernel/modprobe")),
    "keys": attempt(lambda: open("/proc/keys").read()),
    "tmp": attempt(lambda: written("/tmp/x")),
    "shm": attempt(lambda: written("/dev/shm/x")),
    "workspace": attempt(lambda: written(os.path.join(workspace, "new.txt"))),
    "git": attempt(lambda: subprocess.run(
        ["git", "status", "--porcelain"], cwd=workspace, capture_output=True, text=True,
        check=True).stdout),
}
if "RUNNER_OUTPUT" in os.environ:
    json.dump(report, open(os.environ["RUNNER_OUTPUT"], "w"))
else:
    print(json.dumps(report))
"""


def _root_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("the runner is not root here: its steps run as its own uid")
    if sandbox.find_bwrap()[0] is None:
        pytest.skip(f"no sandbox here: {sandbox.find_bwrap()[1]}")


def _proc_locked(report: dict[str, Any]) -> None:
    """Each defence on its own: the knobs are read-only mounts whoever the step is."""
    assert {"/proc/sys", "/proc/bus", "/proc/irq"} <= set(report["read_only"]), report
    assert report["core_pattern"]["ok"] is False, report["core_pattern"]
    assert report["modprobe"]["ok"] is False, report["modprobe"]  # absent on some kernels
    if os.path.exists("/proc/keys"):
        assert not report["keys"]["ok"] or report["keys"]["got"] == "", report["keys"]


async def test_a_root_runners_step_is_nobody_without_capabilities(tmp_path: Path) -> None:
    _root_or_skip()
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    (workspace / "README.md").write_text("hello\n")
    folder = tmp_path / "agent"
    folder.mkdir()
    (folder / "main.py").write_text(SELF)
    agent = Agent(
        name="self",
        command=("python", "main.py"),
        directory=str(folder),
        source="test",
        digest="d",
    )
    step = StepSpec(
        run_id=1, step_id="self", attempt=1, agent=agent, inputs={}, workspace=workspace, timeout=60
    )
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(data)

    result = await LocalExecutor().run_step(step, sink)
    assert result.ok, b"".join(chunks).decode()
    report = result.outputs
    assert report is not None
    assert (report["uid"], report["gid"], report["groups"]) == (65534, 65534, [])
    assert report["caps"] == ["0000000000000000"] * 4
    assert report["no_new_privs"] == "1"
    _proc_locked(report)
    for where in ("tmp", "shm", "workspace"):
        assert report[where]["ok"], report[where]
    assert "README.md" in report["git"]["got"], report["git"]  # the workspace is nobody's
    assert (workspace / "new.txt").stat().st_uid == 65534


@pytest.fixture
def as_nobody() -> Iterator[tuple[list[str], Path]]:
    """A runner that is not root, played by nobody: (its command prefix up to bwrap, a folder
    for the step)."""
    setpriv, python = shutil.which("setpriv"), "/usr/bin/python3"
    bwrap = sandbox.find_bwrap()[0]
    if os.geteuid() != 0 or not setpriv or bwrap is None or not os.path.exists(python):
        pytest.skip("needs root, setpriv, /usr/bin/python3 and bwrap to play a non-root runner")
    base = Path(tempfile.mkdtemp(prefix="runner-nobody-"))  # outside root's 0700 pytest folder
    os.chmod(base, 0o755)
    for name in ("etc", "workspace"):
        (base / name).mkdir()
    os.chown(base / "workspace", 65534, 65534)
    try:
        yield [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", bwrap], base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_proc_is_read_only_for_a_runner_that_is_not_root(
    as_nobody: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix, base = as_nobody
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    monkeypatch.setattr(os, "getuid", lambda: 65534)
    monkeypatch.setattr(os, "getgid", lambda: 65534)
    monkeypatch.setattr(sandbox, "python_paths", lambda: [])  # the system's python3 runs it
    sandbox.write_identity(base / "etc", "/tmp")
    options = sandbox.sandbox_args(
        identity=base / "etc", read_only=[], writable=[str(base / "workspace")], network=False
    )
    assert sandbox.user_prefix() == []  # it is its own uid already
    program = textwrap.dedent(SELF).replace(
        'os.environ.get("RUNNER_WORKSPACE", "/tmp")', repr(str(base / "workspace"))
    )
    done = subprocess.run(
        [*prefix, *options, "--", "/usr/bin/python3", "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0 and "namespace" in done.stderr:
        pytest.skip(f"no unprivileged user namespaces here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["uid"] == 65534
    _proc_locked(report)
    for where in ("tmp", "shm", "workspace"):
        assert report[where]["ok"], report[where]


def test_handing_a_folder_over_never_follows_a_symlink(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands folders to another user")
    outside = tmp_path / "host-file"
    outside.write_text("the host's\n")
    top = tmp_path / "workspace"
    (top / "sub").mkdir(parents=True)
    (top / "sub" / "file").write_text("x")
    (top / "link").symlink_to(outside)
    (top / "dirlink").symlink_to(tmp_path)
    sandbox.hand_over(top, 65534, 65534)
    for path in (top, top / "sub", top / "sub" / "file", top / "link", top / "dirlink"):
        assert os.lstat(path).st_uid == 65534, path
    assert outside.stat().st_uid == 0
    assert tmp_path.stat().st_uid == 0
