"""What `runner serve` says about its executor while the engine goes down and comes back, as a
load balancer and an operator see it: `/readyz` stays 200 in every state of the engine and the
breaker (webhooks and the API still work; runs wait), and its body and `/metrics` give the
engine (up/down), the breaker (closed, open, half-open) and since when. The engine is the
Dagger engine double of tests/executors/dagger_double.py, stopped and started on its port; no
step runs, so its containers (bubblewrap) are not needed."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner.executors.local import find_bwrap
from tests.test_serve import AGENT, ECHO, MANUAL, wait_for
from tests.web.service import serve

if importlib.util.find_spec("dagger") is None:  # pragma: no cover - the `dagger` extra
    pytest.skip("dagger-io is not installed (the `dagger` extra)", allow_module_level=True)

CONFIG = """\
sources: [{{name: main, url: '{workflows}', interval: 1s}}]
executor:
  kind: dagger
  dagger: {{connect_timeout: 2s, health_timeout: 1s}}
  breaker: {{failures: 3, window: 1m, cooldown: 2s, successes: 3, check_interval: 500ms}}
"""


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Any]:
    from tests.executors.dagger_double import EngineDouble

    bwrap = find_bwrap()[0] or "/nonexistent/bwrap"  # only for execs, and none runs here
    with EngineDouble(tmp_path / "engine-double", bwrap=bwrap) as double:
        yield double


def gauge(text: str, name: str) -> float:
    found = re.search(rf'^{name}\{{executor="dagger"\}} ([0-9.e+]+)$', text, re.MULTILINE)
    assert found, f"{name} not exported"
    return float(found.group(1))


def test_readiness_and_metrics_follow_the_engine_and_its_breaker(
    tmp_path: Path, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the session token is the secret (never in the log); the port is not
    monkeypatch.setenv("DAGGER_SESSION_PORT", str(engine.port))
    secret = {"DAGGER_SESSION_TOKEN": engine.token}
    (tmp_path / "svc").mkdir()
    workflows = tmp_path / "workflows-repo"
    (workflows / "workflows").mkdir(parents=True)
    (workflows / "agents" / "hello").mkdir(parents=True)
    (workflows / "workflows" / "hi.yaml").write_text(MANUAL.format(name="hi"))
    (workflows / "agents" / "hello" / "agent.yaml").write_text(AGENT)
    (workflows / "agents" / "hello" / "main.py").write_text(ECHO)
    config = CONFIG.format(workflows=workflows)
    seen: list[tuple[str, str]] = []

    def executor(base: str) -> dict[str, Any]:
        answer = httpx.get(f"{base}/readyz", timeout=10)
        # the executor never makes a replica unready: it still takes webhooks and API calls
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["ready"] is True
        assert "executor" not in body["checks"]
        state: dict[str, Any] = body["executor"]
        seen.append((state["engine"], state["breaker"]))
        return state

    with serve(tmp_path / "svc", config, secret, role="all", ready=True) as base:
        wait_for(lambda: executor(base)["engine"] == "up")
        up = executor(base)
        assert up["breaker"] == "closed"
        assert up["name"] == "dagger"
        assert "Dagger engine" in up["detail"]
        scraped = httpx.get(f"{base}/metrics").text
        assert gauge(scraped, "runner_executor_up") == 1
        assert gauge(scraped, "runner_executor_circuit_state") == 0
        since_up = gauge(scraped, "runner_executor_state_since_timestamp_seconds")
        assert since_up >= up["engine_since"] - 1

        engine.stop()  # down: the breaker opens after its failed checks
        wait_for(lambda: executor(base)["breaker"] == "open")
        opened = executor(base)
        assert opened["engine"] == "down"
        assert opened["next_trial_in"] is not None
        assert opened["breaker_since"] >= up["engine_since"]
        scraped = httpx.get(f"{base}/metrics").text
        assert gauge(scraped, "runner_executor_up") == 0
        assert gauge(scraped, "runner_executor_circuit_state") == 2
        assert gauge(scraped, "runner_executor_state_since_timestamp_seconds") > since_up

        engine.start()  # back: trials in half-open, then closed
        wait_for(lambda: executor(base)["breaker"] == "half-open")
        scraped = httpx.get(f"{base}/metrics").text
        assert gauge(scraped, "runner_executor_circuit_state") == 1
        wait_for(lambda: executor(base)["breaker"] == "closed")
        closed = executor(base)
        assert closed["engine"] == "up"
        assert closed["next_trial_in"] is None
        scraped = httpx.get(f"{base}/metrics").text
        assert gauge(scraped, "runner_executor_up") == 1
        assert gauge(scraped, "runner_executor_circuit_state") == 0
    assert ("down", "open") in seen
    assert ("up", "half-open") in seen
