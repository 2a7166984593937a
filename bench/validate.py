"""Benchmark: full validation of 10,000 workflow files vs the YAML parse floor.

Generates a workflows repo of N files (varied steps, needs, CEL conditions, templates, triggers),
then measures in the same run:
  floor  PyYAML's C loader alone (yaml.load_all with CSafeLoader) reading and parsing every file;
  ours   `runner validate` on the repo: loading with positions, JSON Schema, every semantic rule,
         CEL compilation and agent-input checks.
Prints documents per second for each and the ratio (target: ours within 3x of the floor).
Usage: python bench/validate.py [--files N] [--repeat R]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import yaml

from runner.spec.repo import builtin_agents, load_paths

AGENTS = ["security-scanner", "compliance-checker", "code-reviewer", "notifier"]
CRONS = ["0 3 * * *", "*/15 * * * *", "30 2 * * 1-5", "0 0 1 * *", "@daily"]


def workflow(i: int, rng: random.Random) -> str:
    n = rng.randint(2, 6)
    triggers = [
        "    - pull_request: {types: [opened, synchronize]}",
        f"    - push: {{branches: [main, release-{i % 7}], paths: ['src/**']}}",
    ]
    if i % 5 == 0:
        triggers.append(f"    - schedule: {{cron: '{CRONS[i % len(CRONS)]}', timezone: UTC}}")
    steps = ["    - id: scan", "      agent: security-scanner", "      with: {paths: ['.']}"]
    for s in range(1, n):
        agent = AGENTS[(i + s) % len(AGENTS)]
        steps += [
            f"    - id: step_{s}",
            f"      agent: {agent}",
            f"      needs: [{'scan' if s == 1 else f'step_{s - 1}'}]",
        ]
        if s % 2 == 0:
            steps.append(f'      when: "steps.scan.outputs.summary.high > {i % 10 + s}"')
        if agent == "notifier":
            steps += [
                "      run_if: always",
                "      with:",
                f"        title: 'run ${{{{ run.id }}}} of wf-{i}'",
                '        message: "${{ steps.scan.outputs.summary.high }} high findings"',
            ]
        elif agent == "compliance-checker":
            steps += [
                "      with:",
                '        findings: "${{ steps.scan.outputs.findings }}"',
                f"        max_severity: {['low', 'medium', 'high'][i % 3]}",
            ]
        steps.append(f"      timeout: {5 + i % 20}m")
    return "\n".join(
        [
            "apiVersion: runner/v1",
            "kind: Workflow",
            "metadata:",
            f"  name: wf-{i}",
            f"  description: generated workflow number {i}",
            "spec:",
            "  triggers:",
            *triggers,
            "  timeout: 30m",
            "  steps:",
            *steps,
            "",
        ]
    )


def floor(files: list[Path]) -> int:
    docs = 0
    for path in files:
        docs += sum(1 for _ in yaml.load_all(path.read_bytes(), Loader=yaml.CSafeLoader))
    return docs


def ours(root: Path) -> int:
    result = load_paths([str(root)])
    assert not result.errors, result.errors[:3]
    return len(result.bundle.workflows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="best of R runs of each")
    args = parser.parse_args()
    builtin_agents()  # loaded once per process, like the service does
    rng = random.Random(42)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "workflows").mkdir()
        files = []
        for i in range(args.files):
            path = root / "workflows" / f"wf-{i}.yaml"
            path.write_text(workflow(i, rng))
            files.append(path)
        best: dict[str, float] = {}
        counts: dict[str, int] = {}
        for _ in range(args.repeat):
            for name, run in (("floor", lambda: floor(files)), ("ours", lambda: ours(root))):
                started = time.perf_counter()
                counts[name] = run()
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
    for name, label in (
        ("floor", "PyYAML CSafeLoader parse only"),
        ("ours", "runner validate (full)"),
    ):
        rate = counts[name] / best[name]
        print(f"{label:32s} {counts[name]:6d} docs in {best[name]:6.2f}s = {rate:8.0f} docs/s")
    ratio = best["ours"] / best["floor"]
    print(f"ratio ours/floor: {ratio:.2f}x (target: within 3x)")


if __name__ == "__main__":
    main()
