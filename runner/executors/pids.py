"""A step's process-count limit (`resources.pids`): the best mechanism this machine allows, chosen
once at start by a probe that builds a real limit and checks that it holds.

1. **cgroup v2**, when the runner's cgroup is delegated to it (writable, with the `pids`
   controller): each step gets a child cgroup with `pids.max`.
2. **cgroup v1**, the `pids` hierarchy, when the runner may create cgroups in it (root, usually).
3. **RLIMIT_NPROC** set inside the sandbox's user namespace, for a runner that is not root.
4. **none**: the step log says the limit is not enforced, and why.

With a cgroup the child joins it between fork and exec, so everything it starts is inside, also
processes that leave its session with `setsid`; when the step ends, whatever is left in the cgroup
is killed and the cgroup removed. Limits count tasks: processes and their threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

DEFAULT_PIDS = 256
SUPERVISOR = "runner-supervisor"  # the leaf a delegated cgroup v2's own processes move into
try:  # step cgroups are named after the pid namespace too: only ours are swept at start
    _PID_NS = os.stat("/proc/self/ns/pid").st_ino
except OSError:
    _PID_NS = 0
_PREFIX = f"runner-step-{_PID_NS}-"

# Sets the limit inside the user namespace bwrap made, then becomes the agent's command.
_SET_NPROC = (
    "import os, resource, sys\n"
    "n = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_NPROC, (n, n))\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


class Unavailable(Exception):
    """This mechanism cannot limit steps here; the message says why."""


@dataclass(kw_only=True)
class Scope:
    """One step's limit: what the child joins, what the sandbox needs, what is cleaned up."""

    procs: bytes | None = None  # the step cgroup's cgroup.procs, joined before exec
    directory: Path | None = None  # the step cgroup: emptied and removed by close()
    bwrap_args: tuple[str, ...] = ()
    prefix: tuple[str, ...] = ()  # run inside the sandbox, before the agent's command

    def enter(self) -> None:
        """In the child between fork and exec: join the step's cgroup. Only system calls here:
        the runner has other threads, whose locks a forked child must not touch."""
        if self.procs is not None:
            fd = os.open(self.procs, os.O_WRONLY)
            try:
                os.write(fd, b"%d" % os.getpid())
            finally:
                os.close(fd)

    def close(self) -> None:
        """Kill every process left in the step's cgroup and remove it. Blocks briefly (killed
        processes take a moment to leave); safe to call twice."""
        if self.directory is None:
            return
        for _ in range(300):
            with contextlib.suppress(FileNotFoundError):
                _kill_all(self.directory)
            try:
                self.directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError:  # EBUSY: killed processes still exiting
                time.sleep(0.01)
                continue
            self.directory = None
            return
        log.warning("could not remove the step cgroup %s: processes remain", self.directory)


def _kill_all(cgroup: Path) -> None:
    if (cgroup / "cgroup.kill").exists():  # cgroup v2 since Linux 5.14: no race with forks
        _write(cgroup / "cgroup.kill", "1")
        return
    for pid in (cgroup / "cgroup.procs").read_text().split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def _write(path: Path, text: str) -> None:
    """A write to a cgroup interface file (never creating one)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class Limiter(Protocol):
    @property
    def mechanism(self) -> str:
        """How steps are limited here, for the executor's health detail."""

    @property
    def why_not(self) -> str:
        """'' when the limit is enforced; otherwise why not, for the step log."""

    def open(self, limit: int) -> Scope:
        """A new limit of `limit` tasks for one step. Raises OSError when it cannot be made."""


class Cgroup:
    """Step cgroups with `pids.max`, created under `parent` (cgroup v1 or v2)."""

    def __init__(self, parent: Path, version: int) -> None:
        self.parent, self.version = parent, version
        self.mechanism, self.why_not = f"cgroup v{version} ({parent})", ""

    def open(self, limit: int) -> Scope:
        directory = self.parent / f"{_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        directory.mkdir()
        try:
            _write(directory / "pids.max", str(limit))
        except OSError:
            directory.rmdir()
            raise
        return Scope(procs=os.fsencode(directory / "cgroup.procs"), directory=directory)

    def sweep(self) -> None:
        """Remove the step cgroups that runners of this pid namespace, now dead, left behind
        (killed mid-step), killing whatever still runs in them first."""
        for entry in self.parent.glob(f"{_PREFIX}*"):
            pid = entry.name[len(_PREFIX) :].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                Scope(directory=entry).close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Rlimit:
    """RLIMIT_NPROC, set by a small program inside the sandbox's user namespace. The kernel counts
    a user's processes per user namespace, so inside bwrap's own namespace the count is the
    step's processes alone. Set before bwrap runs, the limit would also bind the count of all the
    runner user's processes outside, and bwrap could not even start."""

    mechanism, why_not = "RLIMIT_NPROC in the sandbox's user namespace", ""

    def __init__(self, python: str) -> None:
        self.python = python

    def open(self, limit: int) -> Scope:
        prefix = (self.python, "-I", "-S", "-c", _SET_NPROC, str(limit))
        return Scope(bwrap_args=("--unshare-user",), prefix=prefix)


