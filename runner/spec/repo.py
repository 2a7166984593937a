"""Where documents come from: a workflows repo directory, files named on the command line, and
the built-in agents shipped inside the package.

A workflows repo holds Workflow documents in `workflows/**/*.yaml` and each repo-local agent in
`agents/<name>/agent.yaml`, next to its program. Other files are not read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import replace
from functools import cache
from importlib import resources
from pathlib import Path

from runner.errors import SpecInvalid, UsageError
from runner.executors.images import ImagePolicy
from runner.model import Agent
from runner.secrets.grants import AgentPolicy
from runner.spec.compile import Result, SourceFile, compile_files

YAML_SUFFIXES = (".yaml", ".yml")
WORKFLOWS_DIR, AGENTS_DIR = "workflows", "agents"


def _display(root: str, rel: str) -> str:
    return rel if root in ("", ".") else f"{root.rstrip('/')}/{rel}"


def is_repo(path: Path) -> bool:
    """A directory laid out as a workflows repo (it has workflows/ or agents/)."""
    return (path / WORKFLOWS_DIR).is_dir() or (path / AGENTS_DIR).is_dir()


def repo_layout(paths: Iterable[str]) -> list[tuple[str, str, str | None]]:
    """(path, role, agent_dir) for each file of a repo listing (paths relative to its root).

    Shared by the filesystem and git readers so both see a repo the same way.
    """
    out: list[tuple[str, str, str | None]] = []
    for rel in sorted(paths):
        parts = rel.split("/")
        if not rel.endswith(YAML_SUFFIXES):
            continue
        if parts[0] == WORKFLOWS_DIR and len(parts) > 1:
            out.append((rel, "workflows", None))
        elif parts[0] == AGENTS_DIR and len(parts) == 3 and parts[2] in ("agent.yaml", "agent.yml"):
            out.append((rel, "agent", "/".join(parts[:2])))
    return out


def repo_files(root: Path, display_root: str | None = None) -> list[SourceFile]:
    """The documents of a workflows repo directory, with display paths under `display_root`."""
    shown = str(root) if display_root is None else display_root
    listing = [
        p.relative_to(root).as_posix()
        for top in (WORKFLOWS_DIR, AGENTS_DIR)
        if (root / top).is_dir()
        for p in (root / top).rglob("*")
        if p.is_file()
    ]
    return [
        SourceFile(
            path=_display(shown, rel),
            data=(root / rel).read_bytes(),
            role="workflows" if role == "workflows" else "agent",
            agent_dir=str((root / agent_dir).resolve()) if agent_dir else None,
        )
        for rel, role, agent_dir in repo_layout(listing)
    ]


@cache
def builtin_agents() -> Mapping[str, Agent]:
    """The five built-in agents, read from the installed package (always valid: tested)."""
    root = resources.files("runner").joinpath("agents")
    files = [
        SourceFile(
            path=f"<builtin>/agents/{entry.name}/agent.yaml",
            data=entry.joinpath("agent.yaml").read_bytes(),
            role="agent",
            agent_dir=str(entry),
        )
        for entry in sorted(root.iterdir(), key=lambda e: e.name)
        if entry.joinpath("agent.yaml").is_file()
    ]
    result = compile_files(files, builtins={})
    if result.errors:
        raise SpecInvalid(result.errors)
    return {name: replace(agent, builtin=True) for name, agent in result.bundle.agents.items()}


def _enclosing_repo(path: Path) -> Path | None:
    """The workflows repo a file under its `workflows/` folder belongs to, if any."""
    for parent in path.resolve().parents:
        if parent.name == WORKFLOWS_DIR and (parent.parent / AGENTS_DIR).is_dir():
            return parent.parent
    return None


def _agent_files(repo: Path, display: str) -> list[SourceFile]:
    return [f for f in repo_files(repo, display) if f.role == "agent"]


def load_paths(
    paths: Iterable[str],
    *,
    images: ImagePolicy | None = None,
    policy: AgentPolicy | None = None,
) -> Result:
    """Validate workflows repo directories and/or single files, as `runner validate` does
    (against a configuration's image and agent policies, when given).

    A single file inside a repo's workflows/ folder is checked against that repo's agents too.
    """
    files: list[SourceFile] = []
    repos: dict[Path, str] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            if is_repo(path):
                files += repo_files(path, raw)
            else:
                found = sorted(p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES)
                files += [SourceFile(path=p.as_posix(), data=p.read_bytes()) for p in found]
        elif path.is_file():
            files.append(SourceFile(path=raw, data=path.read_bytes()))
            repo = _enclosing_repo(path)
            if repo is not None:
                repos.setdefault(repo, os.path.relpath(repo))
        else:
            raise UsageError(f"{raw}: no such file or directory")
    named = {Path(f.path).resolve() for f in files}
    for repo, display in repos.items():
        files += [f for f in _agent_files(repo, display) if Path(f.path).resolve() not in named]
    return compile_files(files, builtins=builtin_agents(), images=images, policy=policy)
