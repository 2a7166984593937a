"""What a PromQL expression reads, from promql-parser's syntax tree (a Rust port of Prometheus'
own parser): the metric names, the label names it selects or groups by, and label values."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import promql_parser as pql

# Grafana's variables, replaced by values of the same kind before parsing
_GRAFANA_RANGES = re.compile(r"\$__(rate_interval|interval|range)\b")
_GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")


@dataclass
class Reads:
    metrics: set[str] = field(default_factory=set)
    # (metric, label name): a matcher on the metric, or a by/without label over it
    labels: set[tuple[str, str]] = field(default_factory=set)
    # (metric, label, operator, value) of every matcher
    matchers: set[tuple[str, str, str, str]] = field(default_factory=set)


def grafana_to_promql(expr: str) -> str:
    """A dashboard's expression with its `$__rate_interval`, `$workflow` ... filled in."""
    return _GRAFANA_VARIABLE.sub(".*", _GRAFANA_RANGES.sub("5m", expr))


def reads(expr: str) -> Reads:
    """Everything `expr` reads; a syntax error raises ValueError naming the expression."""
    try:
        tree = pql.parse(expr)
    except Exception as exc:
        raise ValueError(f"{expr!r} is not PromQL: {exc}") from exc
    found = Reads()

    def metrics_under(node: pql.Expr) -> set[str]:
        names: set[str] = set()

        def visit(inner: pql.Expr) -> None:
            if isinstance(inner, pql.VectorSelector) and inner.name:
                names.add(inner.name)

        pql.walk(node, visit)
        return names

    def visit(node: pql.Expr) -> None:
        if isinstance(node, pql.VectorSelector):
            name = node.name or ""
            if name:
                found.metrics.add(name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    found.metrics.add(matcher.value)
                    continue
                found.labels.add((name, matcher.name))
                found.matchers.add((name, matcher.name, str(matcher.op), matcher.value))
        elif isinstance(node, pql.AggregateExpr) and node.modifier is not None:
            under = metrics_under(node.expr)
            for label in node.modifier.labels:
                found.labels.update((metric, label) for metric in under)

    pql.walk(tree, visit)
    return found
