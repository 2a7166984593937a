"""Applied revisions as bundles: the workflows and agents a run was pinned to, rebuilt from the
store, with repo-local agents' programs found in the source's checkout.

A workflows repo on local disk (`runner run --repo PATH`) is the source `local:<absolute path>`;
its revision is a digest of its documents, so the same content is the same revision.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from runner.errors import PermanentError
from runner.model import Agent, Bundle, StoredDocument
from runner.spec.compile import SourceFile, compile_files

LOCAL = "local:"


def local_source(path: Path) -> str:
    return LOCAL + str(path.resolve())


def content_revision(documents: list[StoredDocument]) -> str:
    """A revision id for documents that are not a git commit: their content digest."""
    digest = hashlib.sha256()
    for doc in sorted(documents, key=lambda d: (d.kind, d.name)):
        digest.update(f"{doc.kind}\0{doc.name}\0{doc.digest}\n".encode())
    return "content-" + digest.hexdigest()[:16]


class BundleLoader:
    """Compiles a source's stored revision into a Bundle (cached: revisions never change)."""

    def __init__(
        self,
        documents: Callable[[str, str], Awaitable[list[StoredDocument]]],
        builtins: Mapping[str, Agent],
        roots: Callable[[str, str], Path | None] | None = None,
    ) -> None:
        self._documents = documents
        self._builtins = builtins
        self._roots = roots or (lambda source, revision: None)
        self._cache: dict[tuple[str, str], Bundle] = {}

    def root(self, source: str, revision: str) -> Path | None:
        """The folder holding the source's `agents/` at `revision`, absolute; None when this
        process does not know the source (its repo-local agents then cannot run here)."""
        if source.startswith(LOCAL):
            return Path(source[len(LOCAL) :])
        found = self._roots(source, revision)
        return found.resolve() if found is not None else None

    async def bundle(self, source: str, revision: str) -> Bundle:
        key = (source, revision)
        if key not in self._cache:
            documents = await self._documents(source, revision)
            if not documents:
                raise PermanentError(f"revision {revision} of source {source!r} is not stored")
            root = self.root(source, revision)
            files = [
                SourceFile(
                    path=doc.path,
                    data=json.dumps(doc.content).encode(),
                    role="agent" if doc.kind == "Agent" else "workflows",
                    agent_dir=str(root / Path(doc.path).parent) if root else None,
                )
                for doc in documents
            ]
            result = compile_files(files, builtins=self._builtins)
            if result.errors:
                raise PermanentError(
                    f"revision {revision} of {source!r} no longer compiles: {result.errors[0]}"
                )
            self._cache[key] = result.bundle
        return self._cache[key]
