"""Hypothesis strategies shared by the fuzz tests: JSON documents that are valid but wrong (a field mutated,
deleted, duplicated or added), JSON that is not valid (bad UTF-8, deep nesting, truncation) and raw bytes.

Every fuzz run is bounded and reproducible: `fuzz(n)` derandomizes and keeps no example database, so CI
tries the same examples each time (the failing one is printed, minimal, when a property breaks).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


def fuzz(max_examples: int) -> settings:
    """Settings of one bounded, reproducible fuzz run of `max_examples` examples."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example])


def fragment(value: Any) -> bytes:
    """`value` as JSON text (Python's encoder: integers of any size, unlike orjson's)."""
    return json.dumps(value).encode()


def nested(depth: int, opener: str) -> bytes:
    """An array or object nested `depth` levels deep."""
    if opener == "[":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10))
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)

#: One JSON value a sender should not send: out-of-range numbers, wrong types, strings a decoder may choke
#: on (not UTF-8, lone surrogates, NUL, raw control characters), deep nesting, truncated text.
NASTY: st.SearchStrategy[bytes] = st.one_of(
    st.sampled_from([2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 2**64 + 1, -(2**63) - 1, 10**40, -(10**40), -1, 0,
                     1]).map(fragment),
    st.integers().map(fragment),
    st.floats(allow_nan=False, allow_infinity=False).map(fragment),
    st.sampled_from([b"1e400", b"-1e400", b"-0", b"0.0", b"1.5", b"true", b"false", b"null", b'""', b"[]", b"{}",
                     b"[null]", b'{"": null}']),
    st.text(max_size=20).map(fragment),
    st.sampled_from([b'"\\ud800"', b'"\\udc00x"', b'"\xff\xfe"', b'"\xc3"', b'"\xed\xa0\x80"', b'"a\\u0000b"',
                     b'"A\\u001b[31m"', b'"\x01raw control"', b'"caf\xc3\xa9"', b'"\\x41"']),
    st.binary(max_size=12).map(lambda b: b'"' + b.replace(b'"', b"").replace(b"\\", b"") + b'"'),
    st.builds(nested, st.sampled_from([2, 64, 254, 255, 256, 300, 1023, 1024, 1025, 3000, 20_000]),
              st.sampled_from("[{")),
    JSON_VALUES.map(fragment),
    st.sampled_from([b"", b"[", b"{", b'"', b"1 2", b"nul", b'"unterminated', b"[1,]", b"{,}", b"NaN", b"Infinity"]),
    st.just(fragment("x" * 100_000)),
)


def _document(items: list[tuple[bytes, bytes]]) -> bytes:
    return b"{" + b",".join(key + b":" + value for key, value in items) + b"}"


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> tuple[bytes, str]:
    """`base` (a valid message as a dict) as JSON with one field replaced by a NASTY value, a NASTY value put
    inside it, the field deleted or given twice, or an unknown field added; returns the text and the field."""
    items = [(fragment(k), fragment(v)) for k, v in base.items()]
    name = draw(st.sampled_from(sorted(base)))
    key = fragment(name)
    value = draw(NASTY)
    how = draw(st.sampled_from(["replace", "replace", "inside", "delete", "duplicate", "add"]))
    if how == "replace":
        items = [(k, value if k == key else v) for k, v in items]
    elif how == "inside":  # into a free-form field (truth, probs, detail...) or in place of a scalar
        wrap = draw(st.sampled_from([b'{"label":%s}', b'{"k":%s,"k2":[%s]}', b"[%s]"]))
        items = [(k, wrap.replace(b"%s", value) if k == key else v) for k, v in items]
    elif how == "delete":
        items = [(k, v) for k, v in items if k != key]
    elif how == "duplicate":
        items.append((key, value))
    else:
        name = draw(st.text(max_size=8))
        items.append((fragment(name), value))
    return _document(items), name


def documents(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """Anything a socket may deliver where one `base`-shaped JSON object is expected."""
    return st.one_of(mutated(base).map(lambda doc: doc[0]), NASTY, st.binary(max_size=300),
                     st.just(fragment(base)))
