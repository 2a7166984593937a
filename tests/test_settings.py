"""Configuration as an operator writes it: file, environment, and precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.settings import ConfigInvalid, load_settings

FULL = """\
database: {url: "postgresql://runner@db/runner"}
listen: {host: 0.0.0.0, port: 9000}
executor: {kind: dagger, max_parallel: 8}
sources:
  - name: main
    url: https://git.example.com/acme/workflows.git
    branch: main
    path: .
    interval: 60s
    credentials: {token_env: RUNNER_GIT_TOKEN}
forges:
  - name: github
    kind: github
    api_url: https://api.github.com
    token_env: GITHUB_TOKEN
    webhook_secret_env: GITHUB_WEBHOOK_SECRET
generic_webhook_secret_env: RUNNER_GENERIC_SECRET
api:
  tokens:
    - {name: ci, role: operator, token_env: RUNNER_TOKEN_CI}
rate_limits: {webhooks: 600/minute, writes: 100/minute, reads: 1000/minute, allow: [10.0.0.0/8]}
trusted_proxies: []
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "runner.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings.database.url == "sqlite:///./runner.db"
    assert (settings.listen.host, settings.listen.port) == ("127.0.0.1", 8080)
    assert settings.executor.kind == "local"
    assert settings.path is None


def test_the_spec_example_file_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FULL), env={})
    assert settings.database.url == "postgresql://runner@db/runner"
    assert settings.listen.port == 9000
    assert settings.executor.max_parallel == 8
    assert settings.sources[0]["credentials"] == {"token_env": "RUNNER_GIT_TOKEN"}
    assert settings.forges[0]["kind"] == "github"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {
        "RUNNER_DATABASE_URL": "sqlite:////var/lib/runner/runner.db",
        "RUNNER_LISTEN_PORT": "9100",
        "RUNNER_EXECUTOR_KIND": "local",
        "RUNNER_SOURCE_URL": "file:///srv/workflows",
        "RUNNER_SOURCE_BRANCH": "prod",
    }
    settings = load_settings(write(tmp_path, FULL), env=env)
    assert settings.database.url == "sqlite:////var/lib/runner/runner.db"
    assert settings.listen.port == 9100
    assert settings.executor.kind == "local"
    assert settings.sources == ({"name": "main", "url": "file:///srv/workflows", "branch": "prod"},)


def test_every_problem_is_reported_with_its_place(tmp_path: Path) -> None:
    text = "database:\n  url: mysql://x\n  pool: 3\nlisten: {port: http}\nexecutor: {kind: k8s}\n"
    with pytest.raises(ConfigInvalid) as caught:
        load_settings(write(tmp_path, text), env={"RUNNER_DATABASE_POOL_SIZE": "many"})
    lines = [str(e) for e in caught.value.errors]
    assert any(
        line.startswith("$RUNNER_DATABASE_POOL_SIZE:1:1: expected integer") for line in lines
    )
    assert any(
        line.endswith("unknown property 'pool'; did you mean 'pool_size'? [/database/pool]")
        for line in lines
    )
    assert any(":4:16: expected integer, got string [/listen/port]" in line for line in lines)
    assert any(':5:18: "k8s" is not one of: local, dagger' in line for line in lines)
    assert any("is not a database URL" in line for line in lines)


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: {port: 7000}\n")
    assert load_settings(env={"RUNNER_CONFIG": path}).listen.port == 7000
