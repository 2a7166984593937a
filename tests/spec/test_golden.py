"""Golden validation cases: tests/spec/cases/<case>/ holds the YAML and expected.txt, the exact
errors `runner validate` prints for it (paths relative to the case folder).

A case folder laid out as a workflows repo (workflows/, agents/) is validated as one; otherwise
its YAML files are validated as files named on the command line. To write a new case's
expected.txt, run with RUNNER_UPDATE_GOLDEN=1, then read every line before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.spec.repo import is_repo, load_paths

CASES = Path(__file__).parent / "cases"
EXAMPLE = Path(__file__).parents[2] / "workflows-repo-example"


def _validate(case: Path) -> str:
    cwd = Path.cwd()
    os.chdir(case)
    try:
        if is_repo(Path(".")):
            targets = ["."]
        else:
            targets = sorted(p.name for p in Path(".").iterdir() if p.suffix in (".yaml", ".yml"))
        result = load_paths(targets)
    finally:
        os.chdir(cwd)
    return "".join(f"{e}\n" for e in result.errors)


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
def test_case(case: str) -> None:
    folder = CASES / case
    expected_file = folder / "expected.txt"
    actual = _validate(folder)
    if os.environ.get("RUNNER_UPDATE_GOLDEN"):
        expected_file.write_text(actual)
    expected = expected_file.read_text()
    assert expected.strip(), f"{case}: an invalid case must expect at least one error"
    assert actual == expected


def test_there_are_enough_distinct_cases() -> None:
    assert len([p for p in CASES.iterdir() if p.is_dir()]) >= 40


def test_example_repo_is_valid() -> None:
    result = load_paths([str(EXAMPLE)])
    assert result.errors == []
    assert sorted(result.bundle.workflows) == [
        "deploy-check",
        "nightly-compliance",
        "pr-security-review",
    ]
    assert "spdx-headers" in result.bundle.agents
