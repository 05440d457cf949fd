"""The fast path of parsing a batch gives exactly the answers of the exact path.

``parse_changes`` decodes a body once with numbers normalized as they are read
and encodes each record once; whatever it is unsure of goes through
``strict_json.decode`` and ``_parse_element``, which word every refusal. These
tests generate bodies, hostile ones included, and compare the two paths: the
same changes, or the same error with the same details.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import strict_json
from app.errors import InvalidRequest
from app.view_data import service

# Scalars, hostile ones included: literals the exact path refuses or words.
SCALARS = st.one_of(
    st.sampled_from(
        [
            "0",
            "-0.0",
            "10.0",
            "1e1",
            "1.5",
            "1e21",
            "1e20",
            "12345678901234567890123",
            "1e999",
            "-1e999",
            "NaN",
            "Infinity",
            "-Infinity",
            "true",
            "false",
            "null",
            '"a"',
            '"\\ud800"',
            '"\\ud83d\\ude00"',
            '"\\uDFFF x"',
            '"caf\\u00e9"',
            '"\u00e9t\u00e9"',
            '"{[:,]}"',
            "1" * 4400,
        ]
    ),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=5).map(json.dumps),
)
KEYS = st.sampled_from(['"id"', '"total"', '"a"', '"\\ud800"', '"k\u00e9"', '"insert"'])


def objects(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """JSON object texts, duplicate keys possible."""
    return st.lists(st.tuples(KEYS, values), max_size=4).map(
        lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
    )


VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        objects(inner), st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]")
    ),
    max_leaves=8,
)
DEEP = st.integers(95, 105).map(lambda n: '{"x":' + "[" * n + "]" * n + "}")
RECORDS = st.one_of(objects(VALUES), DEEP, VALUES)
ELEMENTS = st.one_of(
    st.tuples(st.sampled_from(['"insert"', '"delete"', '"upsert"']), RECORDS).map(
        lambda p: "{" + f"{p[0]}:{p[1]}" + "}"
    ),
    st.tuples(RECORDS, RECORDS).map(lambda p: '{"insert":' + p[0] + ',"delete":' + p[1] + "}"),
    st.tuples(RECORDS, RECORDS).map(lambda p: '{"insert":' + p[0] + ',"insert":' + p[1] + "}"),
    VALUES,
)


def outcome(parse: Any, *args: Any) -> tuple[str, Any]:
    """What a parser answers: its changes, or its error's message and details."""
    try:
        return "changes", parse(*args)
    except InvalidRequest as exc:
        return "error", (exc.message, exc.details)


def exact_lines(text: str) -> list[tuple[int, str]]:
    """Newline-delimited JSON the exact way: every line through ``strict_json.decode``."""
    changes = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip(service.JSON_WHITESPACE):
            continue
        index = len(changes)
        try:
            element = strict_json.decode(line)
        except strict_json.JsonRefused as exc:
            raise service.bad_element(index, exc.problem, line=number) from None
        changes.append(service._parse_element(element, index, line=number))
    return changes


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ELEMENTS, max_size=6))
def test_a_json_array_gets_the_exact_answer(elements):
    text = "[" + ",".join(elements) + "]"
    fast = outcome(service.parse_changes, text.encode(), "application/json")
    assert fast == outcome(service._parse_array_exactly, text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ELEMENTS, max_size=6))
def test_newline_delimited_json_gets_the_exact_answer(elements):
    text = "\n".join(elements)
    fast = outcome(service.parse_changes, text.encode(), "application/x-ndjson")
    assert fast == outcome(exact_lines, text)


@pytest.mark.parametrize(
    "body",
    [
        '[{"insert": {"id": 1, "a": 1.0, "b": -0.0, "c": 1e20, "d": 1e21, "e": 2.5}}]',
        '[{"insert": {"x": [[[{"y": {"z": 1.0}}]]]}}, {"delete": {"x": 1}}]',
        '[{"insert": {"s": "\\ud83d\\ude00", "t": "caf\u00e9"}}]',
        '[{"insert": {"s": "\\ud800"}}]',
        '[{"insert": {"id": 1, "id": 2}}]',
        '[{"insert": {"n": 1e999}}, {"insert": {"id": 1, "id": 1}}]',
        '[{"insert": 1e999}]',
        "[1e999]",
        '{"insert": {}}',
        "[" + '{"insert": {"x": ' + "[" * 100 + "]" * 100 + "}}]",
        "[" + '{"insert": {"x": ' + "[" * 99 + "]" * 99 + "}}]",
    ],
)
def test_chosen_bodies_get_the_exact_answer(body):
    fast = outcome(service.parse_changes, body.encode(), "application/json")
    assert fast == outcome(service._parse_array_exactly, body)
