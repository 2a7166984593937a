"""Issue 15, item 2: a step sees only what it needs. A committed repo-local agent, run by
`runner run` as a user runs it, tries each attack and reports what happened in its output; each
attack must fail while the legitimate path (its own files, the workspace, git, the agents'
Python dependencies, the network when granted) keeps working.

The runner runs twice: with its working directory (runner.yaml, runner.db, data directory) under
the test's tmp dir, and with all of it outside /tmp (under /var/tmp), since the sandbox used to
hide /tmp only."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.executors.local import pids_limiter
from runner.executors.sandbox import find_bwrap, python_paths

ATTACKER = """\
import errno, json, os, pwd, socket, subprocess, time

with open(os.environ["RUNNER_INPUT"]) as f:
    given = json.load(f)
report = {}


def attempt(name, action):
    try:
        report[name] = {"ok": True, "got": action()}
    except Exception as exc:
        report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def read(path):
    with open(path, "rb") as f:
        return f.read().decode(errors="replace")


def write(path):
    with open(path, "w") as f:
        f.write("written by the agent")
    return path


def connect():
    socket.create_connection(("127.0.0.1", int(given["port"])), timeout=3).close()
    return "connected"


def processes(count):
    children, refused = [], None
    for _ in range(count):
        try:
            pid = os.fork()
        except OSError as exc:
            refused = errno.errorcode.get(exc.errno, str(exc.errno))
            break
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return {"started": len(children), "refused": refused}


cwd, data, home = given["cwd"], given["data_dir"], given["home"]
workspace = os.environ["RUNNER_WORKSPACE"]
attempt("shadow", lambda: read("/etc/shadow"))
attempt("etc", lambda: sorted(os.listdir("/etc")))
attempt("passwd", lambda: read("/etc/passwd"))
attempt("runner_db", lambda: read(os.path.join(cwd, "runner.db")))
attempt("runner_yaml", lambda: read(os.path.join(cwd, "runner.yaml")))
attempt("cwd", lambda: sorted(os.listdir(cwd)))
attempt("data_dir", lambda: sorted(os.listdir(data)))
attempt("root", lambda: sorted(os.listdir("/root")))
attempt("runner_home", lambda: sorted(os.listdir(home)))
attempt("runner_key", lambda: read(os.path.join(home, ".ssh", "id_ed25519")))
attempt("other_run", lambda: read(os.path.join(data, "workspaces", "run-99", "secret.txt")))
attempt("workspaces", lambda: sorted(os.listdir(os.path.dirname(workspace))))
other_step = os.path.join(data, "steps", "runner-step-other", "io", "input.json")
attempt("other_step", lambda: read(other_step))
own_step = os.path.dirname(os.path.dirname(os.environ["RUNNER_INPUT"]))
attempt("steps", lambda: [os.path.dirname(own_step), sorted(os.listdir(os.path.dirname(own_step)))])
attempt("network", connect)
attempt("processes", lambda: processes(300))
# what an agent may do
attempt("own_file", lambda: read(os.path.join(os.environ["RUNNER_AGENT_DIR"], "agent.yaml")))
attempt("write_own_dir", lambda: write("planted.py"))
attempt("write_workspace", lambda: write(os.path.join(workspace, "report.txt")))
attempt("git_log", lambda: subprocess.run(
    ["git", "log", "--format=%s"], cwd=workspace, capture_output=True, text=True, check=True
).stdout)
attempt("yaml", lambda: __import__("yaml").safe_dump({"ok": 1}))
attempt("home", lambda: write(os.path.join(os.environ["HOME"], "notes.txt")))
attempt("who", lambda: pwd.getpwuid(os.getuid()).pw_dir == os.environ["HOME"])
attempt("uid", os.getuid)
with open(os.environ["RUNNER_OUTPUT"], "w") as f:
    json.dump(report, f)
"""

GRANTED = """\
import json, os, socket
with open(os.environ["RUNNER_INPUT"]) as f:
    port = int(json.load(f)["port"])
