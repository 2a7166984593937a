"""Keeping secret values out of logs, outputs and the database: every form a value may take
when a program prints it (its literal, base64, hex, URL- and JSON-escaped text, the lines of a
multi-line value) is replaced with `***`, and so is a number in an output whose digits show one
of them.

An agent that wants to leak a secret it was given can always find an encoding not listed here
(a reversed string, one character per line): masking stops the accidents and the obvious
attacks, in the same forms GitHub Actions' runner masks; granting a secret to an agent is still
trusting that agent with it.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

# A shorter form would match inside ordinary text everywhere (and hint at the value by where
# the `***` appear); values this short are refused as secrets, their short forms never masked.
MIN_LENGTH = 4
REPLACEMENT = "***"


def forms(value: str) -> Iterator[str]:
    """Every text that reveals `value` (or one of its lines) and must be masked, each at least
    MIN_LENGTH characters long; may repeat a form."""
    # Each line on its own too: a program may print one line of a key, or the value stripped.
    for part in [value, *(line.strip() for line in value.splitlines())]:
        if len(part) >= MIN_LENGTH:  # a short line stays masked as part of the whole value
            yield from (form for form in _encodings(part) if len(form) >= MIN_LENGTH)


def _utf8(text: str) -> bytes:
    # Environment values may hold undecodable bytes (os.environ's surrogateescape): encode them
    # back to the bytes the agent sees; any other lone surrogate as itself, never failing.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _encodings(value: str) -> Iterator[str]:
    raw = _utf8(value)
    yield value
    yield json.dumps(value)[1:-1]
    yield json.dumps(value, ensure_ascii=False)[1:-1]
    yield quote(raw, safe="")
    yield quote(raw)  # `/` kept, as in URL paths
    yield quote_plus(raw, safe="")
    yield raw.hex()
    yield raw.hex().upper()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw).decode()
        yield whole  # the value encoded on its own, padding included
        yield whole.rstrip("=")
        yield from _base64_alignments(raw, encode)


def _base64_alignments(raw: bytes, encode: Callable[[bytes], bytes]) -> Iterator[str]:
    """The base64 characters that depend only on `raw`'s bits, for `raw` starting at each of the
    three byte offsets of a 3-byte group inside a longer encoded stream (`user:` + password)."""
    for offset in range(3):
        encoded = encode(b"\0" * offset + raw).decode()
        first = -(-8 * offset // 6)  # the first character with no bit of the filler bytes
        last = 8 * (offset + len(raw)) // 6  # past the last character with no bit of what follows
        yield encoded[first:last]


def all_forms(values: Iterable[str]) -> list[str]:
    """The distinct forms of all `values`, longest first (so that the longest match wins)."""
    found = {form for value in values for form in forms(value)}
    return sorted(found, key=lambda form: (-len(form), form))


def _byte_forms(values: Iterable[str]) -> list[bytes]:
    # Sorted again, as bytes: a form with non-ASCII characters is longer in UTF-8.
    found = {_utf8(form) for form in all_forms(values)}
    return sorted(found, key=lambda form: (-len(form), form))


def _alternation(found: list[str]) -> str | None:
    """One regular expression matching any of `found`, the longest where several match at one
    place. Built as a trie (`ab(?:c|d)` rather than `abc|abd`): Python's `re` tries a plain
    alternation's branches one by one at every position, which is several times slower with
    the hundreds of forms of a PEM key."""
    if not found:
        return None
    trie: dict[str, Any] = {}
    for form in found:
        node = trie
        for char in form:
            node = node.setdefault(char, {})
        node[""] = {}  # a form ends here
    return _branches(trie)


def _branches(node: dict[str, Any]) -> str:
    branches = []
    for char in sorted(key for key in node if key):
        text, child = char, node[char]
        while len(child) == 1 and "" not in child:  # a chain without choices: one literal
            ((more, child),) = child.items()
            text += more
        branches.append(re.escape(text) + _branches(child))
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    # A form ends here and longer ones go on: `?` is greedy, so the longer is tried first.
    return f"(?:{body})?" if "" in node else body


def text_pattern(values: Iterable[str]) -> re.Pattern[str] | None:
    """One regular expression matching every form of `values`; None when there is none."""
    pattern = _alternation(all_forms(values))
    return re.compile(pattern) if pattern is not None else None


def bytes_pattern(values: Iterable[str]) -> re.Pattern[bytes] | None:
    """`text_pattern` for bytes: the forms in UTF-8 (as agents print them)."""
    return _bytes_alternation(_byte_forms(values))


def _bytes_alternation(found: list[bytes]) -> re.Pattern[bytes] | None:
    # Latin-1 maps each byte to one character and back: the trie is built once, for text.
    pattern = _alternation([form.decode("latin-1") for form in found])
    return re.compile(pattern.encode("latin-1")) if pattern is not None else None


class Masker:
    """Masks every form of the secret values in a byte stream, also a form split across two
    chunks: `feed` holds back the tail where a form could still be starting."""

    REPLACEMENT = REPLACEMENT.encode()

    def __init__(self, secrets: Mapping[str, str]) -> None:
        found = _byte_forms(secrets.values())
        self.pattern = _bytes_alternation(found)
        self.keep = len(found[0]) - 1 if found else 0
        self.pending = b""

    def mask(self, data: bytes) -> bytes:
        """`data`, whole, with every form masked."""
        return self.pattern.sub(self.REPLACEMENT, data) if self.pattern else data

    def feed(self, chunk: bytes) -> bytes:
        """Masked bytes that are safe to emit; a tail that could start a form is held back.

        Only matches that start before the held-back tail are replaced: the tail is at least one
        byte shorter than the longest form, so whether a form starts before it is already
        decided, and the emitted bytes are exactly what masking the whole stream would give."""
        if self.pattern is None:
            return chunk
        data = self.pending + chunk
        cut = len(data) - self.keep
        if cut <= 0:
            self.pending = data
            return b""
        out: list[bytes] = []
        done = 0
        for match in self.pattern.finditer(data):
            if match.start() >= cut:
                break
            out += (data[done : match.start()], self.REPLACEMENT)
            done = match.end()
        end = max(done, cut)
        out.append(data[done:end])
        self.pending = data[end:]
        return b"".join(out)

    def flush(self) -> bytes:
        """The held-back tail, masked: call once the stream has ended."""
        data, self.pending = self.pending, b""
        return self.mask(data)


def mask_text(text: str, pattern: re.Pattern[str] | None) -> str:
    """`text` with every match of `pattern` (from `text_pattern`) masked."""
    return pattern.sub(REPLACEMENT, text) if pattern else text


def mask_value(value: Any, secrets: Mapping[str, str]) -> Any:
    """`value` (JSON) with every form of the secret values masked in every string, keys too,
    and every number whose digits show a form (`{"pin": 8675309123}`) replaced with `***`."""
    return _masked(value, text_pattern(secrets.values()))


def _number_texts(number: int | float) -> Iterator[str]:
    """The texts a JSON number is written as: `8675309123`, `8675309123.0`, and also in
    positional notation a float that Python writes with an exponent (`1e+16`)."""
    yield repr(number)
    if isinstance(number, float) and math.isfinite(number):
        yield f"{number:f}"


def _masked(value: Any, pattern: re.Pattern[str] | None) -> Any:
    if pattern is None:
        return value
    if isinstance(value, str):
        return mask_text(value, pattern)
    if isinstance(value, int | float) and not isinstance(value, bool):
        # A number cannot hold `***` in place of some digits: a number showing a form is
        # replaced whole, as the string "***" (the form inside a longer number too).
        if any(pattern.search(text) for text in _number_texts(value)):
            return REPLACEMENT
        return value
    if isinstance(value, dict):
        return {mask_text(k, pattern): _masked(v, pattern) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, pattern) for v in value]
    return value
