"""Issue 15, item 6: an agent given a secret prints it encoded (base64 at every alignment, hex,
URL- and JSON-escaped, one line of a multi-line key at a time, base64 wrapped at 76 columns as
coreutils `base64` writes it) to its log and puts the same texts in its output, with a numeric
secret as a JSON number. None of them may reach `runner logs`, `runner show` or the database
file, and the agent must still have received the real values."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

TOKEN = 'dem0/t0k"en+é 42-\\x'  # escapes differ in every encoding: / " + é space backslash
KEY = (  # long enough that its wrapped base64 has lines made only of its bits
    "-----BEGIN DEMO PRIVATE KEY-----\n"
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n"
    "BKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n"
    "sW7vY8Qz2XoHq4LmNfE6dRpJcT0aUiKb3yGgVwZxS1nOeDlM5rAtP9hC+jYkF/uI\n"
    "Tq2Wm8Ls4Nd6Gf0Ph1Zr7Yc3Xb9Va5Ue2Rk0Jo8Ih4Mg6Kn1Ol3Qp5St7Sw9Ux\n"
    "-----END DEMO PRIVATE KEY-----\n"
)
PIN = "8675309123"  # a numeric secret, put in the output as a JSON number

AGENT = """\
apiVersion: runner/v1
kind: Agent
metadata: {name: leaky}
spec:
  command: [python, main.py]
  timeout: 1m
  secrets: [DEMO_TOKEN, DEMO_KEY, DEMO_PIN]
  outputs:
    type: object
    required: [token_sha256, key_sha256]
"""

# The attacker's program: every form it can think of, on stdout and in its output.
LEAKY = r"""
import base64, hashlib, json, os, sys
from urllib.parse import quote, quote_plus

token, key, pin = (os.environ[f"DEMO_{name}"] for name in ("TOKEN", "KEY", "PIN"))
raw = token.encode()
forms = {
    "literal": token,
    "hex": raw.hex(),
    "HEX": raw.hex().upper(),
    "url": quote(token, safe=""),
    "url-path": quote(token),
    "url-plus": quote_plus(token),
    "json": json.dumps(token)[1:-1],
    "json-utf8": json.dumps(token, ensure_ascii=False)[1:-1],
    "key-json": json.dumps(key)[1:-1],
}
for lead in range(3):  # the token after 0, 1 or 2 bytes of a longer encoded stream
    stream = b"u:"[:lead] + raw + b"@host"
    forms[f"base64-{lead}"] = base64.b64encode(stream).decode()
    forms[f"base64url-{lead}"] = base64.urlsafe_b64encode(stream).decode()
for name, text in forms.items():
    sys.stdout.buffer.write(f"{name}: {text}\n".encode())
lines = [line for line in key.splitlines() if line.strip()]
for number, line in enumerate(lines):
    sys.stdout.buffer.write(f"key line {number}: {line}\n".encode())
wrapped = {}  # `base64 key.pem` wraps at 76 columns, as base64.encodebytes does
for lead in range(3):  # the key after 0, 1 or 2 bytes: every alignment, lines broken elsewhere
    wrapped[f"wrapped-{lead}"] = base64.encodebytes(b"u:"[:lead] + key.encode() + b"@host").decode()
for name, text in wrapped.items():
    sys.stdout.buffer.write(f"{name}:\n{text}".encode())
sys.stdout.buffer.write(f"pin: {int(pin)}\n".encode())
sys.stdout.flush()
output = {
    "token_sha256": hashlib.sha256(raw).hexdigest(),
    "key_sha256": hashlib.sha256(key.encode()).hexdigest(),
    "forms": forms,
    "key_lines": lines,
    "key": key,
    token: "the token as a key",
    "wrapped": wrapped,
    "pin": int(pin),  # a JSON number
    "pins": [float(pin), -int(pin)],
}
json.dump(output, open(os.environ["RUNNER_OUTPUT"], "w"))
"""

WORKFLOW = """\
apiVersion: runner/v1
kind: Workflow
metadata: {name: leak-attempt}
spec:
  triggers: [{manual: {}}]
  steps: [{id: leak, agent: leaky}]
