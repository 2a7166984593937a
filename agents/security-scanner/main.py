"""security-scanner: committed secrets (detect-secrets) and risky Python (bandit) in the workspace.

Agent protocol: inputs in $RUNNER_INPUT, one JSON object to $RUNNER_OUTPUT, files in
$RUNNER_WORKSPACE. Secret values are never printed or returned, only where they are.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from detect_secrets import SecretsCollection
from detect_secrets.settings import default_settings

SEVERITIES = ("critical", "high", "medium", "low")
CRITICAL_SECRETS = {
    "Private Key",
    "AWS Access Key",
    "GitHub Token",
    "Slack Token",
    "Stripe Access Key",
}


def selected(workspace: Path, paths: list[str], exclude: list[str]) -> list[Path]:
    files = []
    for path in sorted(workspace.rglob("*")):
        rel = path.relative_to(workspace).as_posix()
        if not path.is_file() or rel.startswith(".git/"):
            continue
        included = any(
            p in (".", "*", "**") or fnmatch.fnmatch(rel, p) or rel.startswith(p.rstrip("/") + "/")
            for p in paths
        )
        if included and not any(fnmatch.fnmatch(rel, e) for e in exclude):
            files.append(path)
    return files


def secret_findings(
    workspace: Path, files: list[Path], values: set[str]
) -> list[dict[str, object]]:
    collection = SecretsCollection()
    with default_settings():
        for path in files:
            collection.scan_file(str(path))
    findings = []
    for filename, secret in collection:
        if secret.secret_value:
            values.add(secret.secret_value)
        severity = "critical" if secret.type in CRITICAL_SECRETS else "high"
        findings.append(
            {
                "rule": "secret/" + secret.type.lower().replace(" ", "-"),
                "severity": severity,
                "file": Path(filename).relative_to(workspace).as_posix(),
                "line": secret.line_number,
                "message": f"{secret.type} committed to the repository (value redacted); "
                "revoke it and load it from a secret store",
                "tool": "detect-secrets",
            }
        )
    return findings


def redact(text: str, values: set[str]) -> str:
    """Never repeat a secret: values detect-secrets found, and what bandit quotes as a password."""
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "***")
    return re.sub(r"(hardcoded password[^:]*: )'[^']*'", r"\1'***'", text, flags=re.IGNORECASE)


def bandit_findings(
    workspace: Path, files: list[Path], values: set[str]
) -> list[dict[str, object]]:
    python = [str(p) for p in files if p.suffix == ".py"]
    if not python:
        return []
    done = subprocess.run(
        [sys.executable, "-I", "-m", "bandit", "-q", "-f", "json", *python],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode not in (0, 1):
        raise SystemExit(f"bandit failed: {done.stderr.strip()}")
    report = json.loads(done.stdout or "{}")
    return [
        {
            "rule": f"bandit/{r['test_id']}",
            "severity": r["issue_severity"].lower(),
            "file": Path(r["filename"]).relative_to(workspace).as_posix(),
            "line": r["line_number"],
            "message": redact(f"{r['issue_text']} ({r['test_name']})", values),
            "tool": "bandit",
        }
        for r in report.get("results", [])
    ]


def main() -> None:
    with open(os.environ["RUNNER_INPUT"], encoding="utf-8") as f:
        inputs = json.load(f)
    workspace = Path(os.environ["RUNNER_WORKSPACE"]).resolve()
    files = selected(workspace, inputs.get("paths") or ["."], inputs.get("exclude") or [])
    values: set[str] = set()
    findings = secret_findings(workspace, files, values) + bandit_findings(workspace, files, values)
    findings.sort(
        key=lambda f: (SEVERITIES.index(str(f["severity"])), str(f["file"]), int(f["line"]))
    )  # type: ignore[call-overload]
    summary = {s: sum(1 for f in findings if f["severity"] == s) for s in SEVERITIES}
    print(f"scanned {len(files)} file(s): " + ", ".join(f"{summary[s]} {s}" for s in SEVERITIES))
    for finding in findings:
        where = f"{finding['file']}:{finding['line']}"
        print(f"  {finding['severity']:8s} {where} {finding['rule']}: {finding['message']}")
    with open(os.environ["RUNNER_OUTPUT"], "w", encoding="utf-8") as f:
        json.dump({"findings": findings, "summary": summary, "files_scanned": len(files)}, f)


if __name__ == "__main__":
    main()
