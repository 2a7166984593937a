"""npm packages the tests use as reference material (GitHub's example payloads and signing
code), installed once per machine into a cache folder from the npm registry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

PACKAGES = ("@octokit/webhooks-examples@7", "@octokit/webhooks-methods@6")
CACHE = Path(os.environ.get("RUNNER_TEST_NPM_CACHE", Path(__file__).parent / ".npm-packages"))


def node_modules() -> Path:
    """The folder holding the packages; installs them on first use (needs npm and node)."""
    target = CACHE / "node_modules"
    if all((target / p.rsplit("@", 1)[0]).is_dir() for p in PACKAGES):
        return target
    if shutil.which("npm") is None:
        raise RuntimeError("npm is needed for the webhook tests (GitHub's reference material)")
    CACHE.mkdir(parents=True, exist_ok=True)
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
