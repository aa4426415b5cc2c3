"""RFC 8785 canonical JSON: the RFC's own vectors, the refusals, and round-trip properties."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterator
from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from coact.shared import canonical
from coact.shared.canonical import canonical_json, digest, sha256_hex
from coact.shared.errors import CanonicalizationError, CoactError


@pytest.fixture(autouse=True, scope="module", params=["stdlib", "orjson"])
def plain_encoder(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test here runs with each encoder of plain values (see canonical.use_orjson)."""
    before = canonical._encode_plain
    if request.param == "orjson":
        canonical.use_orjson()
        assert canonical._encode_plain is not before
    yield str(request.param)
    canonical._encode_plain = before


def test_rfc8785_section_3_2_2_main_example() -> None:
    # The input text exactly as the RFC gives it, parsed as any JSON reader would.
    source = r"""{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}"""
    expected = (
        '{"literals":[null,true,false],'
        '"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    ).encode()
    assert canonical_json(json.loads(source)) == expected
    # The same bytes spelled out, so a slip in the escapes above cannot hide.
    assert expected == (
        b'{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        b'"string":"\xe2\x82\xac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )


def test_rfc8785_section_3_2_3_sorting_example() -> None:
    # The input as the RFC writes it, the emoji as a UTF-16 surrogate-pair escape.
    source = r"""{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}"""
    # Sorted by UTF-16 code units: U+1F600 (D83D DE00) sorts before U+FB33 although
    # its code point is larger.
    expected = (
        '{"\\r":"Carriage Return",'
        '"1":"One",'
        '"\u0080":"Control",'
        '"\u00f6":"Latin Small Letter O With Diaeresis",'
        '"\u20ac":"Euro Sign",'
        '"\U0001f600":"Emoji: Grinning Face",'
        '"\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    ).encode()
    assert canonical_json(json.loads(source)) == expected
    values = [value for _, value in json.loads(canonical_json(json.loads(source))).items()]
    assert values == [
        "Carriage Return",
        "One",
        "Control",
        "Latin Small Letter O With Diaeresis",
        "Euro Sign",
        "Emoji: Grinning Face",
        "Hebrew Letter Dalet With Dagesh",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "0"),
        (0.0, "0"),
        (-0.0, "0"),
        (1e21, "1e+21"),
        (333333333.33333329, "333333333.3333333"),
        (1e30, "1e+30"),
        (4.50, "4.5"),
        (2e-3, "0.002"),
        (0.000000000000000000000000001, "1e-27"),
        (5e-324, "5e-324"),
        (-5e-324, "-5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (-1.7976931348623157e308, "-1.7976931348623157e+308"),
        (9007199254740992.0, "9007199254740992"),
        (-9007199254740992.0, "-9007199254740992"),
        (9007199254740991, "9007199254740991"),
        (-9007199254740991, "-9007199254740991"),
        (1e23, "1e+23"),
        (1e-6, "0.000001"),
    ],
)
def test_number_serialisation(value: float, expected: str) -> None:
    assert canonical_json(value) == expected.encode()


# RFC 8785 Appendix B, given as the IEEE 754 bit patterns the RFC lists.
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "expected"), APPENDIX_B)
def test_appendix_b_numbers(bits: str, expected: str) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(bits))
    assert canonical_json(value) == expected.encode()


@pytest.mark.parametrize("bits", ["7fffffffffffffff", "7ff0000000000000", "fff0000000000000"])
def test_appendix_b_nan_and_infinity_are_refused(bits: str) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(bits))
    with pytest.raises(CanonicalizationError):
        canonical_json({"x": [value]})


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        2**53 + 1,
        -(2**53) - 1,
        2**60 + 1,
        2**60,  # an exact double, but JCS spells it 1152921504606847000
        2**1023,
        10**400,
        10**5000,  # beyond Python's int-to-str digit limit
        {"nested": [1, {"deep": 2**53 + 1}]},
        {1: "non-string key"},
        {"when": object()},
        b"bytes",
        "\ud800",  # a lone surrogate has no UTF-8 form
    ],
    ids=lambda value: (
        f"int-{value.bit_length()}-bits" if isinstance(value, int) else repr(value)[:30]
    ),
)
def test_values_without_canonical_form_are_refused(value: Any) -> None:
    with pytest.raises(CanonicalizationError) as info:
        canonical_json(value)
    assert isinstance(info.value, CoactError)
    assert str(info.value)


@pytest.mark.parametrize(
    "value", [2**53, -(2**53), 10**20, 53056747083910570, 295147905179352830000, -(10**20)]
)
def test_large_ints_spelled_as_jcs_spells_a_double_are_kept(value: int) -> None:
    # JCS writes the double 1e20 as the literal 100000000000000000000 (and the double
    # 53056747083910568 as 53056747083910570), which JSON parsers return as an int:
    # that int must canonicalise to the same text.
    assert canonical_json(value) == str(value).encode()
    assert canonical_json([{"n": value}]) == canonical_json([{"n": float(value)}])


def test_bools_are_literals_not_numbers() -> None:
    assert canonical_json([True, False, None, 1, 0]) == b"[true,false,null,1,0]"


def test_tuples_encode_as_arrays() -> None:
    assert canonical_json({"t": (1, "a")}) == b'{"t":[1,"a"]}'


def test_control_characters_and_non_ascii() -> None:
    assert (
        canonical_json("\x00\x1f\x7f\u2028\t\b\f") == b'"\\u0000\\u001f\x7f\xe2\x80\xa8\\t\\b\\f"'
    )


def test_digest_is_sha256_of_canonical_bytes() -> None:
    value = {"b": 1, "a": [1.0, "x"]}
    assert canonical_json(value) == b'{"a":[1,"x"],"b":1}'
    assert digest(value) == hashlib.sha256(b'{"a":[1,"x"],"b":1}').hexdigest()
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# ---------------------------------------------------------------- properties

MAX_SAFE = 2**53 - 1
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE, max_value=MAX_SAFE)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=25,
)


@given(json_values)
def test_canonical_output_is_a_fixed_point(value: Any) -> None:
    once = canonical_json(value)
    assert canonical_json(json.loads(once)) == once


@given(json_values)
def test_canonical_output_parses_back_to_an_equal_value(value: Any) -> None:
    # JSON numbers are doubles: -0.0 becomes 0 and 1.0 becomes 1, equal as numbers.
    assert json.loads(canonical_json(value).decode("utf-8"), parse_int=float) == value


@given(st.dictionaries(st.text(), json_values, max_size=8), st.randoms(use_true_random=False))
def test_key_order_does_not_matter(value: dict[str, Any], rnd: Any) -> None:
    items = list(value.items())
    rnd.shuffle(items)
    assert canonical_json(dict(items)) == canonical_json(value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_fast_path_agrees_with_the_reference_implementation(value: object) -> None:
    try:
        expected = rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeEncodeError):
        with pytest.raises(CanonicalizationError):
            canonical_json(value)
        return
    assert canonical_json(value) == expected


def test_fast_path_escapes_like_jcs() -> None:
    value = {"b": "\u0000\x1f\"\\\n\u2028\u007fé😀", "a": [1, True, None, -(2**53) + 1]}
    assert canonical_json(value) == rfc8785.dumps(value)
