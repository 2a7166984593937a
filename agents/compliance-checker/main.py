"""compliance-checker: policy over the repository and upstream findings.

Required files present, no finding above the allowed severity, and custom rules: CEL
expressions over `findings` (as given) and `files` (paths in the workspace) that must hold.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import celpy
from celpy.adapter import json_to_cel

ORDER = ("none", "low", "medium", "high", "critical")


def main() -> None:
    with open(os.environ["RUNNER_INPUT"], encoding="utf-8") as f:
        inputs = json.load(f)
    workspace = Path(os.environ["RUNNER_WORKSPACE"])
    files = sorted(
        p.relative_to(workspace).as_posix()
        for p in workspace.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(workspace).parts
    )
    findings = inputs.get("findings") or []
    violations = []
    for required in inputs.get("required_files") or []:
        if required not in files:
            violations.append({"rule": "required-file", "message": f"{required} is missing"})
    limit = inputs.get("max_severity", "high")
    above = [f for f in findings if ORDER.index(f.get("severity", "low")) > ORDER.index(limit)]
    for severity in ORDER[::-1]:
        count = sum(1 for f in above if f.get("severity") == severity)
        if count:
            violations.append(
                {
                    "rule": "max-severity",
                    "message": f"{count} {severity} finding(s); at most {limit} is allowed",
                }
            )
    env = celpy.Environment()
    activation = {"findings": json_to_cel(findings), "files": json_to_cel(files)}
    for rule in inputs.get("rules") or []:
        try:
            holds = env.program(env.compile(rule["expr"])).evaluate(activation)
        except Exception as exc:  # a broken rule is a violation, reported with its reason
            violations.append(
                {"rule": rule["name"], "message": f"rule could not be evaluated: {exc}"}
            )
            continue
        if holds is not True and str(holds) != "True":
            violations.append({"rule": rule["name"], "message": f"does not hold: {rule['expr']}"})
    passed = not violations
    print("compliance:", "passed" if passed else f"{len(violations)} violation(s)")
    for v in violations:
        print(f"  {v['rule']}: {v['message']}")
    with open(os.environ["RUNNER_OUTPUT"], "w", encoding="utf-8") as f:
        json.dump({"passed": passed, "violations": violations, "files_checked": len(files)}, f)


if __name__ == "__main__":
    main()
