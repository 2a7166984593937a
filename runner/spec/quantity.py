"""Sizes written as Kubernetes-style quantities (`512Mi`, `1G`), as agents' `resources.memory`
and the configuration's ceilings are written."""

from __future__ import annotations

DEFAULT_MEMORY = 2 * 1024**3
_UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}
_UNITS |= {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}


def memory_bytes(text: str | None) -> int:
    """Bytes in a Kubernetes-style size (`512Mi`, `1G`); the default when unset. The schemas
    only let through a number followed by one of the units above."""
    if not text:
        return DEFAULT_MEMORY
    digits = text.rstrip("KMGTi")
    return int(digits) * _UNITS[text[len(digits) :]]
