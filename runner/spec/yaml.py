"""Position-tracking YAML loader for workflow and agent documents.

PyYAML composes the node graph (with libyaml's C parser where present); this module turns nodes
into plain JSON-like values itself so that it can refuse what a workflow file should never
contain: duplicate keys, non-string keys (notably `on:`, which YAML 1.1 reads as `true`), custom
tags, and documents that explode through aliases ("billion laughs"). The node graph is kept, so a
JSON pointer found later by schema or semantic validation maps back to a 1-based line and column
without paying for a position map on the happy path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runner.errors import SpecError

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_FILE_BYTES = 1024 * 1024
MAX_NODES = 100_000
MAX_DEPTH = 64

_T = "tag:yaml.org,2002:"
_STR, _MERGE, _TIMESTAMP = _T + "str", _T + "merge", _T + "timestamp"
_MAP, _SEQ = _T + "map", _T + "seq"
_SCALARS: dict[str, Callable[[Any, ScalarNode], Any]] = {
    _T + tag: SafeConstructor.yaml_constructors[_T + tag]
    for tag in ("null", "bool", "int", "float")
}


def pointer_of(parts: Sequence[str | int]) -> str:
    """RFC 6901 pointer for a sequence of keys and indexes ('' for the whole document)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


@dataclass(frozen=True, kw_only=True)
class Document:
    """One YAML document of a file: its plain data, and positions on demand.

    The node graph is not kept: thousands of live node objects make every garbage collection
    slower (validation of a large repo took 3x longer). It is composed again from the file's
    text only when an error needs a position.
    """

    path: str
    index: int
    data: Any
    text: str = field(repr=False, compare=False)

    @cached_property
    def root(self) -> Node:
        for i, (loader, node) in enumerate(_compose(self.text)):
            if i == self.index and node is not None:
                _flatten_merges(loader, node, set())
                return node
        raise LookupError(f"{self.path} has no document {self.index}")  # pragma: no cover

    def position(self, parts: Sequence[str | int], *, key: bool = False) -> tuple[int, int]:
        """1-based (line, column) of the node at `parts`, or of its key when `key` is true.

        A path that runs past the document (a property that is missing) resolves to the deepest
        node that exists, which is where the user has to add it.
        """
        node: Node = self.root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            found: Node | None = None
            if isinstance(node, MappingNode):
                for k, v in node.value:
                    if isinstance(k, ScalarNode) and k.value == str(part):
                        found = k if (last and key) else v
            elif isinstance(node, SequenceNode) and isinstance(part, int) and part >= 0:
                found = node.value[part] if part < len(node.value) else None
            if found is None:
                break
            node = found
        mark = node.start_mark
        return mark.line + 1, mark.column + 1

    def error(self, parts: Sequence[str | int], message: str, *, key: bool = False) -> SpecError:
        """A `SpecError` at the node (or key) that `parts` names."""
        line, column = self.position(parts, key=key)
        return SpecError(
            path=self.path,
            line=line,
            column=column,
            message=message,
            pointer=pointer_of(parts),
            document=self.index,
        )


@dataclass(frozen=True, kw_only=True)
class LoadedFile:
    path: str
    documents: list[Document]
    errors: list[SpecError]


