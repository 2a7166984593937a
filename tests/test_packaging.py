"""The wheel carries the schemas and built-in agents, and the installed package reads them
from itself, not from a source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[1]
PIP = (sys.executable, "-m", "pip")


def test_wheel_ships_schemas_and_agents_and_uses_them(tmp_path: Path) -> None:
    subprocess.run(
        [
            *PIP,
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "d"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "d").glob("runner-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "runner/schemas/workflow.schema.json",
        "runner/schemas/agent.schema.json",
        "runner/schemas/events/github-push.schema.json",
        "runner/schemas/events/gitlab-note.schema.json",
        "runner/agents/patcher/agent.yaml",
        "runner/agents/security-scanner/agent.yaml",
        "runner/web/ui.html",
        "runner/executors/reaper.py",  # run by path (python -I -S), not imported
    ):
        assert expected in names
    target = tmp_path / "site"
    subprocess.run(
        [*PIP, "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import runner, runner.spec.schema as s, runner.spec.repo as r;"
        "print(runner.__file__);"
        "print(s.load_schema('Workflow')['$id']);"
        "print(sorted(r.builtin_agents()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=True,
    )
    location, schema_id, agents = done.stdout.splitlines()
    assert location.startswith(str(target))
    assert schema_id == "https://runner.dev/schemas/v1/workflow.schema.json"
    assert agents == str(
        ["code-reviewer", "compliance-checker", "notifier", "patcher", "security-scanner"]
    )
