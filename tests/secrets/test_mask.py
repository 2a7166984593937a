"""Masking of secret values in every form a program may print them: base64 at any alignment,
hex, URL and JSON escapes, the lines of a multi-line value, a JSON number; in a stream cut
anywhere."""

from __future__ import annotations

import base64
import json
import os
import random
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest

from runner.executors.base import Masker as ReExported
from runner.secrets.mask import MIN_LENGTH, Masker, forms, mask_value

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
