"""Logs of the service: readable console lines or JSON (one event per line), chosen by the
`logging` settings. Records carry the ids of what they are about (run, step, delivery, source)
from a context the engine, the receivers and the dispatcher set, and every form of every known
secret value (literal, base64, hex, URL and JSON escapes, lines: `runner.secrets.mask`) is masked
before a record is written."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from runner.secrets.mask import mask_text, text_pattern

CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar(
    "runner_log_context", default=MappingProxyType({})
)
FIELDS = ("run_id", "step", "workflow", "delivery", "forge", "source")


@contextmanager
def context(**ids: Any) -> Iterator[None]:
    """Attach ids (`run_id=`, `step=`, `delivery=`, ...) to every record logged inside."""
    token = CONTEXT.set({**CONTEXT.get(), **ids})
    try:
        yield
    finally:
        CONTEXT.reset(token)


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in CONTEXT.get().items():
            if value is not None:
                setattr(record, key, value)
        return True


class _Masked(logging.Formatter):
    """The written line, whole (message, context, exception text), with secrets masked."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self.inner = inner
        self.pattern = text_pattern(secrets)  # every form (base64, hex, escapes), as in step logs

    def _mask(self, text: str) -> str:
        return mask_text(text, self.pattern)

    def format(self, record: logging.LogRecord) -> str:
        if self.pattern:  # before encoding (JSON escapes a secret's quotes or non-ASCII)...
            record = logging.makeLogRecord(record.__dict__)
            record.msg, record.args = self._mask(record.getMessage()), None
            if record.exc_info:
                record.exc_text = self._mask(self.inner.formatException(record.exc_info))
                record.exc_info = None
            if record.stack_info:
                record.stack_info = self._mask(record.stack_info)
        return self._mask(self.inner.format(record))  # ...and after: context fields too


class _Console(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = " ".join(
            f"{key}={getattr(record, key)}" for key in FIELDS if getattr(record, key, None)
        )
        return f"{text} [{ids}]" if ids else text


def configure(*, format: str = "console", level: str = "info", secrets: Iterable[str] = ()) -> None:
    """Send the root logger's records to stderr in `format` (console or json) from `level`."""
    handler = logging.StreamHandler(sys.stderr)
    inner: logging.Formatter
    if format == "json":
        inner = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    else:
        inner = _Console("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    handler.setFormatter(_Masked(inner, secrets))
    handler.addFilter(_Context())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "apscheduler", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
