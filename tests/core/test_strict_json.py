"""The one strict JSON reader and the one canonical encoding: every way two parsers could
disagree about a signed document is refused, and every value has one spelling."""

from __future__ import annotations

import pytest

from stockade.strict_json import (
    MAX_DEPTH,
    Fields,
    StrictJsonError,
    canonical_json,
    loads_canonical,
    loads_strict,
    read_base64,
    read_hex,
    read_integer,
)


class Custom(Exception):
    pass


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b'{"a":1,"a":2}', "key 'a' twice"),
        (b'{"x":{"a":1,"a":1}}', "key 'a' twice"),
        (b'{"a":NaN}', "NaN"),
        (b'{"a":Infinity}', "Infinity"),
        (b'{"a":-Infinity}', "-Infinity"),
        (b"\xef\xbb\xbf{}", "byte-order mark"),
        (b'{"a":"\xff"}', "not UTF-8"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested"),
        (b"[" * 100_000 + b"]" * 100_000, "nested"),
        (b'{"a":1', "not JSON"),
        (b"", "not JSON"),
    ],
)
def test_what_two_parsers_could_read_differently_is_refused(data, why):
    with pytest.raises(StrictJsonError, match=why):
        loads_strict(data, "doc", max_size=1 << 20)


def test_errors_come_in_the_callers_class_and_size_is_bounded():
    with pytest.raises(Custom, match="key 'k' twice"):
        loads_strict(b'{"k":1,"k":1}', "doc", max_size=100, error=Custom)
    with pytest.raises(Custom, match="at most 8"):
        loads_strict(b'{"k":123}', "doc", max_size=8, error=Custom)


def test_canonical_form_is_sorted_compact_utf8_and_one_spelling():
    document = {"b": [1, "é"], "a": {"y": None, "x": True}}
    assert canonical_json(document) == '{"a":{"x":true,"y":null},"b":[1,"é"]}'.encode()
    assert loads_canonical(canonical_json(document), "doc", max_size=100) == document
    for other in (b'{"b":[1,"\\u00e9"],"a":{"x":true,"y":null}}', b'{"a": 1}', b'{"b":1,"a":2}'):
        with pytest.raises(StrictJsonError, match="not canonical"):
            loads_canonical(other, "doc", max_size=100)
    with pytest.raises(ValueError):
        canonical_json({"a": float("nan")})


def test_hex_is_lowercase_whole_bytes_of_the_length_asked():
    assert read_hex("00ff", "h") == b"\x00\xff"
    for bad, why in (("00FF", "lowercase"), ("0", "hexadecimal"), ("zz", "hexadecimal")):
        with pytest.raises(StrictJsonError, match=why):
            read_hex(bad, "h")
    assert read_hex("00FF", "h", lowercase=False) == b"\x00\xff"
    with pytest.raises(StrictJsonError, match="2 bytes, expected 32"):
        read_hex("00ff", "h", length=32)
    with pytest.raises(StrictJsonError, match="not a string"):
        read_hex(255, "h")


@pytest.mark.parametrize("bad", ["YR==", "YQ", "Y Q==", "YQ==\n", "ÿÿ==", "Y-8=", 5])
def test_base64_has_one_encoding_per_value(bad):
    with pytest.raises(StrictJsonError):
        read_base64(bad, "b")


def test_base64_standard_and_urlsafe():
    assert read_base64("YQ==", "b") == b"a"
    assert read_base64("-_8=", "b", urlsafe=True) == b"\xfb\xff"
    with pytest.raises(StrictJsonError):
        read_base64("+/8=", "b", urlsafe=True)


def test_integers_are_not_booleans_and_stay_in_range():
    assert read_integer(5, "n", maximum=5) == 5
    for bad in (True, 1.0, "1", None):
        with pytest.raises(StrictJsonError, match="not an integer"):
            read_integer(bad, "n")
    with pytest.raises(StrictJsonError, match="outside"):
        read_integer(-1, "n")
    with pytest.raises(StrictJsonError, match="outside"):
        read_integer(6, "n", maximum=5)


def test_fields_name_the_json_path_of_every_problem():
    fields = Fields({"a": {"b": "x"}, "n": 1}, "doc", required={"a", "n"})
    assert fields.object("a").string("b") == "x"
    with pytest.raises(StrictJsonError, match=r"doc\.a\.c is missing"):
        fields.object("a").string("c")
    with pytest.raises(StrictJsonError, match=r"doc\.n is not a string"):
        fields.string("n")
    with pytest.raises(StrictJsonError, match="unknown field"):
        Fields({"a": 1, "z": 2}, "doc", required={"a"})
    with pytest.raises(StrictJsonError, match="lacks a"):
        Fields({}, "doc", required={"a"})
    with pytest.raises(StrictJsonError, match="not a JSON object"):
        Fields([1], "doc")
