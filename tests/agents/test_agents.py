"""The built-in agents doing their real work, each run through the local executor."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pygit2
import pytest

from runner.executors.base import StepResult, StepSpec
from runner.executors.local import LocalExecutor
from runner.spec.repo import builtin_agents

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.anyio


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "sample"
    subprocess.run([str(ROOT / "examples" / "make-sample-repo.sh"), str(path)], check=True)
    return path


async def run_agent(
    name: str,
    inputs: dict[str, Any],
    workspace: Path,
    *,
    secrets: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    sandbox: bool = True,
) -> tuple[StepResult, str]:
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(data)

    step = StepSpec(
        run_id=7,
        step_id=name,
        attempt=1,
        agent=builtin_agents()[name],
        inputs=inputs,
        workspace=workspace,
        timeout=120,
        secrets=secrets or {},
        env=env or {},
    )
    result = await LocalExecutor(sandbox=sandbox).run_step(step, sink)
    return result, b"".join(chunks).decode()


async def test_scanner_finds_secrets_and_risky_code_without_repeating_them(sample: Path) -> None:
    result, log = await run_agent("security-scanner", {"paths": ["."]}, sample)
    assert result.ok, log
    assert result.outputs is not None
    findings = result.outputs["findings"]
    where = {(f["rule"], f["file"], f["line"]) for f in findings}
    assert ("secret/aws-access-key", "src/shop/settings.py", 4) in where
    assert ("bandit/B602", "src/shop/reports.py", 10) in where
    assert result.outputs["summary"]["critical"] == 1
    text = log + json.dumps(result.outputs)
    assert "AKIAIOSFODNN7EXAMPLE" not in text
    assert "correct-horse-battery-staple-42" not in text
    excluded, _ = await run_agent("security-scanner", {"exclude": ["src/shop/settings.py"]}, sample)
    assert excluded.outputs is not None
    assert all(f["file"] != "src/shop/settings.py" for f in excluded.outputs["findings"])


async def test_compliance_checker_applies_files_severity_and_cel_rules(sample: Path) -> None:
    findings = [{"rule": "x", "severity": "high", "file": "a.py", "line": 1, "message": "m"}]
    inputs = {
        "findings": findings,
        "required_files": ["LICENSE", "SECURITY.md"],
        "max_severity": "medium",
        "rules": [
            {"name": "has-readme", "expr": "files.exists(f, f == 'README.md')"},
            {"name": "no-high", "expr": "findings.all(f, f.severity != 'high')"},
            {"name": "broken", "expr": "findings.nope("},
        ],
    }
    result, log = await run_agent("compliance-checker", inputs, sample)
    assert result.ok, log
    assert result.outputs is not None
    assert result.outputs["passed"] is False
    messages = {(v["rule"], v["message"]) for v in result.outputs["violations"]}
    assert ("required-file", "SECURITY.md is missing") in messages
    assert ("max-severity", "1 high finding(s); at most medium is allowed") in messages
    assert ("no-high", "does not hold: findings.all(f, f.severity != 'high')") in messages
    assert not any(rule == "has-readme" for rule, _ in messages)
    assert any(rule == "broken" and "could not be evaluated" in m for rule, m in messages)
    clean, _ = await run_agent("compliance-checker", {"required_files": ["LICENSE"]}, sample)
    assert clean.outputs == {"passed": True, "violations": [], "files_checked": 5}


async def test_code_reviewer_comments_on_changed_files_only(sample: Path) -> None:
    trigger = {"changed_files": ["src/shop/reports.py"]}
    result, log = await run_agent(
        "code-reviewer", {"changed_only": True}, sample, env={"RUNNER_TRIGGER": json.dumps(trigger)}
    )
    assert result.ok, log
    assert result.outputs is not None
    files = {c["file"] for c in result.outputs["comments"]}
    assert files == {"src/shop/reports.py"}
    assert {"F841", "UP031"} <= {c["rule"] for c in result.outputs["comments"]}
    assert result.outputs["summary"]["count"] == len(result.outputs["comments"])


async def test_patcher_commits_fixes_on_a_branch_and_pushes_with_credentials(
    sample: Path, tmp_path: Path
) -> None:
    remote, decoy = tmp_path / "remote.git", tmp_path / "decoy.git"
    for bare in (remote, decoy):
        pygit2.init_repository(str(bare), bare=True)
    repo = pygit2.Repository(str(sample))
    head = str(repo.head.target)
    # what an earlier step may do to the workspace: point origin elsewhere, change a file
    repo.remotes.create("origin", str(decoy))
    (sample / "README.md").write_text("changed by an earlier step\n")
    trigger = {"event": "push", "sha": head, "clone_url": str(remote)}
    result, log = await run_agent(
        "patcher",
        {"branch": "fix/lint", "push": True},
        sample,
        secrets={"GIT_PUSH_TOKEN": "token-for-tests"},
        env={"RUNNER_TRIGGER": json.dumps(trigger)},
        sandbox=False,  # the bare remote lives outside the workspace, read-only in a sandbox
    )
    assert result.ok, log
    assert result.outputs is not None
    outputs = result.outputs
    assert outputs["branch"] == "fix/lint"
    assert outputs["pushed"] is True
    assert sorted(outputs["files"]) == ["src/shop/reports.py", "src/shop/settings.py"]
    commit = repo.revparse_single("fix/lint").peel(pygit2.Commit)
    assert str(commit.id) == outputs["commit"]
    assert [str(parent) for parent in commit.parent_ids] == [head]
    assert "-import sys" in outputs["patch"]
    assert "README.md" not in outputs["patch"]
    assert "refs/heads/fix/lint" in pygit2.Repository(str(remote)).references
    assert "refs/heads/fix/lint" not in pygit2.Repository(str(decoy)).references
    assert "token-for-tests" not in log


async def test_patcher_without_a_clone_url_commits_but_does_not_push(sample: Path) -> None:
    result, log = await run_agent(
        "patcher", {"push": True}, sample, secrets={"GIT_PUSH_TOKEN": "token-for-tests"}
    )
    assert result.ok, log
    assert result.outputs is not None
    assert result.outputs["pushed"] is False
    assert "names no repository (clone_url) to push to" in log


class _Recorder(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, dict(self.headers), body))
        self.send_response(204 if self.path != "/broken" else 500)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


async def test_notifier_signs_webhooks_and_reports_failed_deliveries(
    sample: Path, receiver: str
) -> None:
    secret = "whsec-0123456789"
    inputs = {
        "title": "Nightly",
        "message": "all good",
        "data": {"summary": {"high": 0}},
        "sinks": [
            {"kind": "webhook", "url": f"{receiver}/hook", "secret_env": "NOTIFIER_WEBHOOK_SECRET"},
            {"kind": "slack", "url": f"{receiver}/slack"},
            {"kind": "webhook", "url": f"{receiver}/broken"},
            {"kind": "webhook", "url": "http://127.0.0.1:9/unreachable"},
            {"kind": "file", "path": "out.jsonl"},
        ],
    }
    result, log = await run_agent(
        "notifier", inputs, sample, secrets={"NOTIFIER_WEBHOOK_SECRET": secret}
    )
    assert result.ok, log
    assert result.outputs is not None
    deliveries = result.outputs["deliveries"]
    assert [d["ok"] for d in deliveries] == [True, True, False, False, True]
    assert deliveries[2]["status"] == 500
    assert "FAILED" in log
    (hook_path, headers, body), (_, _, slack_body), _ = _Recorder.received
    assert hook_path == "/hook"
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Runner-Signature"] == f"sha256={expected}"
    assert json.loads(body)["title"] == "Nightly"
    assert "| high | 0 |" in json.loads(slack_body)["text"]
    written = (sample / "out.jsonl").read_text().splitlines()
    assert json.loads(written[0])["message"] == "all good"
    assert secret not in log