class Unlimited:
    mechanism = "none"

    def __init__(self, why_not: str) -> None:
        self.why_not = why_not

    def open(self, limit: int) -> Scope:
        return Scope()


def choose(sandbox_probe: Callable[[Scope], str] | None, *, python: str) -> Limiter:
    """The best mechanism that works here. `sandbox_probe` runs a sandboxed step with a scope's
    options ('' when that works); None when steps run unsandboxed."""
    reasons = []
    for version, parent in ((2, _v2_parent), (1, _v1_parent)):
        try:
            limiter = Cgroup(parent(), version)
            _trial(limiter)
        except (OSError, Unavailable, subprocess.SubprocessError) as exc:
            reasons.append(f"cgroup v{version}: {exc}")
            continue
        limiter.sweep()
        return limiter
    if os.geteuid() == 0:
        # The kernel skips the RLIMIT_NPROC check for processes of INIT_USER (uid 0 of the
        # initial user namespace), with or without capabilities: a root runner's steps are not
        # bound by it, and bwrap run by root makes no user namespace of its own.
        reasons.append("RLIMIT_NPROC: does not bind processes of root")
    elif sandbox_probe is None:
        reasons.append("RLIMIT_NPROC: needs the sandbox's user namespace (running unsandboxed)")
    else:
        rlimit = Rlimit(python)
        problem = sandbox_probe(rlimit.open(16))
        if not problem:
            return rlimit
        reasons.append(f"RLIMIT_NPROC: {problem}")
    return Unlimited("; ".join(reasons))


_FORK_REFUSED = (
    "import os\n"
    "try:\n"
    "    pid = os.fork()\n"
    "except BlockingIOError:\n"
    "    raise SystemExit(0)\n"
    "os._exit(3)\n"
)


def _trial(limiter: Cgroup) -> None:
    """A process in a fresh step cgroup limited to one task must be refused a fork."""
    scope = limiter.open(1)
    try:
        done = subprocess.run(
            [sys.executable, "-S", "-c", _FORK_REFUSED],
            preexec_fn=scope.enter,
            capture_output=True,
            timeout=30,
        )
    finally:
        scope.close()
    if done.returncode != 0:
        raise Unavailable(f"pids.max did not hold in {limiter.parent} (exit {done.returncode})")


def _v2_parent() -> Path:
    mount, own = _hierarchy(lambda fstype, _: fstype == "cgroup2", "")
    base = mount / own
    if base.name == SUPERVISOR:  # an earlier runner in this cgroup delegated it already
        base = base.parent
    if "pids" not in (base / "cgroup.controllers").read_text().split():
        raise Unavailable(f"the pids controller is not available in {base}")
    if "pids" not in (base / "cgroup.subtree_control").read_text().split():
        delegate(base)
    return base


def delegate(base: Path) -> None:
    """Turn on `pids` for the children of `base`. cgroup v2 allows that only in a cgroup without
    processes of its own (except at the root), so they move into a leaf first: what a systemd
    service with `Delegate=yes`, or a container's init, must do before making child cgroups."""
    try:
        _write(base / "cgroup.subtree_control", "+pids")
        return
    except OSError:
        pass
    leaf = base / SUPERVISOR
    leaf.mkdir(exist_ok=True)
    for pid in (base / "cgroup.procs").read_text().split():
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            _write(leaf / "cgroup.procs", pid)
    _write(base / "cgroup.subtree_control", "+pids")


def _v1_parent() -> Path:
    mount, own = _hierarchy(
        lambda fstype, options: fstype == "cgroup" and "pids" in options, "pids"
    )
    return mount / own


def _hierarchy(matches: Callable[[str, list[str]], bool], controller: str) -> tuple[Path, str]:
    """(where the hierarchy is mounted, this process's cgroup relative to that mount)."""
    own = next((path for names, path in _own_cgroups() if controller in names), None)
    if own is None:
        raise Unavailable(f"this process is in no {controller or 'unified'} cgroup hierarchy")
    for root, mountpoint, fstype, options in _mounts():
        if not matches(fstype, options):
            continue
        relative = os.path.relpath(own, root)
        if relative.startswith(".."):
            raise Unavailable(f"the cgroup {own} lies outside the mount at {mountpoint}")
        return Path(mountpoint), "" if relative == "." else relative
    raise Unavailable("the hierarchy is not mounted")


def _own_cgroups() -> Iterator[tuple[list[str], str]]:
    """From /proc/self/cgroup: (controllers, path); cgroup v2's line has [''] as controllers."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            yield names.split(","), path


def _mounts() -> Iterator[tuple[str, str, str, list[str]]]:
    """From /proc/self/mountinfo: (root, mount point, fstype, super options); see proc(5)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mount, _, fs = line.partition(" - ")
            fields, fs_fields = mount.split(), fs.split()
            if len(fields) >= 5 and len(fs_fields) >= 3:
                root, mountpoint = _unescape(fields[3]), _unescape(fields[4])
                yield root, mountpoint, fs_fields[0], fs_fields[2].split(",")


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)
