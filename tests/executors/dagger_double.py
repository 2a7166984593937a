"""A Dagger engine DOUBLE: a small GraphQL server on 127.0.0.1 that the real `dagger-io` SDK
talks to in attach mode (`DAGGER_SESSION_PORT` + `DAGGER_SESSION_TOKEN`), as it would to the
session a `dagger run` or `dagger session` opens.

It is not Dagger. It speaks the slice of Dagger's API the runner uses, the way the SDK sends it:
HTTP POST /query with basic auth (the session token as user name), schema introspection at
connect, object ids passed between queries, `node(id:)` / `load<Type>FromID` to reload them,
exec errors as `EXEC_ERROR` extensions carrying exit code, stdout and stderr, and secret values
scrubbed from exec output. Its schema below follows the field and argument names of the SDK's
generated client (dagger-io 0.21); types are simplified (every object id is an `ID`).

"Containers" are processes under bubblewrap with a root built from this machine's top-level
directories (read-only: the "image"), a tmpfs /tmp, their own PID namespace, and the container's
own paths (new files, mounts) bound in. Every exec works on copies, so objects stay immutable
like the engine's. Exec results are cached by their inputs, as the engine caches by call
digest: the same exec asked twice runs once unless something (a cache-buster) differs.
Unlike the engine there are no image pulls, no registry, no network isolation (Dagger gives
containers network too), and no cgroup limits (Dagger exposes none either).

Test controls: `queries` (every query text received), `variables`, `execs` (argv of every
exec that really ran), `exec_delay` (seconds an exec waits before it starts), `version_delay`
(a busy engine), `pull_errors` (address -> registry error), `cut_exec_answers` (run the next N
exec queries but cut the connection instead of answering, as a dropped proxy connection would),
`stop()`/`start()` on the same port (a restart loses every object, as an engine restart ends
the session).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from graphql import GraphQLError, build_schema, graphql_sync

VERSION = "v0.21.11"

SDL = """
interface Node { id: ID! }
scalar Platform
scalar ContainerID
scalar DirectoryID
scalar FileID
scalar SecretID
enum ReturnType { ANY FAILURE SUCCESS }

type Query {
  container(platform: Platform): Container!
  host: Host!
  setSecret(name: String!, plaintext: String!): Secret!
  version: String!
  node(id: ID!): Node
  loadContainerFromID(id: ContainerID!): Container!
  loadDirectoryFromID(id: DirectoryID!): Directory!
  loadFileFromID(id: FileID!): File!
  loadSecretFromID(id: SecretID!): Secret!
}

type Container implements Node {
  id: ID!
  from(address: String!): Container!
  withEnvVariable(name: String!, value: String!, expand: Boolean = false): Container!
  withSecretVariable(name: String!, secret: SecretID!): Container!
  withMountedDirectory(path: String!, source: DirectoryID!, owner: String = "",
                       readOnly: Boolean = false, expand: Boolean = false): Container!
  withNewFile(path: String!, contents: String!, permissions: Int = 420, owner: String = "",
              expand: Boolean = false): Container!
  withWorkdir(path: String!, expand: Boolean = false): Container!
  withExec(args: [String!]!, useEntrypoint: Boolean = false, stdin: String = "",
           redirectStdin: String = "", redirectStdout: String = "", redirectStderr: String = "",
           expect: ReturnType = SUCCESS, experimentalPrivilegedNesting: Boolean = false,
           insecureRootCapabilities: Boolean = false, expand: Boolean = false,
           noInit: Boolean = false): Container!
  sync: ID!
  exitCode: Int!
  stdout: String!
  stderr: String!
  combinedOutput: String!
  file(path: String!, expand: Boolean = false): File!
  directory(path: String!, expand: Boolean = false): Directory!
}

type Directory implements Node {
  id: ID!
  digest: String!
  entries(path: String): [String!]!
  export(path: String!, wipe: Boolean = false): String!
}

type File implements Node {
  id: ID!
  contents(offsetLines: Int, limitLines: Int): String!
  size: Int!
}

type Host implements Node {
  id: ID!
  directory(path: String!, exclude: [String!] = [], include: [String!] = [],
            noCache: Boolean = false, gitignore: Boolean = false): Directory!
}

