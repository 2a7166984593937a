"""Configuration: runner.yaml, overridden by RUNNER_<SECTION>_<KEY> environment variables.

The file is read with the same position-tracking loader as workflows and checked against
`schemas/config.schema.json`, so a typo is an error with its `file:line:col`, not a silently
ignored key. Every command that touches state loads settings the same way, so it sees what
`runner serve` sees. Secrets are never in the file: it names the variable or file holding them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import jsonschema_rs

from runner.errors import SpecError, UsageError
from runner.secrets.grants import Grant
from runner.spec.schema import translate
from runner.spec.yaml import Document, load_bytes, pointer_of

DEFAULT_FILE = "runner.yaml"
_SECTIONS = ("database", "listen", "executor", "rate_limits", "logging", "events")
_SOURCE_SHORTHAND = ("URL", "BRANCH", "PATH", "INTERVAL")


@dataclass(frozen=True, kw_only=True)
class DatabaseSettings:
    url: str = "sqlite:///./runner.db"
    pool_size: int = 10
    connect_timeout: float = 10.0
    log_limit: int = 5 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class ListenSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 5 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class ExecutorSettings:
    kind: str = "local"
    max_parallel: int = 4
    keep_failed_workspaces: bool = False
    sandbox: bool = True
    dagger: Mapping[str, Any] = field(default_factory=dict)
    images: Mapping[str, Any] = field(default_factory=dict)
    breaker: Mapping[str, Any] = field(default_factory=dict)
    allow_network: tuple[str, ...] = ()
    # ceilings on repo-local agents' requests: the manifest is the untrusted side
    max_pids: int = 1024
    max_memory: str = "8Gi"
    max_timeout: str = "6h"
    # how long a run retries a repository that cannot be fetched for now before it fails
    fetch_deadline: str = "30m"
    lease: str = "60s"  # a node's claim on a run, renewed every third of it


@dataclass(frozen=True, kw_only=True)
class LoggingSettings:
    format: str = "console"
    level: str = "info"
    access: bool = False


@dataclass(frozen=True, kw_only=True)
class EventSettings:
    """Retries of stored deliveries after a passing failure (runner/dispatch.py)."""

    max_attempts: int = 10
    retry_backoff: str = "5s"
    retry_max_backoff: str = "10m"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Validated configuration. Sections later parts of the runner own stay plain mappings
    (validated by the schema) until those parts give them a record of their own."""

    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    listen: ListenSettings = field(default_factory=ListenSettings)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    sources: tuple[Mapping[str, Any], ...] = ()
    forges: tuple[Mapping[str, Any], ...] = ()
    generic_webhook_secret_env: str | None = None
    api: Mapping[str, Any] = field(default_factory=dict)
    rate_limits: Mapping[str, Any] = field(default_factory=dict)
    events: EventSettings = field(default_factory=EventSettings)
    trusted_proxies: tuple[str, ...] = ()
    secrets: tuple[Grant, ...] = ()
    data_dir: str = ".runner"
    path: str | None = None


class ConfigInvalid(UsageError):
    """The configuration file or environment is wrong; `errors` says where."""

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = errors
        super().__init__("invalid configuration:\n" + "\n".join(f"  {e}" for e in errors))


def secret_values(env_name: str | None, file_name: str | None) -> list[str]:
    """Secrets named by an environment variable (comma-separated) or a file (one per line):
    several at once while one is being rotated."""
    raw = ""
    if env_name:
        raw = os.environ.get(env_name, "").replace(",", "\n")
    elif file_name:
        raw = Path(file_name).read_text(encoding="utf-8")
    return [line.strip() for line in raw.splitlines() if line.strip()]


