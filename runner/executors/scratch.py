"""Steps' scratch folders: a step's input, output, home and identity files, under
`<data_dir>/steps/` in the service.

Each folder is held (an exclusive `flock` on its `.held` file) by the runner process whose step
uses it, and removed when the step ends. A runner killed mid-step leaves its folders behind;
`sweep` removes those no live process holds when a node starts. The lock, not a process id, says
whether a folder is in use: it goes with its holder, whatever reuses the id, and several runners
(a `runner run` beside `runner serve`) may share one data directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runner.executors.base import ExecutorUnavailable

log = logging.getLogger(__name__)

PREFIX = "runner-step-"
HELD = ".held"
_YOUNG = 60.0  # seconds: a folder without its lock file yet may be just being made


@contextlib.contextmanager
def step_folder(parent: Path | None) -> Iterator[Path]:
    """A new scratch folder under `parent` (the system's temporary folder when None), held
    while the step runs and removed afterwards. `ExecutorUnavailable` when it cannot be made
    (a full disk, a data directory the runner may not write)."""
    folder = None
    try:
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
        held = os.open(folder / HELD, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:  # the machine's fault, not the agent's: the run waits
        if folder is not None:
            remove(folder)
        where = parent or tempfile.gettempdir()
        raise ExecutorUnavailable(
            f"cannot make the step's scratch folder in {where}: {exc}"
        ) from exc
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield folder
    finally:
        remove(folder)
        os.close(held)


def sweep(parent: Path) -> int:
    """Remove the scratch folders under `parent` that no live runner holds (left by one that
    was killed mid-step); return how many."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in parent.iterdir():
            ours = entry.name.startswith(PREFIX) and entry.is_dir() and not entry.is_symlink()
            if ours and _abandoned(entry):
                remove(entry)
                removed += 1
    if removed:
        log.info(
            "removed %d step scratch folder(s) under %s left by a stopped runner", removed, parent
        )
    return removed


def _abandoned(folder: Path) -> bool:
    try:
        held = os.open(folder / HELD, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:  # killed before it took the lock, or just being made
        with contextlib.suppress(OSError):
            return time.time() - folder.stat().st_mtime > _YOUNG
        return False
    except OSError:
        return False
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its runner is alive
    finally:
        os.close(held)
    return True


def remove(folder: Path) -> None:
    """Remove `folder` and all in it, also what a step made read-only."""

    def retry(function: Callable[..., Any], path: str, _: Any) -> None:
        with contextlib.suppress(OSError):
            parent = os.path.dirname(path)
            os.chmod(parent, os.stat(parent).st_mode | stat.S_IRWXU)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, stat.S_IRWXU)
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)

    if sys.version_info >= (3, 12):
        shutil.rmtree(folder, onexc=retry)
    else:
        shutil.rmtree(folder, onerror=retry)
    if folder.exists():
        log.warning("could not remove the step scratch folder %s", folder)