type Secret implements Node {
  id: ID!
  name: String!
}
"""

_ALLOWED = {"ANY": (0, 127), "FAILURE": (1, 127), "SUCCESS": (0, 0)}


def _allowed(code: int, expect: str) -> bool:
    low, high = _ALLOWED[expect]
    return low <= code <= high or (expect != "SUCCESS" and 192 <= code <= 255)


def tree_digest(path: Path) -> str:
    """Content digest of a directory tree: names, modes (exec bit), bytes, link targets."""
    h = hashlib.sha256()
    if not path.exists():
        return "sha256:" + h.hexdigest()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = Path(root, name)
            rel = full.relative_to(path).as_posix()
            mode = full.lstat().st_mode
            h.update(rel.encode() + b"\0" + str(mode & 0o111).encode() + b"\0")
            if stat.S_ISLNK(mode):
                h.update(os.readlink(full).encode())
            elif stat.S_ISREG(mode):
                h.update(full.read_bytes())
            h.update(b"\0")
        for name in dirs:
            h.update(Path(root, name).relative_to(path).as_posix().encode() + b"/\0")
    return "sha256:" + h.hexdigest()


def _replace_copy(source: str, target: str) -> None:
    """copy2 over an existing (maybe read-only, like git objects) file."""
    if os.path.lexists(target):
        os.unlink(target)
    shutil.copy2(source, target, follow_symlinks=False)


@dataclass(frozen=True)
class ImageDouble:
    """What `from(address)` gives: an environment and read-only directories bound in."""

    env: dict[str, str]
    binds: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecResult:
    code: int
    stdout: str
    stderr: str
    combined: str


class Obj:
    typename = "Node"

    def __init__(self, session: Session) -> None:
        self.session = session
        self.id = f"{self.typename}:{uuid.uuid4().hex}"
        session.objects[self.id] = self


class Secret(Obj):
    typename = "Secret"

    def __init__(self, session: Session, name: str, plaintext: str) -> None:
        super().__init__(session)
        self.name, self.plaintext = name, plaintext

    def f_name(self) -> str:
        return self.name


class Directory(Obj):
    typename = "Directory"

    def __init__(self, session: Session, path: Path) -> None:
        super().__init__(session)
        self.path = path

    def f_digest(self) -> str:
        return tree_digest(self.path)

    def f_entries(self, path: str | None = None) -> list[str]:
        return sorted(os.listdir(self.path / (path or ".")))

    def f_export(self, path: str, wipe: bool = False) -> str:
        target = Path(path)
        target.mkdir(parents=True, exist_ok=True)
        if wipe:  # what the exported tree does not have goes, deepest first
            for root, dirs, files in os.walk(target, topdown=False):
                for name in files + dirs:
                    here = Path(root, name)
                    there = self.path / here.relative_to(target)
                    is_dir = here.is_dir() and not here.is_symlink()
                    if os.path.lexists(there) and is_dir == (
                        there.is_dir() and not there.is_symlink()
                    ):
                        continue
                    shutil.rmtree(here) if is_dir else here.unlink()
        shutil.copytree(
            self.path, target, symlinks=True, dirs_exist_ok=True, copy_function=_replace_copy
        )
        return str(target)


class File(Obj):
    typename = "File"

    def __init__(self, session: Session, path: Path, shown: str) -> None:
        super().__init__(session)
        self.path, self.shown = path, shown

    def _check(self) -> None:
        if not self.path.is_file():
            raise GraphQLError(f"lstat {self.shown}: no such file or directory")

    def f_contents(self, offsetLines: int | None = None, limitLines: int | None = None) -> str:
        self._check()
        text = self.path.read_text(encoding="utf-8", errors="replace")
        if offsetLines is None and limitLines is None:
            return text
        lines = text.splitlines(keepends=True)[offsetLines or 0 :]
        return "".join(lines if limitLines is None else lines[:limitLines])

    def f_size(self) -> int:
        self._check()
        return self.path.stat().st_size


class Host(Obj):
    typename = "Host"

    def f_directory(self, path: str, **_: Any) -> Directory:
        source = Path(path)
        if not source.is_dir():
            raise GraphQLError(f"host directory {path}: no such directory")
        copy = self.session.scratch()
        shutil.copytree(source, copy, symlinks=True, dirs_exist_ok=True)
        return Directory(self.session, copy)


@dataclass(frozen=True)
class State:
    """A container's configuration; `fs` holds the paths it created itself (absolute paths
    under it, e.g. fs/runner/io/input.json), `mounts` map container paths to directories."""

    image: ImageDouble | None = None
    address: str = ""
    env: tuple[tuple[str, str], ...] = ()
    secrets: tuple[tuple[str, Secret], ...] = ()
    mounts: tuple[tuple[str, Directory, bool], ...] = ()
    files: tuple[tuple[str, str, int], ...] = ()  # written before the next exec
    workdir: str = "/"
    exec: tuple[tuple[str, ...], str] | None = None


class Container(Obj):
    typename = "Container"

    def __init__(
        self,
        session: Session,
        state: State,
        *,
        parent: Container | None = None,
        fs: Path | None = None,
    ) -> None:
        super().__init__(session)
        self.state, self.parent, self.fs = state, parent, fs
        self.result: ExecResult | None = None
        self.evaluated = False
        self.lock = threading.Lock()
        # after an exec: mount path -> (id of the directory mounted before, the one after)
        self.mounted: dict[str, tuple[str, Directory]] = {}

    def carried(self, path: str, directory: Directory) -> Directory:
        """What a later container built on this one sees at a mount: the exec's writes."""
        before, after = self.mounted.get(path, ("", directory))
        return after if before == directory.id else directory

    def _with(self, **changes: Any) -> Container:
        if self.state.exec is not None:  # build on the result of the exec
            base = State(
                image=self.state.image,
                address=self.state.address,
                env=self.state.env,
                secrets=self.state.secrets,
                mounts=self.state.mounts,
                workdir=self.state.workdir,
            )
            return Container(self.session, replace(base, **changes), parent=self)
        return Container(self.session, replace(self.state, **changes), parent=self.parent)

    # -- builders ---------------------------------------------------------------------------
    def f_from(self, address: str) -> Container:
        failure = self.session.engine.pull_errors.get(address)
        if failure:
            raise GraphQLError(f"failed to resolve source metadata for {address}: {failure}")
        image = self.session.engine.images.get(address)
        if image is None:
            raise GraphQLError(
                f"failed to resolve source metadata for {address}: not found (engine double: "
                f"known images are {sorted(self.session.engine.images)})"
            )
        return Container(self.session, State(image=image, address=address))

    def f_withEnvVariable(self, name: str, value: str, **_: Any) -> Container:
        env = (*tuple((k, v) for k, v in self.state.env if k != name), (name, value))
        return self._with(env=env)

    def f_withSecretVariable(self, name: str, secret: str) -> Container:
        found = self.session.get(secret, Secret)
        secrets = (*tuple((k, s) for k, s in self.state.secrets if k != name), (name, found))
        return self._with(secrets=secrets)

    def f_withMountedDirectory(
        self,
        path: str,
        source: str,
        readOnly: bool = False,
        **_: Any,
    ) -> Container:
        directory = self.session.get(source, Directory)
        mounts = (*tuple(m for m in self.state.mounts if m[0] != path), (path, directory, readOnly))
        return self._with(mounts=mounts)

    def f_withNewFile(
        self, path: str, contents: str, permissions: int = 420, **_: Any
    ) -> Container:
        return self._with(files=(*self.state.files, (path, contents, permissions)))

    def f_withWorkdir(self, path: str, **_: Any) -> Container:
        return self._with(workdir=path)

    def f_withExec(self, args: list[str], expect: str = "SUCCESS", **_: Any) -> Container:
        return self._with(exec=(tuple(args), expect))

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self) -> Container:
        with self.lock:
            if not self.evaluated:
                self.session.engine.evaluate(self)
                self.evaluated = True
        return self

    def _result(self) -> ExecResult:
        self.evaluate()
        if self.result is None:
            raise GraphQLError("no command has been set")
        return self.result

    def f_sync(self) -> str:
        self.evaluate()
        return self.id

    def f_exitCode(self) -> int:
        return self._result().code

    def f_stdout(self) -> str:
        return self._result().stdout

    def f_stderr(self) -> str:
        return self._result().stderr

    def f_combinedOutput(self) -> str:
        return self._result().combined

    def resolve(self, path: str) -> Path:
        """The host path holding `path` as this (evaluated) container sees it."""
        self.evaluate()
        target = Path(self.state.workdir, path) if not path.startswith("/") else Path(path)
        for mount, directory, _ in sorted(self.state.mounts, key=lambda m: -len(m[0])):
            if target == Path(mount) or Path(mount) in target.parents:
                return directory.path / target.relative_to(mount)
        if self.fs is not None and (self.fs / target.relative_to("/")).exists():
            return self.fs / target.relative_to("/")
        return target  # the "image": this machine's own files

    def f_file(self, path: str, **_: Any) -> File:
        return File(self.session, self.resolve(path), path)

    def f_directory(self, path: str, **_: Any) -> Directory:
        found = self.resolve(path)
        if not found.is_dir():
            raise GraphQLError(f"lstat {path}: no such file or directory")
        return Directory(self.session, found)