def known_secrets(settings: Settings) -> list[str]:
    """Every secret value the configuration names (forge tokens and webhook secrets, API tokens,
    git credentials): the logs mask them wherever they would appear."""
    found = secret_values(settings.generic_webhook_secret_env, None)
    for forge in settings.forges:
        found += secret_values(forge.get("token_env"), forge.get("token_file"))
        found += secret_values(forge.get("webhook_secret_env"), forge.get("webhook_secret_file"))
    for token in settings.api.get("tokens", ()):
        found += secret_values(token.get("token_env"), token.get("token_file"))
    for source in settings.sources:
        creds = source.get("credentials") or {}
        for key in ("token_env", "password_env"):
            found += secret_values(creds.get(key), None)
        # the whole key, and (as masking does) each of its lines; the source's fetch reports a
        # key it cannot read
        with contextlib.suppress(OSError):
            if creds.get("ssh_key_file"):
                found.append(Path(creds["ssh_key_file"]).read_text(encoding="utf-8").strip())
    if os.environ.get("PGPASSWORD"):
        found.append(os.environ["PGPASSWORD"])
    with contextlib.suppress(ValueError):  # a password written in the database URL
        password = urlsplit(settings.database.url).password
        if password:
            found.append(unquote(password))
    return found


# Variables the runner itself reads, besides those the configuration names: never an agent's.
_OWN_VARIABLES = ("PGPASSWORD", "PGPASSFILE", "PGSERVICEFILE", "PGSSLKEY")
# Names of the agent protocol's own variables, and a prefix the runner keeps for itself.
_PROTOCOL_PREFIX = "RUNNER_"
# What the runner sets in every agent's environment: a secret may not take these names.
_PROCESS_NAMES = frozenset(
    {"PATH", "HOME", "TMPDIR", "LANG", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR", "SHELL", "USER"}
)


def _inside_system(path: Path) -> bool:
    return any(
        path == Path(root) or Path(root) in path.parents for root in ("/proc", "/sys", "/dev")
    )


def _own_credentials(data: Mapping[str, Any], file: Path | None) -> tuple[dict[str, str], set[str]]:
    """The runner's own credentials as the configuration names them: {variable: what it is}
    and the resolved paths of files holding them (and of the configuration and database)."""
    variables: dict[str, str] = {v: "a PostgreSQL credential" for v in _OWN_VARIABLES}
    files: set[str] = set()

    def add(entry: Mapping[str, Any], where: str) -> None:
        for key, value in entry.items():
            if not isinstance(value, str):
                continue
            if key.endswith("_env"):
                variables[value] = f"{where}.{key}"
            elif key.endswith("_file"):
                files.add(str(Path(value).resolve()))

    for i, forge in enumerate(data.get("forges") or ()):
        add(forge, f"forges[{i}]")
    for i, token in enumerate((data.get("api") or {}).get("tokens") or ()):
        add(token, f"api.tokens[{i}]")
    for i, source in enumerate(data.get("sources") or ()):
        add(source.get("credentials") or {}, f"sources[{i}].credentials")
    add({k: v for k, v in data.items() if k == "generic_webhook_secret_env"}, "the configuration")
    if file is not None:
        files.add(str(file.resolve()))
    url = str((data.get("database") or {}).get("url", DatabaseSettings.url))
    if url.startswith("sqlite:///"):
        database = Path(url.removeprefix("sqlite:///")).resolve()
        files |= {str(database), f"{database}-wal", f"{database}-shm"}
    return variables, files


def _networks(
    data: Mapping[str, Any], document: Document | None, origin: Mapping[str, str]
) -> list[SpecError]:
    """`trusted_proxies` and `rate_limits.allow` must be addresses or networks: "*" or a host
    name would let clients choose their address, and a typo would be silently ignored."""
    errors = []
    lists: list[tuple[list[str | int], Any]] = [
        (["trusted_proxies"], data.get("trusted_proxies")),
        (["rate_limits", "allow"], (data.get("rate_limits") or {}).get("allow")),
    ]
    for parts, values in lists:
        for i, value in enumerate(values or []):
            try:
                ipaddress.ip_network(str(value), strict=False)
            except ValueError:
                message = (
                    f"{value!r} is not an IP address or network: write e.g. 10.0.0.0/8 or"
                    " 192.0.2.7 (every entry is believed or let through as written; there is"
                    " no wildcard)"
                )
                var = origin.get(pointer_of(parts))
                if var is not None:
                    errors.append(SpecError(path=f"${var}", line=1, column=1, message=message))
                elif document is not None:
                    errors.append(document.error([*parts, i], message))
                else:
                    errors.append(SpecError(path="<settings>", line=1, column=1, message=message))
    return errors


def _grants(
    data: Mapping[str, Any], document: Document | None, file: Path | None
) -> tuple[tuple[Grant, ...], list[SpecError]]:
    """The `secrets` entries as grants, or every entry that names one of the runner's own
    credentials (or gives no value, or both kinds of value) as an error at its line."""
    entries = data.get("secrets") or []
    if not entries or document is None:
        return (), []
    variables, files = _own_credentials(data, file)
    name = file.name if file is not None else DEFAULT_FILE
    several = [str(s.get("name")) for s in data.get("sources") or ()]
    grants, errors = [], []
    for i, entry in enumerate(entries):
        here: list[str | int] = ["secrets", i]
        problems: list[tuple[list[str | int], str]] = []
        if len(several) > 1 and "sources" not in entry:
            # agent and workflow names are unique per repository only
            problems.append(
                (
                    here,
                    "with several sources, say whose agents this secret is for:"
                    f" sources: [{several[0]}] (one of {', '.join(several)})",
                )
            )
        if ("env" in entry) == ("file" in entry):
            problems.append((here, "say where the value is: env: VARIABLE or file: PATH, one"))
        env, path = entry.get("env"), entry.get("file")
        if isinstance(env, str) and (env in variables or env.startswith(_PROTOCOL_PREFIX)):
            what = variables.get(env, "a setting of the runner itself")
            problems.append(
                (
                    [*here, "env"],
                    f"{env} holds the runner's own credential ({what}), which is never granted"
                    " to agents: give the agent a credential of its own, in another variable",
                )
            )
        if isinstance(path, str) and _inside_system(Path(path).resolve()):
            problems.append(
                (
                    [*here, "file"],
                    f"{path} is under /proc, /sys or /dev, which hold the runner's own state"
                    " (its environment, its memory): give the value in a file of its own",
                )
            )
        elif isinstance(path, str) and str(Path(path).resolve()) in files:
            problems.append(
                (
                    [*here, "file"],
                    f"{path} holds the runner's own credentials or state, which are never granted"
                    " to agents: give the agent a credential of its own, in another file",
                )
            )
        name_given = str(entry.get("name", ""))
        if name_given in _PROCESS_NAMES or name_given.startswith(("LD_", "PYTHON", "LC_")):
            problems.append(
                (
                    [*here, "name"],
                    f"{name_given} is set by the runner for every agent's process (or changes"
                    " how programs load): pick another name for the secret",
                )
            )
        if name_given.startswith(_PROTOCOL_PREFIX):
            problems.append(
                (
                    [*here, "name"],
                    f"names starting with {_PROTOCOL_PREFIX} are the runner's own (agents get"
                    " RUNNER_INPUT, RUNNER_OUTPUT, ...): pick another name",
                )
            )
        errors += [document.error(parts, message) for parts, message in problems]
        line = document.position(here)[0]
        agents, workflows, sources = (
            entry.get("agents"),
            entry.get("workflows"),
            entry.get("sources"),
        )
        grants.append(
            Grant(
                name=str(entry["name"]),
                env=env,
                file=path,
                agents=frozenset(agents) if agents is not None else None,
                workflows=frozenset(workflows) if workflows is not None else None,
                sources=frozenset(sources) if sources is not None else None,
                where=f"{name}:{line} (secrets[{i}])",
            )
        )
    return tuple(grants), errors


@cache
def config_schema() -> dict[str, Any]:
    text = resources.files("runner").joinpath("schemas", "config.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _coerce(raw: str, schema: Mapping[str, Any]) -> Any:
    kind = schema.get("type")
    if kind == "boolean":
        return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(
            raw.lower(), raw
        )
    if kind in ("integer", "number"):
        try:
            return int(raw) if kind == "integer" else float(raw)
        except ValueError:
            return raw  # the schema reports it as not a number
    if kind == "array":
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def _environment(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Apply RUNNER_* overrides to `data` in place; return {JSON pointer: variable name}."""
    props = config_schema()["properties"]
    origin: dict[str, str] = {}
    for section in _SECTIONS:
        for key, sub in props[section]["properties"].items():
            var = f"RUNNER_{section}_{key}".upper()
            if var in env:
                if not isinstance(data.get(section), dict):
                    data[section] = {}
                data[section][key] = _coerce(env[var], sub)
                origin[pointer_of([section, key])] = var
    for key in ("generic_webhook_secret_env", "data_dir"):
        var = f"RUNNER_{key.upper()}"
        if var in env:
            data[key] = env[var]
            origin[f"/{key}"] = var
    if "RUNNER_SOURCE_URL" in env:
        source: dict[str, Any] = {"name": "main"}
        for key in _SOURCE_SHORTHAND:
            if f"RUNNER_SOURCE_{key}" in env:
                source[key.lower()] = env[f"RUNNER_SOURCE_{key}"]
                origin[pointer_of(["sources", 0, key.lower()])] = f"RUNNER_SOURCE_{key}"
        data["sources"] = [source]
    return origin


def _find_file(path: str | None, env: Mapping[str, str]) -> Path | None:
    chosen = path or env.get("RUNNER_CONFIG")
    if chosen:
        if not Path(chosen).is_file():
            raise UsageError(f"{chosen}: no such configuration file")
        return Path(chosen)
    default = Path(DEFAULT_FILE)
    return default if default.is_file() else None


def load_settings(path: str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from `path` (or $RUNNER_CONFIG, or ./runner.yaml when it exists) and `env`.

    Raises `ConfigInvalid` listing every problem, each at its line or its variable.
    """
    env = os.environ if env is None else env
    file = _find_file(path, env)
    data: dict[str, Any] = {}
    document: Document | None = None
    if file is not None:
        loaded = load_bytes(str(file), file.read_bytes())
        if loaded.errors:
            raise ConfigInvalid(loaded.errors)
        if loaded.documents:
            document = loaded.documents[0]
            if not isinstance(document.data, dict):
                raise ConfigInvalid([document.error([], "the configuration must be a mapping")])
            data = json.loads(json.dumps(document.data))  # a copy the environment may change
    origin = _environment(data, env)
    validator = jsonschema_rs.validator_for(config_schema())
    errors = []
    for parts, message, at_key in translate(validator, config_schema(), data):
        var = origin.get(pointer_of(parts))
        if var is not None:
            errors.append(SpecError(path=f"${var}", line=1, column=1, message=message))
        elif document is not None:
            errors.append(document.error(parts, message, key=at_key))
        else:
            errors.append(SpecError(path="<settings>", line=1, column=1, message=message))
    if errors:
        raise ConfigInvalid(errors)
    grants, errors = _grants(data, document, file)
    errors += _networks(data, document, origin)
    if errors:
        raise ConfigInvalid(errors)
    executor = dict(data.get("executor", {}))
    executor["allow_network"] = tuple(executor.get("allow_network", ()))
    return Settings(
        database=DatabaseSettings(**data.get("database", {})),
        listen=ListenSettings(**data.get("listen", {})),
        executor=ExecutorSettings(**executor),
        logging=LoggingSettings(**data.get("logging", {})),
        sources=tuple(data.get("sources", ())),
        forges=tuple(data.get("forges", ())),
        generic_webhook_secret_env=data.get("generic_webhook_secret_env"),
        api=data.get("api", {}),
        rate_limits=data.get("rate_limits", {}),
        events=EventSettings(**data.get("events", {})),
        trusted_proxies=tuple(data.get("trusted_proxies", ())),
        secrets=grants,
        data_dir=data.get("data_dir", ".runner"),
        path=str(file) if file else None,
    )