class _Refused(Exception):
    """Stops converting a document: the node graph is not one we accept."""

    def __init__(self, node: Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


def _flatten_merges(loader: Any, node: Node, seen: set[int]) -> None:
    """Apply `<<` merge keys in place, as conversion did, so positions match the data."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, MappingNode):
        if any(k.tag == _MERGE for k, _ in node.value):
            loader.flatten_mapping(node)
        for _, value in node.value:
            _flatten_merges(loader, value, seen)
    elif isinstance(node, SequenceNode):
        for item in node.value:
            _flatten_merges(loader, item, seen)


def _find(root: Node, target: Node) -> list[str | int]:
    """Path from `root` to `target` (by identity); only used to describe an error."""
    stack: list[tuple[Node, list[str | int]]] = [(root, [])]
    seen: set[int] = set()
    while stack:
        node, parts = stack.pop()
        if node is target:
            return parts
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            for k, v in node.value:
                if k is target:
                    return parts
                stack.append((v, [*parts, str(k.value)]))
        elif isinstance(node, SequenceNode):
            stack.extend((v, [*parts, i]) for i, v in enumerate(node.value))
    return []


def _key_message(key: Node, where: list[str | int]) -> str:
    is_on = isinstance(key, ScalarNode) and key.tag == _T + "bool" and key.value.lower() == "on"
    if is_on and where in ([], ["spec"]):
        return (
            "'on:' is read by YAML 1.1 as the boolean true, not as a key; "
            "write 'triggers:' to declare what starts a workflow"
        )
    if isinstance(key, ScalarNode):
        return f"mapping keys must be strings; quote {key.value!r} to use it as a key"
    return "mapping keys must be plain strings, not lists or mappings"


class _Converter:
    """Turns one composed document into JSON-like values, enforcing the limits.

    Refusals that leave the rest of the document readable (a bad key, a custom tag) are
    collected so that all of them are reported; running out of the node budget, nesting too
    deep or a recursive alias stop the conversion at once (`_Refused`).
    """

    def __init__(self, loader: Any, max_nodes: int) -> None:
        self.loader = loader
        self.budget = max_nodes
        self.max_nodes = max_nodes
        self.duplicates: list[tuple[Node, str]] = []
        self.bad_keys: list[Node] = []
        self.refusals: list[tuple[Node, str]] = []
        self.active: set[int] = set()

    def convert(self, node: Node, depth: int = 0) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise _Refused(
                node,
                f"document expands to more than {self.max_nodes} nodes (through aliases?); "
                "a workflow document is never that large, so it is refused",
            )
        if depth > MAX_DEPTH:
            raise _Refused(node, f"nesting is deeper than {MAX_DEPTH} levels")
        tag = node.tag
        if isinstance(node, ScalarNode):
            if tag == _STR:
                return node.value
            construct = _SCALARS.get(tag)
            if construct is not None:
                try:
                    return construct(self.loader, node)
                except (ValueError, OverflowError):  # e.g. an integer of 5,000 digits
                    shown = node.value if len(node.value) <= 24 else node.value[:20] + "..."
                    self.refusals.append(
                        (node, f"{shown!r} is too large a number to read; quote it as a string")
                    )
                    return None
            if tag == _TIMESTAMP:
                return node.value  # JSON has no dates: keep the text as written
            self.refusals.append(
                (node, f"unsupported YAML tag {tag!r}; use plain strings and numbers")
            )
            return None
        if id(node) in self.active:
            raise _Refused(node, "recursive alias: this value contains itself and never ends")
        if tag not in (_SEQ, _MAP):
            what = "list" if isinstance(node, SequenceNode) else "mapping"
            self.refusals.append((node, f"unsupported YAML tag {tag!r} on a {what}"))
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.convert(item, depth + 1) for item in node.value]
            assert isinstance(node, MappingNode)  # PyYAML has three kinds of node
            return self._mapping(node, depth)
        finally:
            self.active.discard(id(node))

    def _mapping(self, node: MappingNode, depth: int) -> dict[str, Any]:
        merged = 0
        if any(k.tag == _MERGE for k, _ in node.value):
            own = sum(1 for k, _ in node.value if k.tag != _MERGE)
            self.loader.flatten_mapping(node)
            merged = len(node.value) - own
        out: dict[str, Any] = {}
        seen: set[str] = set()
        for i, (key_node, value_node) in enumerate(node.value):
            if not (isinstance(key_node, ScalarNode) and key_node.tag == _STR):
                self.bad_keys.append(key_node)
                continue
            key = key_node.value
            if i >= merged:  # keys written here may override merged ones, not each other
                if key in seen:
                    self.duplicates.append((key_node, key))
                seen.add(key)
            out[key] = self.convert(value_node, depth + 1)
        return out

    def errors(self, path: str, index: int, root: Node) -> list[SpecError]:
        found: list[tuple[Node, str, list[str | int]]] = []
        for key_node in self.bad_keys:
            where = _find(root, key_node)
            found.append((key_node, _key_message(key_node, where), where))
        found += [(n, m, _find(root, n)) for n, m in self.refusals]
        found += [
            (n, f"duplicate key {k!r}: each key may appear once in a mapping", [*_find(root, n), k])
            for n, k in self.duplicates
        ]
        return [
            SpecError(
                path=path,
                line=node.start_mark.line + 1,
                column=node.start_mark.column + 1,
                message=message,
                pointer=pointer_of(parts),
                document=index,
            )
            for node, message, parts in found
        ]


def _position_in(text: str, offset: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


def _syntax_error(path: str, text: str, exc: yaml.YAMLError) -> SpecError:
    if isinstance(exc, yaml.reader.ReaderError):
        line, column = _position_in(text, exc.position)
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        message = f"YAML syntax error: unacceptable character #x{char:04x}: {exc.reason}"
        return SpecError(path=path, line=line, column=column, message=message)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    message = f"YAML syntax error: {problem}"
    if context and context_mark is not None and context_mark is not mark:
        start = f"line {context_mark.line + 1}, column {context_mark.column + 1}"
        message += f" ({context} that starts at {start})"
    elif context:
        message += f" ({context})"
    return SpecError(path=path, line=line, column=column, message=message)


def _decode(path: str, data: bytes) -> tuple[str | None, SpecError | None]:
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        return None, SpecError(
            path=path, line=line, column=column, message="file is not valid UTF-8; save it as UTF-8"
        )


def _compose(text: str) -> Iterator[tuple[Any, Node | None]]:
    loader = _Loader(text)
    try:
        while loader.check_node():
            yield loader, loader.get_node()
    finally:
        loader.dispose()


def load_bytes(
    path: str, data: bytes, *, max_bytes: int = MAX_FILE_BYTES, max_nodes: int = MAX_NODES
) -> LoadedFile:
    """Load every document of one file; problems come back as errors, never as exceptions."""
    if len(data) > max_bytes:
        message = f"file is {len(data)} bytes; the limit is {max_bytes} bytes: split it up"
        return LoadedFile(
            path=path,
            documents=[],
            errors=[SpecError(path=path, line=1, column=1, message=message)],
        )
    text, error = _decode(path, data)
    if text is None:
        return LoadedFile(path=path, documents=[], errors=[error] if error else [])
    documents: list[Document] = []
    errors: list[SpecError] = []
    index = 0
    try:
        for loader, root in _compose(text):
            if root is None or (isinstance(root, ScalarNode) and root.tag == _T + "null"):
                index += 1  # an empty document (`---` alone): nothing to check
                continue
            converter = _Converter(loader, max_nodes)
            try:
                value = converter.convert(root)
            except _Refused as refused:
                mark = refused.node.start_mark
                errors.append(
                    SpecError(
                        path=path,
                        line=mark.line + 1,
                        column=mark.column + 1,
                        message=refused.message,
                        pointer=pointer_of(_find(root, refused.node)),
                        document=index,
                    )
                )
            else:
                problems = converter.errors(path, index, root)
                errors += problems
                if not converter.bad_keys and not converter.refusals:
                    documents.append(Document(path=path, index=index, data=value, text=text))
            index += 1
    except yaml.YAMLError as exc:
        errors.append(_syntax_error(path, text, exc))
    return LoadedFile(path=path, documents=documents, errors=errors)