class Root:
    typename = "Query"

    def __init__(self, session: Session) -> None:
        self.session = session

    def f_container(self, platform: str | None = None) -> Container:
        return Container(self.session, State())

    def f_host(self) -> Host:
        return Host(self.session)

    def f_setSecret(self, name: str, plaintext: str) -> Secret:
        return Secret(self.session, name, plaintext)

    def f_version(self) -> str:
        engine = self.session.engine
        if engine.version_delay:
            engine.stopping.wait(engine.version_delay)
        return engine.version

    def f_node(self, id: str) -> Obj:
        return self.session.get(id, Obj)

    def f_loadContainerFromID(self, id: str) -> Obj:
        return self.session.get(id, Container)

    def f_loadDirectoryFromID(self, id: str) -> Obj:
        return self.session.get(id, Directory)

    def f_loadFileFromID(self, id: str) -> Obj:
        return self.session.get(id, File)

    def f_loadSecretFromID(self, id: str) -> Obj:
        return self.session.get(id, Secret)


class Session:
    """Objects of one engine session; a restart of the double starts a new one."""

    def __init__(self, engine: EngineDouble) -> None:
        self.engine = engine
        self.objects: dict[str, Obj] = {}
        self.root = Root(self)

    def get(self, object_id: str, kind: type[Obj]) -> Any:
        found = self.objects.get(object_id)
        if not isinstance(found, kind):
            raise GraphQLError(f"cannot load {kind.typename} {object_id!r}: not found")
        return found

    def scratch(self) -> Path:
        path = self.engine.state_dir / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path


