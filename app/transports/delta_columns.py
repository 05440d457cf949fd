"""A Delta table's declared columns: their Arrow types and how a record's fields become them.

A connector of the ``delta`` transport may declare its columns
(``{"id": "long", "at": "timestamp"}``, in Delta's primitive type names). Each
record (a JSON object) then lands field by field in those columns, converted
strictly, so that what the table holds is what the view said:

- ``string``: a JSON string as it is; an object or an array as its canonical
  JSON text (sorted keys, no spaces). A number or ``true``/``false`` is refused:
  declare the column's type instead.
- ``long``, ``integer``, ``short``, ``byte``: a JSON integer within the type's
  range (64, 32, 16, 8 bits). A number with a fraction point (``1.0``) is refused.
- ``double``, ``float``: any JSON number (``float`` rounds to single precision;
  beyond its range is refused).
- ``boolean``: ``true`` or ``false``.
- ``timestamp``: ISO-8601 text (``2024-05-01T12:30:00Z``, ``...+02:00``; text
  without an offset is taken as UTC) or a number of seconds since the Unix
  epoch; stored in UTC, to the microsecond.
- ``date``: ISO-8601 text ``YYYY-MM-DD``.
- ``decimal(p,s)``: a JSON number or numeric text, with at most ``s`` digits
  after the point and ``p - s`` before it (never rounded).
- ``binary``: base64 text.

``null`` or a missing field is a null in any column. A field that is not a
declared column, a record that is not an object, and a value its column
cannot take raise :class:`Refused`: the batch is refused as a whole, since
sending it again cannot succeed.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json

from app.transports.delta_spec import DECIMAL, MAX_DECIMAL_PRECISION, TYPES

_INTEGERS = {"long": 64, "integer": 32, "short": 16, "byte": 8}
_ARROW = {
    "string": pa.string(),
    "long": pa.int64(),
    "integer": pa.int32(),
    "short": pa.int16(),
    "byte": pa.int8(),
    "double": pa.float64(),
    "float": pa.float32(),
    "boolean": pa.bool_(),
    # Delta's "timestamp" is an instant (UTC), to the microsecond.
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
    "binary": pa.binary(),
}
_FLOAT32_MAX = 3.4028234663852886e38
# Types Arrow's JSON reader takes exactly as :func:`converter` does (a JSON integer in
# range, any JSON number, true/false, a JSON string), and refuses whatever it refuses.
# The others (float's range, timestamps, dates, decimals, binary, an object or array
# kept as text) are converted in Python.
_READER_TYPES = frozenset({"string", "long", "integer", "short", "byte", "double", "boolean"})


class Refused(ValueError):
    """A record the declared columns cannot hold (the message says which field and why)."""


def parse_decimal(type_name: str) -> tuple[int, int] | None:
    """``(precision, scale)`` of a ``decimal(p,s)`` type name, None if it is not a valid one."""
    match = DECIMAL.match(type_name)
    if match is None:
        return None
    precision, scale = int(match.group(1)), int(match.group(2))
    if not 1 <= precision <= MAX_DECIMAL_PRECISION or scale > precision:
        return None
    return precision, scale


def is_type(type_name: Any) -> bool:
    """Whether ``type_name`` is a column type a connector may declare."""
    return isinstance(type_name, str) and (
        type_name in TYPES or parse_decimal(type_name) is not None
    )


def arrow_type(type_name: str) -> pa.DataType:
    """The Arrow type of a declared column type (a valid one)."""
    decimal = parse_decimal(type_name)
    if decimal is not None:
        return pa.decimal128(*decimal)
    return _ARROW[type_name]


def arrow_schema(columns: Mapping[str, str], before: Sequence[pa.Field] = ()) -> pa.Schema:
    """The table's schema: the fields ``before`` (not null), then the declared columns."""
    return pa.schema([*before, *(pa.field(n, arrow_type(t)) for n, t in columns.items())])


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _integer(bits: int) -> Callable[[Any], Any]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def convert(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("an integer is needed")
        if not low <= value <= high:
            raise ValueError(f"out of range ({low} to {high})")
        return value

    return convert


def _double(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError("a number is needed")
    return float(value)


def _float(value: Any) -> float:
    number = _double(value)
    if math.isfinite(number) and abs(number) > _FLOAT32_MAX:
        raise ValueError("out of the range of a float")
    return number


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false is needed")
    return value


def _string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    raise ValueError("text (or an object or array, kept as JSON text) is needed")


def _timestamp(value: Any) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError("out of range as seconds since the epoch") from None
    if not isinstance(value, str):
        raise ValueError("ISO-8601 text or seconds since the epoch is needed")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("not an ISO-8601 date and time") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _date(value: Any) -> date:
    if not isinstance(value, str):
        raise ValueError("ISO-8601 text (YYYY-MM-DD) is needed")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError("not an ISO-8601 date (YYYY-MM-DD)") from None


def _binary(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("base64 text is needed")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64 text") from None


def _decimal(precision: int, scale: int) -> Callable[[Any], Any]:
    step = Decimal(1).scaleb(-scale)

    def convert(value: Any) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError("a number or numeric text is needed")
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            raise ValueError("not a number") from None
        if not number.is_finite():
            raise ValueError("not a finite number")
        with localcontext() as context:
            context.prec = 2 * MAX_DECIMAL_PRECISION + 2
            try:
                exact = number.quantize(step)
            except InvalidOperation:
                raise ValueError(
                    f"more than {precision - scale} digit(s) before the point"
                ) from None
        if exact != number:
            raise ValueError(f"more than {scale} digit(s) after the point")
        if exact != 0 and exact.adjusted() + 1 > precision - scale:
            raise ValueError(f"more than {precision - scale} digit(s) before the point")
        return exact

    return convert


def converter(type_name: str) -> Callable[[Any], Any]:
    """The function that turns a JSON value into a value of the column's type (or raises)."""
    decimal = parse_decimal(type_name)
    if decimal is not None:
        return _decimal(*decimal)
    if type_name in _INTEGERS:
        return _integer(_INTEGERS[type_name])
    return {
        "string": _string,
        "double": _double,
        "float": _float,
        "boolean": _boolean,
        "timestamp": _timestamp,
        "date": _date,
        "binary": _binary,
    }[type_name]


class Columns:
    """A connector's declared columns: records in, typed Arrow columns out."""

    def __init__(self, columns: Mapping[str, str], key: Sequence[str] = ()) -> None:
        self.types = dict(columns)
        self.names = list(columns)
        self.key = list(key)
        self.schema = arrow_schema(columns)
        self._convert = {name: converter(t) for name, t in columns.items()}
        self._read = all(t in _READER_TYPES for t in columns.values())
        self._read_options = pa_json.ParseOptions(
            explicit_schema=self.schema, unexpected_field_behavior="error"
        )

    def parse(self, text: str) -> dict[str, Any]:
        """A record's fields, converted (missing ones null); raises :class:`Refused`."""
        record = json.loads(text)
        if not isinstance(record, dict):
            raise Refused(f"a record is not a JSON object: {_shown(record)}")
        row: dict[str, Any] = {}
        for field, value in record.items():
            convert = self._convert.get(field)
            if convert is None:
                raise Refused(
                    f"a record's field '{field[:60]}' is not one of its columns "
                    f"({', '.join(self.names)[:200]})"
                )
            if value is None:
                if field in self.key:
                    raise Refused(f"a record's key column '{field}' is null")
                continue
            try:
                row[field] = convert(value)
            except ValueError as exc:
                raise Refused(
                    f"the value {_shown(value)} of field '{field}' cannot be a "
                    f"{self.types[field]}: {exc}"
                ) from None
        for field in self.key:
            if field not in row:
                raise Refused(f"a record lacks its key column '{field}'")
        return row

    def key_of(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """A parsed record's key values."""
        return tuple(row[name] for name in self.key)

    def arrays(self, rows: Sequence[Mapping[str, Any]]) -> list[pa.Array]:
        """Parsed records as one Arrow array per declared column."""
        return [
            pa.array([row.get(name) for row in rows], self.schema.field(name).type)
            for name in self.names
        ]

    def table(self, texts: Sequence[str]) -> pa.Table:
        """Records (canonical JSON texts) as a table of the declared columns (raises
        :class:`Refused`).

        When every column's type is one Arrow's JSON reader converts as
        :func:`converter` does, the batch is read by it in one pass (a reset's
        staging: ``python -m bench.delta_merge`` measures it, and
        ``tests/test_delta_rows.py`` checks both ways agree); a batch it refuses,
        or one with a null key, is converted record by record, which takes it or
        says which field is wrong.
        """
        if self._read and texts:
            table = self._read_json(texts)
            if table is not None:
                return table
        return pa.Table.from_arrays(
            self.arrays([self.parse(text) for text in texts]), schema=self.schema
        )

    def _read_json(self, texts: Sequence[str]) -> pa.Table | None:
        """The records read by Arrow's JSON reader, or None when it cannot take them all."""
        try:
            data = "\n".join(texts).encode()
            # One block: no record straddles two (a block is at most 2 GiB; a bigger
            # batch is refused by the options, and converted record by record).
            options = pa_json.ReadOptions(use_threads=False, block_size=max(1 << 16, len(data) + 1))
            table = pa_json.read_json(
                pa.py_buffer(data), read_options=options, parse_options=self._read_options
            )
        except (pa.ArrowException, OverflowError, ValueError):
            return None
        # One row per text (a text of several lines is not one record), no null key.
        if table.num_rows != len(texts) or any(table.column(k).null_count for k in self.key):
            return None
        return table.select(self.names).cast(self.schema)
