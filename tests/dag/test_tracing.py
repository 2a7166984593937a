"""One trace follows a push to its steps: delivery span -> dispatch span -> run span -> a span
per step, carried across the store as a W3C traceparent (OpenTelemetry's in-memory exporter
stands in for a collector)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runner import tracing
from runner.dispatch import Dispatcher
from runner.model import Event
from runner.revisions import BundleLoader, content_revision, local_source
from runner.spec.compile import compile_files
from runner.spec.repo import builtin_agents, repo_files
from tests.dag.conftest import Harness

pytestmark = pytest.mark.anyio

PUSHED = """\
apiVersion: runner/v1
kind: Workflow
metadata: {name: pushed}
spec:
  triggers: [{push: {branches: [main]}}]
  steps:
    - {id: first, agent: echo}
    - {id: second, agent: echo, needs: [first]}
"""


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.setup(exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


async def test_a_push_is_one_trace_down_to_its_steps(
    harness: Harness, spans: InMemorySpanExporter
) -> None:
    harness.write("pushed", PUSHED)
    result = compile_files(repo_files(harness.repo, ""), builtins=builtin_agents())
    source = local_source(harness.repo)
    await harness.store.apply_revision(source, content_revision(result.documents), result.documents)

    with tracing.span("webhook delivery", forge="github", delivery="d-1"):
        parent = tracing.traceparent()
    assert parent is not None
    push = {
        "ref": "refs/heads/main",
        "after": "a" * 40,
        "repository": {"full_name": "acme/app", "clone_url": ""},
        "sender": {"login": "dev"},
        "commits": [],
    }
    event = Event(
        id=1,
        forge="github",
        delivery_id="d-1",
        event_type="push",
        headers={"traceparent": parent},
        body=json.dumps(push).encode(),
        received_at=0.0,
    )
    dispatcher = Dispatcher(
        harness.store,
        BundleLoader(harness.store.revision_documents, builtin_agents()),
        kinds={"github": "github"},
        sources={},
    )
    with tracing.span("dispatch event", parent=event.headers["traceparent"]):
        (run_id,) = await dispatcher.handle(event)
    run = await harness.store.get_run(run_id)
    assert run is not None
    assert "traceparent" in run.trigger
    finished = await harness.go(run_id)
    assert finished.status == "succeeded"

    found = {s.name: s for s in spans.get_finished_spans()}
    assert set(found) == {
        "webhook delivery",
        "dispatch event",
        "run pushed",
        "step first",
        "step second",
    }
    trace_ids = {s.context.trace_id for s in found.values()}
    assert len(trace_ids) == 1  # one trace from the push to the last step

    def parent_of(name: str) -> str:
        span = found[name]
        assert span.parent is not None
        return next(n for n, s in found.items() if s.context.span_id == span.parent.span_id)

    assert parent_of("dispatch event") == "webhook delivery"
    assert parent_of("run pushed") == "dispatch event"
    assert parent_of("step first") == "run pushed"
    assert parent_of("step second") == "run pushed"
    assert found["run pushed"].attributes["run_id"] == run_id


async def test_without_tracing_nothing_is_added(harness: Harness) -> None:
    assert tracing.traceparent() is None
    with tracing.span("anything"):
        assert tracing.traceparent() is None
