"""A workflows repo in a plain local folder (the embedded default): read from disk on every
pass; its revision is the digest of its documents, so an edit is a new revision. Each file is
keyed by its content digest, so the reconciler compiles only the files that changed."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from runner.errors import TransientError
from runner.spec.compile import SourceFile
from runner.spec.repo import repo_files


class DirectorySource:
    def __init__(self, name: str, root: Path, interval: float = 10.0) -> None:
        self.name = name
        self.root = root.resolve()
        self.interval = interval
        self._files: dict[str, list[SourceFile]] = {}

    def _read(self) -> tuple[str, list[SourceFile]]:
        if not self.root.is_dir():
            raise TransientError(f"{self.root} is not a folder")
        files = []
        digest = hashlib.sha256()
        for f in repo_files(self.root, ""):
            digest.update(f"{f.path}\0{len(f.data)}\0".encode() + f.data)
            files.append(replace(f, key=hashlib.sha256(f.data).hexdigest()))
        return "content-" + digest.hexdigest()[:16], files

    async def fetch(self, deadline: float = 60.0) -> str:
        revision, files = await asyncio.to_thread(self._read)
        self._files = {revision: files}
        return revision

    async def files(self, revision: str, known: Callable[[str, str], bool]) -> list[SourceFile]:
        return self._files.get(revision) or (await asyncio.to_thread(self._read))[1]

    async def changes(self, since: str, revision: str) -> tuple[list[SourceFile], list[str]] | None:
        return None  # every pass reads the folder anyway: the full listing, keyed by content

    def agents_root(self, revision: str) -> Path:
        return self.root

    def rewritten(self, old: str, new: str) -> bool:
        return False
