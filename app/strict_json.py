"""Strict JSON for request bodies: only what JSON allows, and numbers in one form.

Python's :mod:`json` is lenient where a service must not be: it takes ``NaN``
and ``Infinity``, overflows ``1e999`` to infinity, keeps the last of duplicate
keys, decodes ``"\\ud800"`` into a string that cannot be encoded again, and
fails with ``RecursionError`` or ``ValueError`` (not ``JSONDecodeError``) on
deep nesting and on integers of more than 4,300 digits. :func:`decode` and
:func:`normalize` refuse all of those with :class:`JsonRefused`, which says
what is wrong (and, for broken JSON, where).

:func:`normalize` also gives each number one form, so that equal JSON values
are equal Python values (see :func:`normalize` for the rule).
"""

from __future__ import annotations

import json
import math
import sys
from json.encoder import c_make_encoder, encode_basestring
from typing import Any

# Deepest nesting of arrays and objects taken; far below the interpreter's
# recursion limit, so that encoding a stored value again never fails.
MAX_DEPTH = 100
# Integral doubles below this magnitude are written as integers; above it as
# doubles. 1e21 is where JavaScript's JSON.stringify switches to exponents,
# and it bounds the digits a short literal such as 1e20 can grow into.
INTEGRAL_DOUBLE_LIMIT = 1e21

NOT_A_NUMBER = "NaN, Infinity and numbers beyond the double range (such as 1e999) are not JSON"


class JsonRefused(ValueError):
    """The text is not JSON this service takes; ``problem`` says why, for humans."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class _Refused:
    """Stands in for a value the decoder cannot take, so that the caller can say where it is."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any] | _Refused:
    """Build an object, or a refusal naming its first duplicate key."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    for key, _value in pairs:
        if key in seen:
            break
        seen.add(key)
    shown = key if len(key) <= 40 else key[:40] + "..."
    return _Refused(f"duplicate key {json.dumps(shown)} in one object")


def _integer(text: str) -> int | _Refused:
    """Convert an integer literal, or refuse one longer than Python converts."""
    limit = sys.get_int_max_str_digits()
    if limit and len(text.lstrip("-")) > limit:
        return _Refused(f"an integer of more than {limit} digits")
    return int(text)


def decode(text: str) -> Any:
    """Parse one JSON text; raise :class:`JsonRefused` when it cannot be parsed.

    Duplicate keys and over-long integers do not raise here: they decode to
    markers that :func:`normalize` (or :func:`refusal`) refuses, so that the
    caller can name the element holding them.
    """
    try:
        try:
            # The C scanner's own integer conversion is the fast path; it fails
            # (ValueError) only on integers of more than 4,300 digits.
            return json.loads(text, object_pairs_hook=_object)
        except json.JSONDecodeError:
            raise
        except ValueError:
            return json.loads(text, object_pairs_hook=_object, parse_int=_integer)
    except json.JSONDecodeError as exc:
        raise JsonRefused(f"not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise JsonRefused(f"nested deeper than {MAX_DEPTH} levels") from None


def refusal(value: Any) -> str | None:
    """Return the problem if ``value`` is a marker :func:`decode` left for a refused value."""
    return value.problem if type(value) is _Refused else None


def _check_text(text: str) -> None:
    """Refuse a string holding a lone surrogate (``"\\ud800"``): it is not Unicode text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JsonRefused("a lone surrogate (such as \\ud800) in a string") from None


