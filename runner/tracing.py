"""OpenTelemetry tracing, on when the `otel` extra is installed and OTEL_EXPORTER_OTLP_ENDPOINT
is set (the exporter reads the standard OTEL_* variables). One trace follows a push to its
steps: the webhook delivery's span context is stored with the event (`traceparent`), the
dispatcher continues it and hands it to the runs it requests (in their trigger), and each run's
span parents its steps' spans. Reconcile passes get spans of their own. Without tracing, every
call here costs a check of one global."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

log = logging.getLogger(__name__)
_tracer: Any = None
_propagator: Any = None


def setup(exporter: Any = None) -> bool:
    """Start tracing: to the OTLP/HTTP endpoint of the environment, or to `exporter` (tests)."""
    global _tracer, _propagator
    if exporter is None and not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but tracing is not installed: "
            "pip install 'runner[otel]'"
        )
        return False
    name = os.environ.get("OTEL_SERVICE_NAME", "runner")
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _tracer = provider.get_tracer("runner")
    _propagator = TraceContextTextMapPropagator()
    log.info("tracing to %s", os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "a test exporter"))
    return True


def shutdown() -> None:
    global _tracer
    _tracer = None


def span(
    name: str, *, parent: str | None = None, **attributes: Any
) -> AbstractContextManager[None]:
    """A span around the block, under `parent` (a W3C traceparent) or the current span."""
    if _tracer is None:
        return _OFF
    return _span(name, parent, attributes)


_OFF: AbstractContextManager[None] = nullcontext()


@contextmanager
def _span(name: str, parent: str | None, attributes: dict[str, Any]) -> Iterator[None]:
    context = _propagator.extract({"traceparent": parent}) if parent else None
    values = {k: v for k, v in attributes.items() if v is not None}
    with _tracer.start_as_current_span(name, context=context, attributes=values):
        yield


def traceparent() -> str | None:
    """The current span as a W3C traceparent, to carry it across the store."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")
