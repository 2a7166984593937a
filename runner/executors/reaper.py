"""The keeper of an unsandboxed step's processes: run as its own program, never imported.

    python -I -S reaper.py MEMORY_BYTES COMMAND...

Without the sandbox's PID namespace, a process that leaves the step's process group and session
(`setsid sleep 780 &`, a double fork) would outlive the step and hold its log pipe open. This
program starts COMMAND (under an address-space limit of MEMORY_BYTES, 0 for none) as a *child
subreaper* (prctl PR_SET_CHILD_SUBREAPER): every process the command starts, however it detaches,
stays below this one, since an orphan is handed to its nearest subreaper ancestor, not to init.

When the command ends, or this program gets SIGTERM (the step's timeout or cancel, or the runner
gone: its parent-death signal), it kills everything below it with SIGKILL, reaping as it goes,
until nothing is left, then exits as the command did (the same code, or the same signal).

Only the standard library, no site-packages (-S), no environment (-I): it runs as fast and as
small as Python can, and what the agent's environment holds cannot change it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sys
from types import FrameType

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


class Stop(Exception):
    """SIGTERM: end the step now."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stop


def descendants(root: int) -> list[int]:
    """Every live process below `root`, by the parent links in /proc (parents first)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as file:
                fields = file.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(name))
    found: list[int] = []
    queue = list(children.get(root, ()))
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, ()))
    return found


def end_all(me: int, agent: int, status: int | None) -> int | None:
    """SIGKILL everything below this process until nothing is left; the agent's wait status
    (when it is reaped here) is returned, or `status` as given."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # nothing stops the sweep now
    while True:
        for pid in descendants(me):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        try:
            pid, code = os.waitpid(-1, 0)  # a killed one, or an orphan handed over meanwhile
        except ChildProcessError:
            return status
        if pid == agent and status is None:
            status = code


def main() -> None:
    memory, command = int(sys.argv[1]), sys.argv[2:]
    me = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGTERM, _stop)
    parent = os.getppid()
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # the runner gone: sweep, rather than die at once
    status: int | None = None
    agent = -1
    try:
        if os.getppid() != parent:  # it went before the signal was set
            raise Stop
        agent = os.fork()
        if agent == 0:
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                if memory:
                    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
                os.execvp(command[0], command)
            except OSError as exc:
                os.write(2, f"[runner] cannot start {command[0]!r}: {exc.strerror}\n".encode())
            finally:
                os._exit(127)
        while status is None:
            pid, code = os.waitpid(-1, 0)  # orphans handed over are reaped here too
            if pid == agent:
                status = code
    except Stop:
        pass
    status = end_all(me, agent, status)
    if status is None:
        os._exit(128 + signal.SIGTERM)
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            if number != signal.SIGKILL:
                signal.signal(number, signal.SIG_DFL)
            os.kill(me, number)
        except OSError:
            pass
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


if __name__ == "__main__":
    main()