socket.create_connection(("127.0.0.1", port), timeout=3).close()
with open(os.environ["RUNNER_OUTPUT"], "w") as f:
    json.dump({"connected": True}, f)
"""

WORKFLOW = """\
apiVersion: runner/v1
kind: Workflow
metadata: {name: attack}
spec:
  triggers: [{manual: {}}]
  inputs:
    type: object
    properties:
      cwd: {type: string}
      data_dir: {type: string}
      home: {type: string}
      port: {type: integer}
  steps:
    - id: attack
      agent: attacker
      with:
        cwd: "${{ inputs.cwd }}"
        data_dir: "${{ inputs.data_dir }}"
        home: "${{ inputs.home }}"
        port: "${{ inputs.port }}"
    - id: granted
      agent: networker
      needs: [attack]
      with: {port: "${{ inputs.port }}"}
"""


def agent_yaml(name: str, spec: str) -> str:
    return f"apiVersion: runner/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec: {spec}\n"


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def commit(repo: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def attack(base: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Build a workflows repo, a project and a runner's working directory under `base`, run the
    workflow, and return (the attacker's report, the networker's output, the step logs)."""
    repo, project, site = base / "workflows", base / "project", base / "site"
    commit(
        repo,
        {
            "agents/attacker/agent.yaml": agent_yaml(
                "attacker", "{command: [python, main.py], resources: {pids: 50}, timeout: 2m}"
            ),
            "agents/attacker/main.py": ATTACKER,
            "agents/networker/agent.yaml": agent_yaml(
                "networker", "{command: [python, main.py], network: true}"
            ),
            "agents/networker/main.py": GRANTED,
            "workflows/attack.yaml": WORKFLOW,
        },
        "the attacker",
    )
    commit(project, {"README.md": "a project\n"}, "project history is readable")
    data, home = site / "data", site / "home"
    other_run = data / "workspaces" / "run-99"  # another run, in flight
    other_run.mkdir(parents=True)
    (other_run / "secret.txt").write_text("another run's files\n")
    other_step = data / "steps" / "runner-step-other" / "io"  # another step, in flight
    other_step.mkdir(parents=True)
    (other_step / "input.json").write_text('{"secret": "another step\'s input"}\n')
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (site / "runner.yaml").write_text(
        f"data_dir: {data}\nexecutor: {{allow_network: [networker]}}\n"
        "# the runner's configuration\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env["HOME"] = str(home)

    def runner(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "runner", *args]
        return subprocess.run(command, cwd=site, env=env, capture_output=True, text=True)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        inputs = {"cwd": site, "data_dir": data, "home": home, "port": port}
        given = [arg for k, v in inputs.items() for arg in ("--input", f"{k}={v}")]
        done = runner("run", "attack", "--repo", str(repo), "--workspace", str(project), *given)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "runner.db").is_file()  # there was a database to steal
    shown = json.loads(runner("show", "1", "--output", "json").stdout)
    steps = {step["id"]: step for step in shown["steps"]}
    return steps["attack"]["outputs"], steps["granted"]["outputs"], runner("logs", "1").stdout


