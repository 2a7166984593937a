"""Comment commands as people type them on a pull request."""

from __future__ import annotations

import pytest

from runner.forges.commands import Command, parse_comment


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/approve", Command(verb="approve", line="/approve")),
        (
            "LGTM\n/approve 12 patch\nthanks",
            Command(verb="approve", run=12, step="patch", line="/approve 12 patch"),
        ),
        ("/approve #12", Command(verb="approve", run=12, line="/approve #12")),
        ("/approve patch", Command(verb="approve", step="patch", line="/approve patch")),
        (
            "/reject 3 not this week",
            Command(verb="reject", run=3, reason="not this week", line="/reject 3 not this week"),
        ),
        ("/reject too risky", Command(verb="reject", reason="too risky", line="/reject too risky")),
        ("/RETRY 4", Command(verb="retry", run=4, line="/RETRY 4")),
        ("/cancel", Command(verb="cancel", line="/cancel")),
        ("/help", Command(verb="help", line="/help")),
        (
            '/run deploy-check service=api version="1.2.3" dry=true',
            Command(
                verb="run",
                workflow="deploy-check",
                inputs={"service": "api", "version": "1.2.3", "dry": True},
                line='/run deploy-check service=api version="1.2.3" dry=true',
            ),
        ),
    ],
)
def test_commands(text: str, expected: Command) -> None:
    commands, errors = parse_comment(text)
    assert errors == []
    assert commands == [expected]


def test_several_commands_one_per_line() -> None:
    commands, _ = parse_comment("/approve 1\n/approve 2 patch\n/retry 3")
    assert [(c.verb, c.run) for c in commands] == [("approve", 1), ("approve", 2), ("retry", 3)]


@pytest.mark.parametrize(
    "text",
    [
        "> /approve\nquoting the author",
        "```\n/approve\n```",
        "please do not /approve yet",
        "the binary is in /usr/bin",
        "",
    ],
)
def test_text_that_is_not_a_command(text: str) -> None:
    assert parse_comment(text) == ([], [])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/aprove", "unknown command /aprove; try /help"),
        ("/run", "write /run WORKFLOW [key=value ...]"),
        ("/run wf nonsense", "/run input 'nonsense': write key=value"),
        ("/approve 1 patch extra", "write /approve [RUN] [STEP]"),
        ("/cancel 1 now", "write /cancel [RUN]"),
    ],
)
def test_mistakes_get_a_message_saying_how_to_write_it(text: str, message: str) -> None:
    commands, errors = parse_comment(text)
    assert commands == []
    assert errors == [message]
