"""The web UI: one page served at `/`, driven by the REST API with a token the user pastes; it
calls only operations the API describes."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.web.service import serve


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("ui"), "", {}) as url:
        yield url


def test_the_page_is_served_with_a_strict_policy(base: str) -> None:
    page = httpx.get(base + "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<title>runner</title>" in page.text
    assert "sessionStorage" in page.text  # the token stays in the tab, never in a cookie


def test_the_page_calls_only_described_operations(base: str) -> None:
    page = httpx.get(base + "/").text
    spec = httpx.get(base + "/openapi.json").json()
    templates = [
        re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$") for path in spec["paths"]
    ]
    called = set(re.findall(r"[`\"](/api/[^`\"?]*)", page))
    assert len(called) >= 7
    for path in called:
        for act in ("cancel", "retry"):  # the run buttons' actions
            concrete = re.sub(r"\$\{[^}]+\}", "x", path.replace("${button.dataset.act}", act))
            assert any(t.match(concrete) for t in templates), path
