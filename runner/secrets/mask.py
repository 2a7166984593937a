"""Keeping secret values out of logs, outputs and the database: every form a value may take
when a program prints it (its literal, base64, hex, URL- and JSON-escaped text, the lines of a
wrapped base64 or hex encoding, the lines of a multi-line value) is replaced with `***`, and so
is a number in an output whose digits show one of them.

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
import string
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, AnyStr, Generic
from urllib.parse import quote, quote_plus

# A shorter form would match inside ordinary text everywhere (and hint at the value by where
# the `***` appear); values this short are refused as secrets, their short forms never masked.
MIN_LENGTH = 4
REPLACEMENT = "***"

# Where wrapping encoders break their lines: coreutils `base64` and MIME at 76 characters, PEM
# and `openssl base64` at 64; `xxd -p` at 60, and 64 for hex.
BASE64_WIDTHS = (76, 64)
HEX_WIDTHS = (60, 64)
# A wrapped line holds only part of a value: the part of a first or last line (next to other
# data) is masked from this length, so that a short piece never matches ordinary text. Up to
# MIN_CHUNK - 1 characters at each end of a value inside a wrapped stream may stay.
MIN_CHUNK = 16


def forms(value: str) -> Iterator[str]:
    """Every text that reveals `value` (or one of its lines) wherever it appears and must be
    masked, each at least MIN_LENGTH characters long; may repeat a form. The full lines of its
    wrapped encodings, masked only as whole lines, are `wrapped_lines`."""
    # Each line on its own too: a program may print one line of a key, or the value stripped.
    for part in [value, *(line.strip() for line in value.splitlines())]:
        if len(part) >= MIN_LENGTH:  # a short line stays masked as part of the whole value
            yield from (form for form in _encodings(part) if len(form) >= MIN_LENGTH)
    # A wrapping encoder encodes a whole file or value, as it was given (with its final line
    # break) or stripped: the first and last lines of the value's part of its output.
    for whole in _wholes(value):
        yield from _line_ends(whole)


def wrapped_lines(value: str) -> Iterator[str]:
    """The full lines of the value's wrapped encodings (base64 and hex, at every alignment and
    wrapping width), made only of its bits: each masked where it is a whole line. Thousands for
    a PEM key: kept out of the regular expression, and looked up line by line."""
    for whole in _wholes(value):
        for encoded, first, last, step, widths in _streams(whole):
            for cut in range(-(-first // step) * step, last + 1, step):
                for width in widths:
                    if cut + width <= last:
                        yield encoded[cut : cut + width]


def _wholes(value: str) -> list[bytes]:
    # Not each line of a multi-line value: a full line of one line's encoding is one of the
    # whole value's, and the ends of each line would be thousands more forms for a PEM key.
    return [_utf8(whole) for whole in dict.fromkeys([value, value.strip()]) if whole]


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
        for alone in (whole, whole.rstrip("=")):
            yield alone  # the value encoded on its own, padding included
            for width in BASE64_WIDTHS:  # and its last line, when wrapped
                tail = alone[(len(alone) - 1) // width * width :]
                if len(alone) > width and len(tail) >= MIN_CHUNK:
                    yield tail
        yield from _base64_alignments(raw, encode)


def _base64_alignments(raw: bytes, encode: Callable[[bytes], bytes]) -> Iterator[str]:
    """The base64 characters that depend only on `raw`'s bits, for `raw` starting at each of the
    three byte offsets of a 3-byte group inside a longer encoded stream (`user:` + password)."""
    for encoded, first, last, *_ in _base64_streams(raw, encode):
        yield encoded[first:last]


_Stream = tuple[str, int, int, int, tuple[int, ...]]


def _base64_streams(raw: bytes, encode: Callable[[bytes], bytes]) -> Iterator[_Stream]:
    for offset in range(3):
        encoded = encode(b"\0" * offset + raw).decode()
        first = -(-8 * offset // 6)  # the first character with no bit of the filler bytes
        last = 8 * (offset + len(raw)) // 6  # past the last character with no bit of what follows
        # A wrapped line holds whole 3-byte groups: it breaks at any multiple of 4 characters.
        yield encoded, first, last, 4, BASE64_WIDTHS


def _streams(raw: bytes) -> Iterator[_Stream]:
    """`raw` encoded inside longer streams, as (encoded, first, last, step, widths):
    `encoded[first:last]` is made only of `raw`'s bits, and an encoder wrapping at one of
    `widths` may break a line at any multiple of `step` of `encoded` (where depends on what
    comes before the value)."""
    for digits in (raw.hex(), raw.hex().upper()):
        yield digits, 0, len(digits), 2, HEX_WIDTHS  # `xxd -p` breaks after any byte
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        yield from _base64_streams(raw, encode)


def _line_ends(raw: bytes) -> Iterator[str]:
    """Of `raw`'s part of a wrapped encoding, the end of the line where it starts and the start
    of the line where it ends, each from MIN_CHUNK characters long (shorter, it could be
    ordinary text). A value within one line is `encoded[first:last]`, not this."""
    for encoded, first, last, step, widths in _streams(raw):
        for cut in range(-(-first // step) * step, last + 1, step):
            if MIN_CHUNK <= cut - first <= max(widths):
                yield encoded[first:cut]
            if MIN_CHUNK <= last - cut <= max(widths):
                yield encoded[cut:last]


def all_forms(values: Iterable[str]) -> list[str]:
    """The distinct forms of all `values`, longest first (so that the longest match wins)."""
    found = {form for value in values for form in forms(value)}
    return sorted(found, key=lambda form: (-len(form), form))


def _byte_forms(values: Iterable[str]) -> list[bytes]:
    # Sorted again, as bytes: a form with non-ASCII characters is longer in UTF-8.
    found = {_utf8(form) for form in all_forms(values)}
    return sorted(found, key=lambda form: (-len(form), form))


def _trie(found: list[str]) -> str:
    """One regular expression matching any of `found`, the longest where several match at one
    place. Built as a trie (`ab(?:c|d)` rather than `abc|abd`): Python's `re` tries a plain
    alternation's branches one by one at every position, which is several times slower with
    the hundreds of forms of a PEM key."""
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


# The characters of base64 (both alphabets) and hex: a wrapped line is a whole run of them.
_ALPHABET = frozenset(string.ascii_letters + string.digits + "+/_-")
_LONGEST_LINE = max(*BASE64_WIDTHS, *HEX_WIDTHS)
_RUN = f"[A-Za-z0-9+/_-]{{{min(*BASE64_WIDTHS, *HEX_WIDTHS)},}}"
_NONE = (sys.maxsize, sys.maxsize)  # no further match


class Matcher(Generic[AnyStr]):
    """Finds the forms of some secret values in text or bytes: the forms (`forms`) through one
    regular expression, and the full lines of their wrapped encodings (`wrapped_lines`) by
    looking each whole line of a wrapping width up in a set."""

    def __init__(
        self,
        regex: re.Pattern[AnyStr],
        longest: int,
        lines: frozenset[AnyStr],
        run: re.Pattern[AnyStr],
        alphabet: frozenset[AnyStr],
        json_break: AnyStr,
    ) -> None:
        self.regex: re.Pattern[AnyStr] = regex
        self.lines: frozenset[AnyStr] = lines
        self.run: re.Pattern[AnyStr] = run  # a run of `alphabet` as long as a line at least
        self.alphabet: frozenset[AnyStr] = alphabet
        self.json_break: AnyStr = json_break
        # How far past the start of a match deciding it may look: the longest form, or a line
        # and the character after it.
        self.reach = max(longest, _LONGEST_LINE + 1 if lines else 0)

    def spans(self, data: AnyStr, pos: int = 0) -> Iterator[tuple[int, int]]:
        """Where forms are in `data` from `pos` on (what precedes `pos` is context), without
        overlapping: the leftmost, and the longest of those starting there."""
        form = line = (-1, -1)  # the next match of each kind, kept while it is still ahead
        while True:
            if form[0] < pos:
                match = self.regex.search(data, pos)
                form = match.span() if match else _NONE
            if line[0] < pos:
                line = self._next_line(data, pos)
            if form == line == _NONE:
                return
            found = min(form, line, key=lambda span: (span[0], -span[1]))
            yield found
            pos = found[1]

    def _next_line(self, data: AnyStr, pos: int) -> tuple[int, int]:
        """The next whole line that is a full line of a wrapped encoding."""
        if not self.lines:
            return _NONE
        lines, json_n = self.lines, self.json_break[1:]
        for run in self.run.finditer(data, pos):
            start, end = run.span()
            if end - start > _LONGEST_LINE + 1:
                continue  # longer than a line, even after JSON's `\\n`
            if data[start:end] in lines and self._line_starts(data, start):
                return start, end
            if (  # after JSON's `\\n`, the line starts past the `n`
                data[start : start + 1] == json_n
                and data[start + 1 : end] in lines
                and self._line_starts(data, start + 1)
            ):
                return start + 1, end
        return _NONE

    def _line_starts(self, data: AnyStr, at: int) -> bool:
        """Whether a line starts at `at`: after a line break, a space, a quote or JSON's `\\n`
        (whatever `pos` a search started from, so that a stream cut anywhere agrees)."""
        return data[at - 1 : at] not in self.alphabet or data[at - 2 : at] == self.json_break

    def sub(self, replacement: AnyStr, data: AnyStr, pos: int = 0) -> AnyStr:
        """`data` from `pos` on, with every form replaced."""
        if not self.lines and not pos:
            return self.regex.sub(replacement, data)  # the same, in C
        out: list[AnyStr] = []
        done = pos
        for start, end in self.spans(data, pos):
            out += (data[done:start], replacement)
            done = end
        out.append(data[done:])
        return self.json_break[:0].join(out)

    def reveals(self, data: AnyStr) -> bool:
        """Whether `data` shows a form."""
        return next(self.spans(data), None) is not None


def text_pattern(values: Iterable[str]) -> Matcher[str] | None:
    """A matcher of every form of `values` in text; None when there is none."""
    values = list(values)
    found = all_forms(values)
    if not found:
        return None
    lines = frozenset(line for value in values for line in wrapped_lines(value))
    regex = re.compile(_trie(found))
    return Matcher(regex, len(found[0]), lines, re.compile(_RUN), _ALPHABET, "\\n")


def bytes_pattern(values: Iterable[str]) -> Matcher[bytes] | None:
    """`text_pattern` for bytes: the forms in UTF-8 (as agents print them)."""
    values = list(values)
    found = _byte_forms(values)
    if not found:
        return None
    # Latin-1 maps each byte to one character and back: the trie is built once, for text.
    regex = re.compile(_trie([form.decode("latin-1") for form in found]).encode("latin-1"))
    lines = frozenset(line.encode() for value in values for line in wrapped_lines(value))
    alphabet = frozenset(char.encode() for char in _ALPHABET)
    return Matcher(regex, len(found[0]), lines, re.compile(_RUN.encode()), alphabet, b"\\n")


class Masker:
    """Masks every form of the secret values in a byte stream, also a form split across two
    chunks: `feed` holds back the tail where a form could still be starting."""

    REPLACEMENT = REPLACEMENT.encode()
    CONTEXT = 2  # bytes before a match that deciding it may look at (JSON's `\n`)

    def __init__(self, secrets: Mapping[str, str]) -> None:
        self.matcher = bytes_pattern(secrets.values())
        self.keep = self.matcher.reach - 1 if self.matcher else 0
        self.before = b""  # the last bytes emitted, unmasked: context for what follows
        self.pending = b""

    def mask(self, data: bytes) -> bytes:
        """`data`, whole, with every form masked."""
        return self.matcher.sub(self.REPLACEMENT, data) if self.matcher else data

    def feed(self, chunk: bytes) -> bytes:
        """Masked bytes that are safe to emit; a tail that could start a form is held back.

        Only matches that start before the held-back tail are replaced: the tail is at least as
        long as what deciding a match looks at past its start, so whether a form starts before
        it is already decided, and the emitted bytes are exactly what masking the whole stream
        would give."""
        if self.matcher is None:
            return chunk
        data = self.before + self.pending + chunk
        start = len(self.before)
        cut = len(data) - self.keep
        if cut <= start:
            self.pending = data[start:]
            return b""
        out: list[bytes] = []
        done = start
        for begin, end in self.matcher.spans(data, start):
            if begin >= cut:
                break
            out += (data[done:begin], self.REPLACEMENT)
            done = end
        end = max(done, cut)
        out.append(data[done:end])
        self.before, self.pending = data[max(0, end - self.CONTEXT) : end], data[end:]
        return b"".join(out)

    def flush(self) -> bytes:
        """The held-back tail, masked: call once the stream has ended."""
        data, start = self.before + self.pending, len(self.before)
        self.before = self.pending = b""
        return self.matcher.sub(self.REPLACEMENT, data, start) if self.matcher else data[start:]


def mask_text(text: str, pattern: Matcher[str] | None) -> str:
    """`text` with every form found by `pattern` (from `text_pattern`) masked."""
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


def _masked(value: Any, pattern: Matcher[str] | None) -> Any:
    if pattern is None:
        return value
    if isinstance(value, str):
        return mask_text(value, pattern)
    if isinstance(value, int | float) and not isinstance(value, bool):
        # A number cannot hold `***` in place of some digits: a number showing a form is
        # replaced whole, as the string "***" (the form inside a longer number too).
        if any(pattern.reveals(text) for text in _number_texts(value)):
            return REPLACEMENT
        return value
    if isinstance(value, dict):
        return {mask_text(k, pattern): _masked(v, pattern) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, pattern) for v in value]
    return value
