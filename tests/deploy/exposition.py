"""The metric families a scrape of /metrics declares, and the sample names each may export."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

# the series a family of each type exports (Prometheus text format, prometheus-client)
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "unknown": ("",),
}


@dataclass
class Family:
    name: str
    type: str
    help: str
    labels: set[str] = field(default_factory=set)  # seen on samples (none when it has none)
    sampled: bool = False

    @property
    def series(self) -> set[str]:
        return {self.name + suffix for suffix in SUFFIXES[self.type]}


def families(text: str) -> dict[str, Family]:
    """Every family declared by a `# TYPE` line, by name: a labelled family with no sample yet
    is declared all the same, so the name check does not depend on what happened to run."""
    out: dict[str, Family] = {}
    for parsed in text_string_to_metric_families(text):
        family = Family(name=parsed.name, type=parsed.type, help=parsed.documentation)
        for sample in parsed.samples:
            family.sampled = True
            family.labels.update(sample.labels)
        family.labels.discard("le")
        out[family.name] = family
    # the text format declares a counter's or histogram's `_created` series as a gauge family
    # of its own: it belongs to its parent
    for name in [n for n in out if n.endswith("_created")]:
        parent = out.get(name.removesuffix("_created"))
        if parent is not None and parent.type in ("counter", "histogram", "summary"):
            del out[name]
    return out


def series(found: dict[str, Family]) -> dict[str, Family]:
    """Each exportable series name -> its family."""
    return {name: family for family in found.values() for name in family.series}
