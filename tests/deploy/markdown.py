"""Fenced code blocks of the documentation, with what marks them.

A block may be preceded (on the line just before its fence) by an HTML comment that the
rendered page does not show: `<!-- file: PATH -->` names the file of a worked example that the
tests write out and run, `<!-- runner.yaml -->` marks a configuration to check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<lang>[\w+-]*)\s*$")
_MARK = re.compile(r"^\s*<!--\s*(?P<mark>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the first line of the content, 1-based
    lang: str
    mark: str | None
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Every fenced block of the Markdown file `path`, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        previous = _MARK.match(lines[i - 1]) if i else None
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path.name}:{i + 1}: a code block is never closed")
        found.append(
            Block(
                path=path,
                line=i + 2,
                lang=opening["lang"],
                mark=previous["mark"] if previous else None,
                text="\n".join(body) + "\n",
            )
        )
        i = j + 1
    return found