def _resolve(obj: Any, info: Any, /, **args: Any) -> Any:
    if info.field_name == "id":
        return obj.id
    return getattr(obj, "f_" + info.field_name)(**args)


class EngineDouble:
    """The double; `with EngineDouble(tmp) as engine:` serves on a free port until the end."""

    def __init__(
        self,
        state_dir: Path,
        *,
        bwrap: str,
        token: str = "double-session-token",
        port: int = 0,
        version: str = VERSION,
    ) -> None:
        self.state_dir, self.bwrap, self.token, self.version = state_dir, bwrap, token, version
        self.port = port
        self.schema = build_schema(SDL)
        self.schema.type_map["Node"].resolve_type = (  # type: ignore[attr-defined]
            lambda value, info, abstract: value.typename
        )
        self.images: dict[str, ImageDouble] = {}
        self.pull_errors: dict[str, str] = {}  # address -> what the registry "said"
        self.add_python_images()
        self.queries: list[str] = []
        self.variables: list[dict[str, Any]] = []
        self.execs: list[tuple[str, ...]] = []
        self.exec_delay = 0.0
        self.version_delay = 0.0  # a busy engine: version queries answer this late
        self.cut_exec_answers = 0  # answer the next N exec queries by cutting the connection
        self.cache: dict[str, Container] = {}
        self.session = Session(self)
        self.server: ThreadingHTTPServer | None = None
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()
        self.processes: set[subprocess.Popen[bytes]] = set()
        self.guard = threading.Lock()
        self.lifecycle = threading.Lock()
        self.client = threading.local()  # the connection of the query a handler thread runs

    # -- images -----------------------------------------------------------------------------
    def add_python_images(self) -> None:
        """`python:<anything>` runs this test run's interpreter (its venv has the built-in
        agents' dependencies, so `pip install -r requirements.txt` finds them satisfied)."""
        bin_dir = self.state_dir / "image-bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        for name in ("python", "python3"):
            script = bin_dir / name
            script.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
            script.chmod(0o755)
        image = ImageDouble(
            env={
                "PATH": "/image/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG": "C.UTF-8",
                "HOME": "/tmp",
                "PYTHON_VERSION": "3.12.double",
            },
            binds={
                "/image/bin": bin_dir,
                # the interpreter may live under /tmp (a clone there), which a container hides
                **{
                    prefix: Path(prefix)
                    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}
                    if prefix.startswith("/tmp")
                },
            },
        )
        for tag in ("3.12-slim", "3.12", "3.11-slim", "3.13-slim", "latest"):
            self.images[f"python:{tag}"] = image

    # -- lifecycle --------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {"DAGGER_SESSION_PORT": str(self.port), "DAGGER_SESSION_TOKEN": self.token}

    def start(self) -> EngineDouble:
        with self.lifecycle:  # after a stop still in progress (another thread) has finished
            return self._start()

    def _start(self) -> EngineDouble:
        self.stopping.clear()
        self.session = Session(self)
        self.cache.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        self.port = server.server_address[1]
        self.server = server
        threading.Thread(target=server.serve_forever, name="engine-double", daemon=True).start()
        return self

    def stop(self) -> None:
        """The engine goes away: no listener, open connections cut, running execs killed."""
        with self.lifecycle:
            self._stop()

    def _stop(self) -> None:
        self.stopping.set()
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self.guard:
            for conn in list(self.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            for process in list(self.processes):
                with contextlib.suppress(ProcessLookupError):
                    process.kill()

    def __enter__(self) -> EngineDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP -------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        engine = self
        expected = "Basic " + base64.b64encode(f"{self.token}:".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with engine.guard:
                    engine.connections.add(self.request)

            def finish(self) -> None:
                with engine.guard:
                    engine.connections.discard(self.request)
                with contextlib.suppress(OSError):
                    super().finish()

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length) or b"{}")
                if self.path != "/query":
                    self._answer(404, {"error": "not found"})
                    return
                if self.headers.get("Authorization") != expected:
                    self._answer(401, {"error": "unauthorized"})
                    return
                engine.client.socket = self.request
                try:
                    answer = engine.execute(payload)
                finally:
                    engine.client.socket = None
                # stopped meanwhile, or a proxy or the network dropped the answer
                if engine.stopping.is_set() or engine.cut_this(payload):
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.request.shutdown(socket.SHUT_RDWR)
                    return
                with contextlib.suppress(OSError):  # the double was stopped under this request
                    self._answer(200, answer)

        return Handler

    def cut_this(self, payload: dict[str, Any]) -> bool:
        with self.guard:
            if self.cut_exec_answers and "withExec" in str(payload.get("query", "")):
                self.cut_exec_answers -= 1
                return True
        return False

    def execute(self, payload: dict[str, Any]) -> dict[str, Any]:
        query = str(payload.get("query", ""))
        variables = payload.get("variables") or {}
        with self.guard:
            self.queries.append(query)
            self.variables.append(variables)
        session = self.session
        result = graphql_sync(
            self.schema,
            query,
            root_value=session.root,
            variable_values=variables,
            operation_name=payload.get("operationName"),
            field_resolver=_resolve,
        )
        return result.formatted

    # -- execs ------------------------------------------------------------------------------
    def evaluate(self, container: Container) -> None:
        """Run the container's exec (on copies of its parent's files), or reuse a cached run."""
        parent = container.parent
        state = container.state
        if parent is not None:
            parent.evaluate()
            state = replace(
                state, mounts=tuple((p, parent.carried(p, d), ro) for p, d, ro in state.mounts)
            )
        fs = container.session.scratch()
        if parent is not None and parent.fs is not None:
            shutil.copytree(
                parent.fs, fs, symlinks=True, dirs_exist_ok=True, copy_function=_replace_copy
            )
        for path, contents, mode in state.files:
            target = fs / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(contents)
            target.chmod(mode)
        container.fs = fs
        container.state = state = replace(state, files=())
        if state.exec is None:
            return
        key = self._cache_key(container)
        cached = self.cache.get(key)
        if cached is None:
            mounts = []
            for path, directory, read_only in state.mounts:
                if not read_only:
                    copy = container.session.scratch()
                    shutil.copytree(directory.path, copy, symlinks=True, dirs_exist_ok=True)
                    directory = Directory(container.session, copy)
                mounts.append((path, directory, read_only))
            before = state.mounts
            container.state = replace(state, mounts=tuple(mounts))
            container.result = self._run(container)
            self.cache[key] = container
        else:
            before = state.mounts
            container.fs, container.result = cached.fs, cached.result
            container.state = replace(state, mounts=cached.state.mounts)
        after = {path: directory for path, directory, _ in container.state.mounts}
        container.mounted = {path: (d.id, after[path]) for path, d, _ in before}
        args, expect = state.exec
        assert container.result is not None
        if not _allowed(container.result.code, expect):
            result = container.result
            raise GraphQLError(
                f'process "{" ".join(args)}" did not complete successfully: '
                f"exit code: {result.code}",
                extensions={
                    "_type": "EXEC_ERROR",
                    "cmd": list(args),
                    "exitCode": result.code,
                    "stdout": result.stdout,
                    "stderr": result.stderr,
                },
            )

    def _cache_key(self, container: Container) -> str:
        state = container.state
        parts = {
            "image": state.address,
            "env": state.env,
            "secrets": [
                (k, hashlib.sha256(s.plaintext.encode()).hexdigest()) for k, s in state.secrets
            ],
            "mounts": [(p, tree_digest(d.path), ro) for p, d, ro in state.mounts],
            "fs": tree_digest(container.fs) if container.fs else "",
            "workdir": state.workdir,
            "exec": state.exec,
        }
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()

    def _command(self, container: Container) -> list[str]:
        state, fs = container.state, container.fs
        assert state.exec is not None
        assert fs is not None
        own = {entry.name for entry in fs.iterdir()}
        command = [self.bwrap]
        for entry in sorted(Path("/").iterdir()):
            if entry.name in {"proc", "dev", "tmp", *own}:
                continue
            if entry.is_symlink():
                command += ["--symlink", os.readlink(entry), str(entry)]
            else:
                command += ["--ro-bind", str(entry), str(entry)]
        command += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        for name in sorted(own):
            command += ["--bind", str(fs / name), f"/{name}"]
        if state.image is not None:
            for path, source in state.image.binds.items():
                command += ["--ro-bind", str(source), path]
        for path, directory, read_only in sorted(state.mounts, key=lambda m: len(m[0])):
            command += ["--ro-bind" if read_only else "--bind", str(directory.path), path]
        command += ["--unshare-pid", "--die-with-parent", "--chdir", state.workdir]
        return [*command, "--", *state.exec[0]]

    def _wait(self, process: subprocess.Popen[bytes]) -> int:
        """The exec's exit code; as Dagger's engine cancels a query whose client went away
        (its request's context), the exec is killed when the connection that asked is closed."""
        client: socket.socket | None = getattr(self.client, "socket", None)
        while True:
            try:
                return process.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
            if client is not None and _closed(client):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)

    def _run(self, container: Container) -> ExecResult:
        state = container.state
        assert state.exec is not None
        if self.exec_delay and self.stopping.wait(self.exec_delay):
            raise GraphQLError("engine double stopped")
        with self.guard:
            self.execs.append(state.exec[0])
        env = dict(state.image.env if state.image else {"PATH": "/usr/bin:/bin"})
        env |= dict(state.env)
        secrets = {name: secret.plaintext for name, secret in state.secrets}
        env |= secrets
        process = subprocess.Popen(
            self._command(container),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        with self.guard:
            self.processes.add(process)
        out: list[bytes] = []
        err: list[bytes] = []
        combined: list[bytes] = []
        lock = threading.Lock()

        def pump(stream: Any, into: list[bytes]) -> None:
            for chunk in iter(lambda: stream.read1(65536), b""):
                with lock:
                    into.append(chunk)
                    combined.append(chunk)

        threads = [
            threading.Thread(target=pump, args=(process.stdout, out), daemon=True),
            threading.Thread(target=pump, args=(process.stderr, err), daemon=True),
        ]
        for thread in threads:
            thread.start()
        code = self._wait(process)
        for thread in threads:
            thread.join()
        with self.guard:
            self.processes.discard(process)
        if self.stopping.is_set():
            raise GraphQLError("engine double stopped")
        if code < 0:
            code = 128 - code

        def scrub(chunks: list[bytes]) -> str:
            text = b"".join(chunks).decode("utf-8", errors="replace")
            for value in sorted(secrets.values(), key=len, reverse=True):
                if value:
                    text = text.replace(value, "***")
            return text

        return ExecResult(code=code, stdout=scrub(out), stderr=scrub(err), combined=scrub(combined))


def _closed(connection: socket.socket) -> bool:
    """Whether the client closed `connection` (readable, with nothing to read)."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True
