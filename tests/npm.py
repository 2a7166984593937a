"""npm packages the tests use as reference material (GitHub's example payloads, signing code
and REST API description), installed once per machine into a cache folder from the npm
registry."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

# @octokit/openapi is pinned exactly: what the fake GitHub is checked against must not move
# under the tests (its generated/ folder holds GitHub's own OpenAPI 3.0 description)
PACKAGES = (
    "@octokit/webhooks-examples@7",
    "@octokit/webhooks-methods@6",
    "@octokit/openapi@23.0.2",
)
CACHE = Path(os.environ.get("RUNNER_TEST_NPM_CACHE", Path(__file__).parent / ".npm-packages"))


def node_modules() -> Path:
    """The folder holding the packages; installs them on first use (needs npm and node)."""
    target = CACHE / "node_modules"
    if all(_installed(target, p) for p in PACKAGES):
        return target
    if shutil.which("npm") is None:
        raise RuntimeError("npm is needed for the GitHub tests (GitHub's reference material)")
    CACHE.mkdir(parents=True, exist_ok=True)
    # several test processes may share the cache: one installs while the others wait (two npm
    # installs into one prefix remove each other's files)
    with (CACHE / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all(_installed(target, p) for p in PACKAGES):
            return target
        subprocess.run(
            [
                "npm",
                "install",
                "--no-audit",
                "--no-fund",
                "--silent",
                "--prefix",
                str(CACHE),
                *PACKAGES,
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
    return target


def _installed(target: Path, spec: str) -> bool:
    """Whether `spec` (name@range) is in `target`; an exact pin must match the version too."""
    name, _, wanted = spec.rpartition("@")
    manifest = target / name / "package.json"
    if not manifest.is_file():
        return False
    if wanted.count(".") < 2:  # a major-version range: any installed version of it will do
        return True
    return bool(json.loads(manifest.read_text()).get("version") == wanted)


def github_rest_description() -> Path:
    """GitHub's REST API description for api.github.com (OpenAPI 3.0, from @octokit/openapi).

    The plain `api.github.com.json` (13 MB, `$ref`s kept) rather than the dereferenced variant
    beside it: that one is 73 MB, loads about 3x slower and cannot express recursive schemas;
    tests/github_openapi.py resolves the `$ref`s it needs itself."""
    return node_modules() / "@octokit" / "openapi" / "generated" / "api.github.com.json"


def github_examples(event: str) -> list[dict[str, object]]:
    """GitHub's example payloads of one event type (from @octokit/webhooks-examples)."""
    data = json.loads(
        (
            node_modules() / "@octokit" / "webhooks-examples" / "api.github.com" / "index.json"
        ).read_text()
    )
    for entry in data:
        if entry["name"] == event:
            return list(entry["examples"])
    raise KeyError(event)


def octokit_sign(secret: str, payload: str) -> str:
    """`sha256=...` computed by GitHub's own signing code (@octokit/webhooks-methods, Node)."""
    script = (
        "import('@octokit/webhooks-methods').then(async ({ sign }) => {"
        " const chunks = []; for await (const c of process.stdin) chunks.push(c);"
        " const body = Buffer.concat(chunks).toString('utf8');"
        " process.stdout.write(await sign(process.argv[1], body)); })"
    )
    done = subprocess.run(
        ["node", "-e", script, secret],
        input=payload.encode(),
        capture_output=True,
        check=True,
        cwd=CACHE,
        timeout=60,
        env={**os.environ, "NODE_PATH": str(node_modules())},
    )
    return done.stdout.decode().strip()
