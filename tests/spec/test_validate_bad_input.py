"""`runner validate` on a workflows repo holding what a careless or hostile author may commit:
every case ends in `path:line:col: message` and exit 1, never a traceback, and expressions are
refused past their size and nesting limits (which also keep validation of any file short)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_serve import runner

HEAD = """\
apiVersion: runner/v1
kind: Workflow
metadata: {name: w}
spec:
  triggers: [{manual: {}}]
  steps:
"""


def validate(tmp_path: Path, steps: str) -> tuple[int, list[str], str]:
    """Exit code, the error lines, and stderr of `runner validate` on a repo with one
    workflow whose steps are `steps`."""
    (tmp_path / "workflows").mkdir(exist_ok=True)
    (tmp_path / "agents").mkdir(exist_ok=True)
    (tmp_path / "workflows" / "w.yaml").write_text(HEAD + steps)
    done = runner(tmp_path, "validate", ".")
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done.returncode, done.stdout.splitlines(), done.stderr


def located(lines: list[str], line: int) -> list[str]:
    return [m for m in lines if re.match(rf"^workflows/w\.yaml:{line}:\d+: ", m)]


@pytest.mark.parametrize("sid", ["[a, b]", "{a: 1}", "[[1]]", "1" * 5000, "-" + "9" * 5000])
def test_a_step_id_of_any_shape_is_an_error_at_its_line(tmp_path: Path, sid: str) -> None:
    code, lines, _ = validate(
        tmp_path, f"    - id: {sid}\n      agent: security-scanner\n      needs: [{sid}]\n"
    )
    assert code == 1
    assert located(lines, 7), lines


def test_a_number_too_long_to_read_says_to_quote_it(tmp_path: Path) -> None:
    code, lines, _ = validate(tmp_path, f"    - id: {'1' * 5000}\n      agent: security-scanner\n")
    assert code == 1
    assert any("too large a number to read; quote it" in m for m in located(lines, 7)), lines


@pytest.mark.parametrize(
    ("when", "says"),
    [
        (
            "(" * 3000 + "true" + ")" * 3000,
            "nests brackets 3000 deep (at column 3000); the limit is 32",
        ),
        ("[" * 40 + "1" + "]" * 40 + " == 1", "nests brackets 40 deep"),
        ("!" * 4000 + "true", "nests operators too deep"),
        (" || ".join(["inputs.x == 'y'"] * 300), "the limit is 4096"),
    ],
    ids=["3000 parentheses", "40 brackets", "4000 negations", "a long condition"],
)
def test_expressions_past_their_limits_are_errors_at_their_line(
    tmp_path: Path, when: str, says: str
) -> None:
    code, lines, _ = validate(
        tmp_path, f'    - id: a\n      agent: security-scanner\n      when: "{when}"\n'
    )
    assert code == 1
    assert any(says in m for m in located(lines, 9)), lines


def test_nested_parentheses_within_the_limit_are_valid(tmp_path: Path) -> None:
    when = "(" * 32 + "true" + ")" * 32
    code, lines, errors = validate(
        tmp_path, f'    - id: a\n      agent: security-scanner\n      when: "{when}"\n'
    )
    assert code == 0, lines
    assert "valid: 1 workflow(s)" in errors


def test_a_file_with_too_many_expressions_is_refused_where_it_crosses_the_limit(
    tmp_path: Path,
) -> None:
    steps = "".join(
        f'    - id: s{i}\n      agent: security-scanner\n      when: "inputs.n == {i}"\n'
        for i in range(1001)
    )
    code, lines, _ = validate(tmp_path, steps)
    assert code == 1
    found = [m for m in lines if "more than 1000 expressions" in m]
    assert len(found) == 1, lines
    assert "split it into several files" in found[0]


def test_an_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    (tmp_path / "workflows").mkdir()
    (tmp_path / "agents").mkdir()
    (tmp_path / "workflows" / "bomb.yaml").write_text("\n".join(lines) + "\n")
    done = runner(tmp_path, "validate", ".")
    assert "Traceback" not in done.stdout + done.stderr
    assert done.returncode == 1
    assert re.search(
        r"^workflows/bomb\.yaml:\d+:\d+: .*more than 100000 nodes", done.stdout, re.M
    ), done.stdout