def normalize(value: Any, depth: int = 0) -> Any:
    """Return ``value`` with every number in its one form; refuse what JSON cannot hold.

    The rule: two numbers are the same when their values are equal, integers
    taken exactly and numbers with a fraction or an exponent as IEEE doubles.
    An integral double of magnitude below 1e21 becomes that integer (``10.0``,
    ``1e1`` and ``10`` are one value; ``-0.0`` is ``0``); other doubles stay
    doubles (written as Python's shortest ``repr``: ``1.5``, ``1e+21``).
    Integers are kept exactly as given.

    Raises :class:`JsonRefused` for NaN, infinities, lone surrogates, keys
    that are not strings, nesting deeper than :data:`MAX_DEPTH` and the
    markers :func:`decode` leaves for duplicate keys and over-long integers.
    """
    # Hot path: every pushed record goes through here once (``make bench``,
    # section b, ingestion); exact type checks, scalars first, one pass.
    kind = type(value)
    if kind is str:
        # isascii() is O(1); only non-ASCII text can hold a surrogate.
        if not value.isascii():
            _check_text(value)
        return value
    if kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if value.is_integer():
            return int(value) if -INTEGRAL_DOUBLE_LIMIT < value < INTEGRAL_DOUBLE_LIMIT else value
        if math.isfinite(value):
            return value
        raise JsonRefused(NOT_A_NUMBER)
    if depth >= MAX_DEPTH:
        raise JsonRefused(f"nested deeper than {MAX_DEPTH} levels")
    if kind is dict:
        normal = {}
        for key, item in value.items():
            if type(key) is not str:
                raise JsonRefused("object keys must be strings")
            if not key.isascii():
                _check_text(key)
            normal[key] = normalize(item, depth + 1)
        return normal
    if kind is list or kind is tuple:
        return [normalize(item, depth + 1) for item in value]
    if kind is _Refused:
        raise JsonRefused(value.problem)
    raise JsonRefused(f"a {kind.__name__} is not a JSON value")


class Unsure(Exception):
    """The fast path cannot judge this text: :func:`decode` and :func:`normalize` must."""


def _plain_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build an object; give up on a duplicate key (the exact path names it)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise Unsure
    return obj


def _normal_float(text: str) -> int | float:
    """Convert a number with a fraction or an exponent to its one form (see :func:`normalize`)."""
    value = float(text)
    if value.is_integer():
        return int(value) if -INTEGRAL_DOUBLE_LIMIT < value < INTEGRAL_DOUBLE_LIMIT else value
    if math.isfinite(value):
        return value
    raise Unsure


def _no_constant(_name: str) -> Any:
    """``NaN``, ``Infinity``, ``-Infinity``: the exact path refuses them."""
    raise Unsure


def decode_normal(text: str) -> Any:
    """Parse one JSON text with every number already in its one form, or raise :class:`Unsure`.

    The fast path of ``decode`` then ``normalize``: one pass of the C scanner.
    It raises :class:`Unsure` for anything the exact path refuses or must
    word (broken JSON, NaN, infinities, duplicate keys, over-long integers,
    nesting too deep), never a different answer. Two checks are left to the
    caller, on what it keeps: nesting deeper than :data:`MAX_DEPTH` that
    Python still parses, and lone surrogates, which only a ``\\u`` escape
    can bring into text decoded from UTF-8 (see :func:`may_hold_surrogates`).
    """
    try:
        return json.loads(
            text,
            object_pairs_hook=_plain_object,
            parse_float=_normal_float,
            parse_constant=_no_constant,
        )
    except (Unsure, ValueError, RecursionError):
        raise Unsure from None


def may_hold_surrogates(text: str) -> bool:
    """Whether JSON text decoded from UTF-8 can yield a lone surrogate.

    Only a ``\\uD800``-``\\uDFFF`` escape can bring one in.
    """
    return "\\ud" in text or "\\uD" in text


def _not_json(value: Any) -> Any:
    raise TypeError(f"a {type(value).__name__} is not a JSON value")


# The canonical text's encoder, built once: sorted keys, no spaces, UTF-8 as
# is, no NaN. ``c_make_encoder`` is CPython's C encoder, what ``json.dumps``
# uses underneath; the pure-Python one stands in where it is missing.
if c_make_encoder is not None:
    _c_canonical = c_make_encoder(
        None, _not_json, encode_basestring, None, ":", ",", True, False, False
    )

    def dumps_canonical(value: Any) -> str:
        """Return the canonical text of a value whose numbers are normalized."""
        return "".join(_c_canonical(value, 0))

else:  # pragma: no cover - CPython always has it
    dumps_canonical = json.JSONEncoder(
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode


def loads(text: str) -> Any:
    """Parse one JSON text strictly, numbers normalized; raise :class:`JsonRefused`."""
    return normalize(decode(text))