"""


def granted(tmp: Path, secrets: dict[str, str], agent: str) -> dict[str, str]:
    """Write the runner's configuration, granting each of `secrets` to `agent` (from a variable
    of the same name), and return the environment of its commands."""
    grants = "".join(f"  - {{name: {n}, env: {n}, agents: [{agent}]}}\n" for n in secrets)
    (tmp / "runner.yaml").write_text(
        f"database: {{url: 'sqlite:///{tmp}/runner.db'}}\ndata_dir: {tmp}/data\nsecrets:\n{grants}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    return env | {"RUNNER_CONFIG": str(tmp / "runner.yaml"), "RUNNER_USER": "dev"} | secrets


def run_cli(tmp: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], cwd=tmp, env=env, capture_output=True, timeout=120
    )


def committed_repo(root: Path) -> Path:
    """A workflows repo whose commit holds the repo-local agent `leaky` and its workflow."""
    files = {
        "agents/leaky/agent.yaml": AGENT,
        "agents/leaky/main.py": LEAKY,
        "workflows/leak-attempt.yaml": WORKFLOW,
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "leaky"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            cwd=root,
            check=True,
        )
    return root


def base64_cores(raw: bytes) -> list[str]:
    """For `raw` inside a longer base64 stream at each alignment: the characters made only of
    its bits (the edge characters mix in the neighbours' bits and prove nothing)."""
    cores = []
    for lead in range(3):
        first, last = -(-8 * lead // 6), 8 * (lead + len(raw)) // 6
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            cores.append(encode(b"\0" * lead + raw).decode()[first:last])
    return cores


def forbidden() -> list[str]:
    """Every text that would reveal the token or a line of the key."""
    raw = TOKEN.encode()
    found = [TOKEN, raw.hex(), raw.hex().upper(), quote(TOKEN, safe=""), quote(TOKEN)]
    found += [quote_plus(TOKEN), json.dumps(TOKEN)[1:-1], json.dumps(TOKEN, ensure_ascii=False)]
    found += base64_cores(raw)
    found += [line for line in KEY.splitlines() if len(line.strip()) >= 4]
    found += [json.dumps(KEY)[1:-1]]
    found += [PIN]
    return found


def wrapped_pieces(secret: str, size: int = 16) -> set[bytes]:
    """Every piece of `size` characters of the secret's base64 at each alignment: what a line of
    its wrapped encoding shows, and what masking must leave none of (a wrapped stream may keep
    up to 15 characters of the value at a line end)."""
    raw = secret.encode()
    cores = base64_cores(raw)
    return {core[i : i + size].encode() for core in cores for i in range(len(core) - size + 1)}


@pytest.fixture(scope="module")
def leaked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """One run of the leaky agent; what each surface shows afterwards."""
    tmp = tmp_path_factory.mktemp("masking")
    repo = committed_repo(tmp / "workflows")
    env = granted(tmp, {"DEMO_TOKEN": TOKEN, "DEMO_KEY": KEY, "DEMO_PIN": PIN}, agent="leaky")
    ran = run_cli(tmp, env, "run", "leak-attempt", "--repo", str(repo))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    surfaces = {"run": ran.stdout + ran.stderr}
    for name, args in {
        "logs": ["logs", "1"],
        "step log": ["logs", "1", "leak"],
        "show": ["show", "1", "--output", "json"],
    }.items():
        shown = run_cli(tmp, env, *args)
        assert shown.returncode == 0, shown.stderr
        surfaces[name] = shown.stdout + shown.stderr
    database = sorted(tmp.glob("runner.db*"))  # the file, its WAL and shared memory
    assert database
    surfaces["database"] = b"".join(path.read_bytes() for path in database)
    return surfaces


@pytest.mark.parametrize("surface", ["run", "logs", "step log", "show", "database"])
def test_no_encoded_form_of_a_secret_reaches_any_surface(
    leaked: dict[str, bytes], surface: str
) -> None:
    shown = leaked[surface]
    for form in forbidden():
        assert form.encode() not in shown, f"{form!r} leaked into {surface}"


@pytest.mark.parametrize("surface", ["run", "logs", "step log", "show", "database"])
def test_no_line_of_a_wrapped_base64_and_no_numeric_secret_reaches_any_surface(
    leaked: dict[str, bytes], surface: str
) -> None:
    shown = leaked[surface]
    pieces = wrapped_pieces(KEY) | wrapped_pieces(TOKEN)
    found = {shown[i : i + 16] for i in range(len(shown))} & pieces
    assert not found, f"{found} leaked into {surface}"
    assert PIN.encode() not in shown, f"{PIN} leaked into {surface}"


def test_the_step_succeeded_with_the_real_values_and_its_log_shows_the_masks(
    leaked: dict[str, bytes],
) -> None:
    run = json.loads(leaked["show"])
    (step,) = run["steps"]
    assert (run["status"], step["status"]) == ("succeeded", "succeeded")
    outputs = step["outputs"]
    assert outputs["token_sha256"] == hashlib.sha256(TOKEN.encode()).hexdigest()
    assert outputs["key_sha256"] == hashlib.sha256(KEY.encode()).hexdigest()
    assert outputs["forms"]["literal"] == outputs["forms"]["hex"] == "***"
    assert outputs["key"] == "***"
    assert all(line == "***" for line in outputs["key_lines"])
    log = leaked["step log"].decode()
    assert "literal: ***\n" in log
    # `u:` + the token + `@host`: only the characters holding bits of `u:` or `@host` stay
    assert "base64-2: dTp***EBob3N0\n" in log
    assert "key line 1: ***\n" in log
    # `base64` of the key and `@host`: every line made only of the key's bits is masked, and
    # the last line up to the characters holding bits of `@host`
    assert "wrapped-0:\n***\n***\n***\n***\n***QGhvc3Q=\n" in log
    assert "pin: ***\n" in log
    assert (outputs["pin"], outputs["pins"]) == ("***", ["***", "***"])
    assert all(set(text.splitlines()[1:-1]) == {"***"} for text in outputs["wrapped"].values()), (
        outputs["wrapped"]
    )
