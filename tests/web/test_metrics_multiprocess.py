"""Metrics with several web processes (`PROMETHEUS_MULTIPROC_DIR`): each process writes its own
files, and a scrape of any one of them reports the sum over all of them."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.web.service import serve


def deliveries(text: str) -> float:
    found = re.search(
        r'^runner_webhook_deliveries_total\{event="unknown",forge="unknown",'
        r'result="unknown_forge"\} ([0-9.e+]+)$',
        text,
        re.MULTILINE,
    )
    return float(found.group(1)) if found else 0.0


def test_a_scrape_sums_every_web_process(tmp_path: Path) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    database = f"database: {{url: 'sqlite:///{tmp_path}/runner.db'}}\n"
    with (
        serve(tmp_path / "a", database, env) as first,
        serve(tmp_path / "b", database, env) as second,
    ):
        for base, count in ((first, 2), (second, 3)):
            for _ in range(count):
                assert httpx.post(f"{base}/hooks/nope", content=b"{}").status_code == 404
        assert deliveries(httpx.get(f"{first}/metrics").text) == 5.0
        assert deliveries(httpx.get(f"{second}/metrics").text) == 5.0
    assert len(list(shared.glob("counter_*.db"))) == 2  # one file per process