@pytest.fixture(scope="module", params=["under-tmp", "outside-tmp"])
def report(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Any], dict[str, Any], str]]:
    bwrap, reason = find_bwrap()
    if bwrap is None:
        pytest.skip(f"no bubblewrap sandbox on this host: {reason}")
    if request.param == "under-tmp":
        yield attack(tmp_path_factory.mktemp("sandbox"))
        return
    if not os.access("/var/tmp", os.W_OK):
        pytest.skip("/var/tmp is not writable: cannot put the runner's files outside /tmp")
    base = Path(tempfile.mkdtemp(prefix="runner-sandbox-test-", dir="/var/tmp"))
    try:
        yield attack(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def failed(entry: dict[str, Any]) -> bool:
    return entry["ok"] is False


def test_etc_shadow_and_host_accounts_are_not_visible(report: tuple[Any, ...]) -> None:
    attacker, _, _ = report
    assert Path("/etc/shadow").exists() or Path("/etc/passwd").exists()
    assert failed(attacker["shadow"]), attacker["shadow"]
    etc = set(attacker["etc"]["got"])
    assert {"passwd", "group", "ld.so.cache"} <= etc
    assert not etc & {"shadow", "gshadow", "ssh", "sudoers", "gitconfig", "pip.conf", "npmrc"}
    names = {line.split(":")[0] for line in attacker["passwd"]["got"].splitlines()}
    # the runner's user, or nobody when the runner is root: a step never runs as uid 0
    assert names <= {"root", pwd.getpwuid(os.getuid()).pw_name, "nobody"}
    assert attacker["uid"]["got"] == (os.getuid() or 65534)


def test_runner_database_config_and_data_dir_are_not_visible(report: tuple[Any, ...]) -> None:
    attacker, _, _ = report
    assert failed(attacker["runner_db"]), attacker["runner_db"]
    assert failed(attacker["runner_yaml"]), attacker["runner_yaml"]
    # the run's workspace and the git objects it borrows lie under the data directory: only the
    # paths to them exist
    if not failed(attacker["cwd"]):
        assert not {"runner.db", "runner.yaml", "home"} & set(attacker["cwd"]["got"])
    assert set(attacker["data_dir"]["got"]) <= {"workspaces", "clones", "steps"}


def test_home_directories_are_not_visible(report: tuple[Any, ...]) -> None:
    attacker, _, _ = report
    assert failed(attacker["runner_home"]), attacker["runner_home"]
    assert failed(attacker["runner_key"]), attacker["runner_key"]
    # the runner's Python may live under /root (pyenv): that prefix is shown, nothing beside it
    shown = {Path(p).parts[2] for p in python_paths() if p.startswith("/root/")}
    if not failed(attacker["root"]):
        assert set(attacker["root"]["got"]) <= shown
        assert set(os.listdir("/root")) - shown, "nothing else in /root to hide: no test"


def test_other_runs_workspaces_are_not_visible(report: tuple[Any, ...]) -> None:
    attacker, _, _ = report
    assert failed(attacker["other_run"]), attacker["other_run"]
    assert attacker["workspaces"]["got"] == ["run-1"]


def test_other_steps_scratch_is_not_visible(report: tuple[Any, ...]) -> None:
    """A step's input, output and home lie in its scratch folder under the data directory:
    only the path to its own exists in the sandbox."""
    attacker, _, _ = report
    assert failed(attacker["other_step"]), attacker["other_step"]
    folder, listed = attacker["steps"]["got"]
    assert folder.endswith("/steps")
    (own,) = listed
    assert own.startswith("runner-step-")
    assert own != "runner-step-other"


def test_no_network_unless_the_agent_declares_it(report: tuple[Any, ...]) -> None:
    attacker, granted, _ = report
    assert failed(attacker["network"]), attacker["network"]
    assert granted == {"connected": True}


def test_300_processes_are_refused_under_resources_pids_50(report: tuple[Any, ...]) -> None:
    attacker, _, log = report
    limiter = pids_limiter(find_bwrap()[0])
    if limiter.why_not:
        pytest.skip(f"no process-count limit on this host: {limiter.why_not}")
    started = attacker["processes"]["got"]
    assert started["refused"] == "EAGAIN", started
    assert 0 < started["started"] < 50, started
    assert "resources.pids is not enforced" not in log


def test_the_legitimate_path_still_works(report: tuple[Any, ...]) -> None:
    attacker, _, log = report
    assert "apiVersion: runner/v1" in attacker["own_file"]["got"]
    assert "Read-only file system" in attacker["write_own_dir"]["error"]
    assert attacker["write_workspace"]["ok"], attacker["write_workspace"]
    assert attacker["git_log"]["got"] == "project history is readable\n"  # borrowed objects
    assert attacker["yaml"]["got"] == "ok: 1\n"  # the agents' dependencies import
    assert attacker["home"]["ok"], attacker["home"]
    assert attacker["who"]["got"] is True  # passwd names the step's home
    assert "running unsandboxed" not in log
