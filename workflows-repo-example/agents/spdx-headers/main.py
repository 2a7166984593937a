"""Repo-local agent: which source files lack an SPDX-License-Identifier header.

Agent protocol: inputs in $RUNNER_INPUT (JSON), output to $RUNNER_OUTPUT, files in
$RUNNER_WORKSPACE. Standard library only.
"""

import json
import os
import pathlib
import re

HEADER = re.compile(r"SPDX-License-Identifier:\s*(\S+)")


def main() -> None:
    with open(os.environ["RUNNER_INPUT"], encoding="utf-8") as f:
        inputs = json.load(f)
    workspace = pathlib.Path(os.environ.get("RUNNER_WORKSPACE", "."))
    expected = inputs.get("license")
    files = sorted(
        {p for pattern in inputs.get("paths", ["**/*.py"]) for p in workspace.glob(pattern)}
    )
    missing, wrong = [], []
    for path in files:
        if not path.is_file():
            continue
        head = path.read_text(encoding="utf-8", errors="replace")[:2048]
        match = HEADER.search(head)
        rel = path.relative_to(workspace).as_posix()
        if match is None:
            missing.append(rel)
        elif expected and match.group(1) != expected:
            wrong.append(rel)
        print(f"{rel}: {match.group(1) if match else 'no SPDX header'}")
    output = {"checked": len(files), "missing": missing, "wrong": wrong}
    with open(os.environ["RUNNER_OUTPUT"], "w", encoding="utf-8") as f:
        json.dump(output, f)


if __name__ == "__main__":
    main()
