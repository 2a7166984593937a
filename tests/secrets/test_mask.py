"""Masking of secret values in every form a program may print them: base64 at any alignment,
hex, URL and JSON escapes, the lines of a multi-line value, the lines of a wrapped base64 or hex
encoding, a JSON number; in a stream cut anywhere."""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest

from runner.executors.base import Masker as ReExported
from runner.secrets.mask import (
    MIN_CHUNK,
    MIN_LENGTH,
    Masker,
    Matcher,
    forms,
    mask_text,
    mask_value,
    text_pattern,
    wrapped_lines,
)

SECRETS = [
    "abcd",  # the shortest value masked
    "tok-3f9a8b7c6d",
    'pa"ss\\wo/rd & more',  # JSON and URL escapes
    "clé-secrète-42",  # non-ASCII: two bytes per accented letter
]
PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n"
    "BKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n"
    "ab\n"  # a short line: masked only as part of the whole key
    "-----END PRIVATE KEY-----\n"
)

Encoder = Callable[[bytes], bytes]


def masked(text: str, *secrets: str) -> str:
    result: str = mask_value(text, {f"S{i}": s for i, s in enumerate(secrets)})
    return result


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_base64_of_a_longer_stream_at_every_offset(secret: str, encode: Encoder) -> None:
    raw = secret.encode()
    for before in range(6):  # every alignment, twice
        for after in range(4):
            text = encode(b"<" * before + raw + b">" * after).decode()
            # The characters made only of the secret's bits; the one or two on each edge mix
            # in bits of the neighbours and may stay.
            first = -(-8 * before // 6)
            last = 8 * (before + len(raw)) // 6
            result = masked(f"log: {text} end", secret)
            assert result.startswith(f"log: {text[:first]}***"), (before, after, result)
            assert result.endswith(" end")
            rest = result[len(f"log: {text[:first]}***") : -len(" end")]
            assert text[last:].endswith(rest), (before, after, result)


@pytest.mark.parametrize("secret", SECRETS)
def test_the_value_encoded_alone_is_masked_whole_with_its_padding(secret: str) -> None:
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        assert masked(f"[{encode(secret.encode()).decode()}]", secret) == "[***]"


@pytest.mark.parametrize("secret", SECRETS)
def test_hex_lower_and_upper(secret: str) -> None:
    digits = secret.encode().hex()
    assert masked(f"id={digits} ID={digits.upper()}.", secret) == "id=*** ID=***."


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("escape", [lambda v: quote(v, safe=""), quote, quote_plus])
def test_url_encoded(secret: str, escape: Callable[[str], str]) -> None:
    url = f"https://example.com/cb?token={escape(secret)}&next=1"
    assert masked(url, secret) == "https://example.com/cb?token=***&next=1"


JSON_SECRETS = ['quo"te\\back', "new\nline-value", "naïve-ключ-42", "tab\there/slash"]


@pytest.mark.parametrize("secret", JSON_SECRETS)
@pytest.mark.parametrize("ascii_only", [True, False])
def test_json_escaped(secret: str, ascii_only: bool) -> None:
    document = json.dumps({"token": secret, "n": 1}, ensure_ascii=ascii_only)
    result = masked(document, secret)
    assert json.loads(result) == {"token": "***", "n": 1}


def test_each_line_of_a_multi_line_secret_alone() -> None:
    lines = [line for line in PEM.splitlines() if len(line) >= MIN_LENGTH]
    for line in lines:
        assert masked(f"> {line} <", PEM) == "> *** <"
        assert masked(f"> {base64.b64encode(line.encode()).decode()} <", PEM) == "> *** <"
    assert masked(f"whole: {PEM}!", PEM) == "whole: ***!"  # one mask, not one per line
    assert masked("> ab <", PEM) == "> ab <"  # a short line alone is ordinary text
    assert masked(json.dumps(PEM), PEM) == '"***"'


def test_short_values_and_forms_are_never_masked() -> None:
    assert masked("abc YWJj 616263 abc", "abc") == "abc YWJj 616263 abc"
    for secret in [*SECRETS, PEM, "abcd\nxy"]:
        assert all(len(form) >= MIN_LENGTH for form in forms(secret))
    assert Masker({"A": "abc", "B": ""}).feed(b"abc") == b"abc"


def test_json_values_keys_and_nesting() -> None:
    secret = "tok-3f9a8b7c6d"
    value = {"list": [secret, {"deep": f"x{secret.encode().hex()}x"}], secret: 3, "n": None}
    assert mask_value(value, {"T": secret}) == {
        "list": ["***", {"deep": "x***x"}],
        "***": 3,
        "n": None,
    }
    assert mask_value(value, {}) == value


def every_form(secret: str) -> list[bytes]:
    return sorted({form.encode() for form in forms(secret)})


@pytest.mark.parametrize("secret", [*SECRETS, PEM])
def test_a_form_split_across_two_chunks(secret: str) -> None:
    masker = Masker({"S": secret})  # `flush` ends one stream: the next starts clean
    for form in every_form(secret):
        stream = b"before " + form + b" after"
        for cut in range(1, len(stream)):
            out = masker.feed(stream[:cut]) + masker.feed(stream[cut:]) + masker.flush()
            assert out == b"before *** after", (form, cut, out)


def test_any_chunking_gives_what_masking_the_whole_stream_gives() -> None:
    secrets = {"A": "tok-3f9a8b7c6d", "B": PEM, "C": "clé-secrète-42"}
    pieces = [form for secret in secrets.values() for form in every_form(secret)]
    rng = random.Random(15)
    stream = b"".join(rng.choice([b"noise ", b"\n", b"tok-", b"MIIE", *pieces]) for _ in range(400))
    whole = Masker(secrets).mask(stream)
    assert b"tok-3f9a8b7c6d" not in whole
    for _ in range(20):
        masker, out, at = Masker(secrets), b"", 0
        while at < len(stream):
            size = rng.choice([1, 2, 7, 64, 1000])
            out += masker.feed(stream[at : at + size])
            at += size
        assert out + masker.flush() == whole


def test_the_executors_still_import_it_from_their_base() -> None:
    assert ReExported is Masker


def test_a_value_with_bytes_that_are_not_utf8_is_masked_as_those_bytes() -> None:
    secret = os.fsdecode(b"\xffraw-\xfe-bytes")  # how os.environ holds such a value
    masker = Masker({"S": secret})
    assert masker.mask(b"[\xffraw-\xfe-bytes]") == b"[***]"
    assert masker.mask(b"[" + b"\xffraw-\xfe-bytes".hex().encode() + b"]") == b"[***]"
    assert masked("[\ud800lone-surrogate]", "\ud800lone-surrogate") == "[***]"


@pytest.mark.parametrize(
    ("number", "masked"),
    [  # (the number as the agent writes it in its JSON output, whether it is masked)
        ("8675309123", True),  # the value written as a JSON number
        ("8675309123.0", True),
        ("8.675309123e9", True),  # with an exponent: the same number
        ("-8675309123", True),
        ("186753091234", True),  # inside a longer number, as inside a longer string
        ("3.14159265", True),
        ("1e16", True),  # Python writes it `1e+16`: masked by its positional digits
        ("61626364", True),  # the hex form of "abcd", all digits
        ("8675309", False),  # a part of a value shorter than the value's forms
        ("42", False),
        ("0.5", False),
        ("true", False),  # not a number, although Python's bool is an int
        ("null", False),
    ],
)
def test_numbers_whose_digits_show_a_form_are_masked(number: str, masked: bool) -> None:
    secrets = {"PIN": "8675309123", "PI": "3.14159265", "BIG": "10000000000000000", "A": "abcd"}
    value = json.loads(number)
    expected = "***" if masked else value
    document = json.loads(f'{{"n": {number}, "list": [{number}], "deep": {{"n": {number}}}}}')
    assert mask_value(document, secrets) == {
        "n": expected,
        "list": [expected],
        "deep": {"n": expected},
    }
    assert mask_value(document, {}) == document


def test_a_secret_that_is_all_digits_is_masked_as_string_number_and_key() -> None:
    document = json.loads('{"pin": 8675309123, "as text": "8675309123", "8675309123": 1.5}')
    assert mask_value(document, {"PIN": "8675309123"}) == {
        "pin": "***",
        "as text": "***",
        "***": 1.5,
    }


def pem(size: int, seed: int) -> str:
    """A PEM-like key of `size` random bytes: the realistic long secret."""
    body = base64.encodebytes(random.Random(seed).randbytes(size)).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END PRIVATE KEY-----\n"


LONG_TOKEN = "tok-" + "0123456789abcdefghijklmnopqrstuvwxyz" * 3  # 112 characters
LONG_KEY = pem(480, seed=1)

# How each encoding makes a longer stream, and where the value's characters are in it: those
# from `first` to `last` hold only the value's bits (base64 mixes a neighbour's bits into one
# or two characters at each edge).
ENCODINGS: dict[str, tuple[Encoder, Callable[[int, int], tuple[int, int]]]] = {
    "base64": (
        base64.b64encode,
        lambda before, size: (-(-8 * before // 6), 8 * (before + size) // 6),
    ),
    "base64url": (
        base64.urlsafe_b64encode,
        lambda before, size: (-(-8 * before // 6), 8 * (before + size) // 6),
    ),
    "hex": (lambda raw: raw.hex().encode(), lambda before, size: (2 * before, 2 * (before + size))),
    "HEX": (
        lambda raw: raw.hex().upper().encode(),
        lambda before, size: (2 * before, 2 * (before + size)),
    ),
}
WRAPPED = [  # (encoding, width): coreutils `base64` and MIME; PEM; `xxd -p`; hex at 64
    ("base64", 76),
    ("base64", 64),
    ("base64url", 76),
    ("base64url", 64),
    ("hex", 60),
    ("hex", 64),
    ("HEX", 60),
    ("HEX", 64),
]
PATTERNS: dict[str, Matcher[str] | None] = {}


def pattern_of(secret: str) -> Matcher[str] | None:
    if secret not in PATTERNS:  # built once per secret: a PEM key has thousands of lines
        PATTERNS[secret] = text_pattern([secret])
    return PATTERNS[secret]


def wrapped_case(
    encoding: str, width: int, secret: str, before: int, after: int
) -> tuple[str, str]:
    """`secret` between `before` and `after` other bytes, encoded and wrapped at `width`; and
    what masking must show: every line made only of the value's characters, and each part of a
    first or last line from MIN_CHUNK characters long, is `***`; the value within one line is."""
    encode, span = ENCODINGS[encoding]
    raw = secret.encode()
    rng = random.Random(before * 7 + after)
    # Bytes with the high bit set: a character mixing their bits with the value's never equals
    # the value's own last character (zero bits follow it when it ends the stream).
    other = [bytes(rng.randrange(128, 256) for _ in range(n)) for n in (before, after)]
    text = encode(other[0] + raw + other[1]).decode()
    first, last = span(before, len(raw))
    # The last lines of the value encoded alone (76 or 64 a line) are forms, padding included:
    # where the stream ends with the value at the first alignment, they end it.
    alone = encode(raw).decode().rstrip("=")
    tails = {alone[(len(alone) - 1) // w * w :] for w in (76, 64) if len(alone) > w}
    shown = []
    for start in range(0, len(text), width):
        line = text[start : start + width]
        end = start + len(line)
        a, b = max(start, first), min(end, last)  # the value's characters on this line
        if not after and end == len(text) and line[a - start :].rstrip("=") in tails:
            shown.append(f"{line[: a - start]}***")
        elif a >= b:
            shown.append(line)
        elif (
            (a, b) == (first, last)  # the value's characters within one line
            or ((a, b) == (start, end) and len(line) == width)  # a full line
            or b - a >= MIN_CHUNK  # the end or the start of a line, long enough
        ):
            shown.append(f"{line[: a - start]}***{line[b - start :]}")
        else:
            shown.append(line)  # a piece too short to mask without masking ordinary text
    return "\n".join(text[i : i + width] for i in range(0, len(text), width)), "\n".join(shown)


@pytest.mark.parametrize("secret", [LONG_TOKEN, LONG_KEY], ids=["token", "pem"])
@pytest.mark.parametrize(("encoding", "width"), WRAPPED)
def test_a_wrapped_encoding_of_a_longer_stream_at_every_alignment_and_line_break(
    encoding: str, width: int, secret: str
) -> None:
    pattern = pattern_of(secret)
    for before in range(0, width * 3 // 4 + 3):  # every place of a line break, every alignment
        for after in (0, 1, 2):
            text, expected = wrapped_case(encoding, width, secret, before, after)
            assert mask_text(text, pattern) == expected, (before, after)


@pytest.mark.parametrize("secret", [LONG_TOKEN, LONG_KEY], ids=["token", "pem"])
def test_the_value_alone_wrapped_by_encodebytes_is_masked_line_by_line(secret: str) -> None:
    pattern = pattern_of(secret)
    text = base64.encodebytes(secret.encode()).decode()  # 76 a line, as coreutils `base64` writes
    lines = len(text.splitlines())
    assert mask_text(text, pattern) == "***\n" * lines  # the last line with its padding too
    assert mask_text(text.replace("\n", "\r\n"), pattern) == "***\r\n" * lines  # MIME
    indented = "".join(f"    {line}\n" for line in text.splitlines())  # a YAML block
    assert mask_text(indented, pattern) == "    ***\n" * lines


def test_wrapped_lines_are_masked_only_as_whole_lines() -> None:
    ends = set(forms(LONG_TOKEN))  # the first and last lines: masked anywhere
    line = next(line for line in wrapped_lines(LONG_TOKEN) if not any(end in line for end in ends))
    pattern = pattern_of(LONG_TOKEN)
    for whole in (f"{line}\n", f"> {line} <", f'"{line}"', f"a\\n{line}\\nb", f"x={line}"):
        assert line not in mask_text(whole, pattern), whole
    # Inside a longer run of base64 characters it is no line of a wrapped encoding.
    assert mask_text(f"Q{line}Q", pattern) == f"Q{line}Q"


def test_pieces_shorter_than_min_chunk_never_mask_ordinary_text() -> None:
    for secret in (LONG_TOKEN, LONG_KEY, *SECRETS):
        assert all(len(line) >= MIN_CHUNK for line in wrapped_lines(secret))
        assert all(len(form) >= MIN_LENGTH for form in forms(secret))
    # The end of a line holding the first 15 characters of the value's hex: ordinary text; 16
    # characters (64 bits) are masked.
    assert MIN_CHUNK == 16
    piece = LONG_TOKEN.encode().hex()[:15]
    assert mask_text(f"ab{piece}\nrest", pattern_of(LONG_TOKEN)) == f"ab{piece}\nrest"
    piece = LONG_TOKEN.encode().hex()[:16]
    assert mask_text(f"ab{piece}\nrest", pattern_of(LONG_TOKEN)) == "ab***\nrest"


TOOLS = [["base64"], ["base64", "-w", "64"], ["openssl", "base64"], ["xxd", "-p"]]


@pytest.mark.parametrize("tool", TOOLS, ids=" ".join)
def test_what_the_wrapping_tools_print_is_masked(tool: list[str]) -> None:
    if not shutil.which(tool[0]):
        pytest.skip(f"{tool[0]} is not installed")
    masker = Masker({"KEY": LONG_KEY})  # `flush` ends one stream: the next starts clean
    for before in range(0, 61, 7):
        data = b"u" * before + LONG_KEY.encode() + b"!"
        printed = subprocess.run(tool, input=data, capture_output=True, check=True).stdout
        shown = masker.feed(printed) + masker.flush()
        assert not leaked_chunks(shown.decode(), LONG_KEY), (tool, before, shown)


def leaked_chunks(text: str, secret: str) -> set[str]:
    """The pieces of MIN_CHUNK characters of the value's base64 (any alignment) or hex that
    `text` still shows."""
    raw = secret.encode()
    cores = [raw.hex(), raw.hex().upper()]
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for lead in range(3):
            encoded = encode(b"\0" * lead + raw).decode()
            cores.append(encoded[-(-8 * lead // 6) : 8 * (lead + len(raw)) // 6])
    pieces = {core[i : i + MIN_CHUNK] for core in cores for i in range(len(core) - MIN_CHUNK + 1)}
    return {text[i : i + MIN_CHUNK] for i in range(len(text))} & pieces


def test_a_wrapped_encoding_in_a_stream_cut_anywhere_is_masked_line_by_line() -> None:
    secrets = {"KEY": LONG_KEY, "TOKEN": LONG_TOKEN}
    rng = random.Random(7)
    parts = []
    for _ in range(30):
        secret = rng.choice([LONG_KEY, LONG_TOKEN]).encode()
        raw = rng.randbytes(rng.randrange(40)) + secret + rng.randbytes(rng.randrange(3))
        wrapped = rng.choice(
            [
                base64.encodebytes(raw),
                base64.encodebytes(raw).replace(b"\n", b"\r\n"),
                json.dumps(base64.encodebytes(raw).decode()).encode(),  # `\n` escapes
                b"\n".join(raw.hex().encode()[i : i + 60] for i in range(0, 2 * len(raw), 60)),
            ]
        )
        parts += [wrapped, rng.choice([b"\n", b" noise ", b"\nINFO step done\n"])]
    stream = b"".join(parts)
    whole = Masker(secrets).mask(stream)
    for secret in secrets.values():
        assert not leaked_chunks(whole.decode(), secret)
    for _ in range(10):
        masker, out, at = Masker(secrets), b"", 0
        while at < len(stream):
            size = rng.choice([1, 3, 75, 77, 200, 4096])
            out += masker.feed(stream[at : at + size])
            at += size
        assert out + masker.flush() == whole
