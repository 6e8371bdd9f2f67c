"""The filter language of a search: a small JSON condition on the images' fields.

A leaf is ``{"field": NAME, OP: VALUE}`` with exactly one OP of `OPERATORS`; ``{"and": [...]}``,
``{"or": [...]}`` and ``{"not": {...}}`` combine conditions. `parse` checks a condition against
the fields an index has (`Field`: a name and a kind) and raises `FilterError` naming the place
(``filter.and[1].gt``) and what is wrong; `Condition.mask` evaluates it on the index's record
columns (a `pyarrow.Table`, one row per image) into a boolean row mask, without a Python
object per row. That mask is what the search hands to FAISS as a selector (`index.search`).

Kinds and values: ``string`` takes JSON strings; ``int`` and ``float`` numbers (not booleans);
``bool`` true/false; ``timestamp`` ISO 8601 text ("2023-06-01", "2023-06-01T12:00:00+02:00"),
compared as instants (a time without an offset is UTC). ``gt``/``gte``/``lt``/``lte`` compare
numbers, timestamps and strings; ``prefix`` is for strings; ``in`` takes a non-empty list;
``exists`` true/false tests whether a row has a value. A row without a value (a photo with no
EXIF date, a list row with an empty cell) matches no comparison, only ``exists: false``, and
``not`` of a comparison.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Kind = Literal["string", "int", "float", "bool", "timestamp"]
KINDS: tuple[Kind, ...] = ("string", "int", "float", "bool", "timestamp")
OPERATORS = ("eq", "ne", "in", "gt", "gte", "lt", "lte", "prefix", "exists")
COMBINATORS = ("and", "or", "not")
MAX_DEPTH = 8  # nesting of and / or / not
MAX_LEAVES = 64  # comparisons in one condition
MAX_IN_VALUES = 1000  # values of one `in`
_ORDERED: tuple[Kind, ...] = ("int", "float", "timestamp", "string")
_COMPARE = ("gt", "gte", "lt", "lte")
_WANTED = {"string": "a string", "int": "an integer", "float": "a number",
           "bool": "true or false", "timestamp": "an ISO 8601 date or time"}  # fmt: skip


class FilterError(ValueError):
    """A condition that cannot be evaluated; the message names the place in it."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where


@dataclass(frozen=True)
class Field:
    """A field a condition may name: a record column of the index and its kind."""

    name: str
    kind: Kind
    column: str  # the column of the records table


class Condition:
    """A parsed condition; `mask` evaluates it on the records table. `key` is the condition
    as canonical JSON (set by `parse`): equal keys select the same rows of one table."""

    key: str = ""

    def mask(self, table: pa.Table) -> np.ndarray:
        """bool [rows]: which rows satisfy the condition."""
        return np.asarray(self._eval(table).to_numpy(zero_copy_only=False), dtype=bool)

    def _eval(self, table: pa.Table) -> pa.Array:
        raise NotImplementedError


@dataclass(frozen=True)
class _Leaf(Condition):
    field: Field
    op: str
    value: Any

    def _eval(self, table: pa.Table) -> pa.Array:
        col = table.column(self.field.column)
        if self.op == "exists":
            valid = pc.is_valid(col)
            return valid if self.value else pc.invert(valid)
        if self.op == "in":
            values = pa.array(self.value, type=col.type)
            out = pc.is_in(col, value_set=values)
        elif self.op == "prefix":
            out = pc.starts_with(col, pattern=self.value)
        else:
            scalar = pa.scalar(self.value, type=col.type)
            compare = {"eq": pc.equal, "ne": pc.not_equal, "gt": pc.greater,
                       "gte": pc.greater_equal, "lt": pc.less, "lte": pc.less_equal}  # fmt: skip
            out = compare[self.op](col, scalar)
        return pc.fill_null(out, False)  # no value: no match


@dataclass(frozen=True)
class _All(Condition):
    parts: tuple[Condition, ...]
    any: bool  # "or" when True, "and" when False

    def _eval(self, table: pa.Table) -> pa.Array:
        combine = pc.or_ if self.any else pc.and_
        out = self.parts[0]._eval(table)
        for part in self.parts[1:]:
            out = combine(out, part._eval(table))
        return out


@dataclass(frozen=True)
class _Not(Condition):
    part: Condition

    def _eval(self, table: pa.Table) -> pa.Array:
        return pc.invert(self.part._eval(table))


def parse(condition: Any, fields: Mapping[str, Field], where: str = "filter") -> Condition:
    """`condition` checked against `fields`, ready to evaluate; FilterError if it is not
    a condition of this language (unknown field or operator, a value of the wrong type, a
    malformed date, too deep or too long)."""
    leaves = [0]
    parsed = _parse(condition, fields, where, 1, leaves)
    object.__setattr__(parsed, "key", json.dumps(condition, sort_keys=True, separators=(",", ":")))
    return parsed


def _parse(
    node: Any, fields: Mapping[str, Field], where: str, depth: int, leaves: list[int]
) -> Condition:
    if not isinstance(node, dict) or not node:
        raise FilterError(where, "expected an object: {\"field\": ..., OP: ...}, {\"and\": [...]}, "
                          "{\"or\": [...]} or {\"not\": {...}}")  # fmt: skip
    if depth > MAX_DEPTH:
        raise FilterError(where, f"nested deeper than {MAX_DEPTH} levels")
    combinators = [k for k in node if k in COMBINATORS]
    if combinators:
        key = combinators[0]
        if len(node) != 1:
            others = sorted(k for k in node if k != key)
            raise FilterError(where, f"{key!r} stands alone in its object; also given: {others}")
        inner = f"{where}.{key}"
        if key == "not":
            return _Not(_parse(node[key], fields, inner, depth + 1, leaves))
        parts = node[key]
        if not isinstance(parts, list) or not parts:
            raise FilterError(inner, "expected a non-empty list of conditions")
        return _All(
            tuple(
                _parse(p, fields, f"{inner}[{i}]", depth + 1, leaves) for i, p in enumerate(parts)
            ),
            any=key == "or",
        )
    return _leaf(node, fields, where, leaves)


def _leaf(
    node: dict[str, Any], fields: Mapping[str, Field], where: str, leaves: list[int]
) -> _Leaf:
    leaves[0] += 1
    if leaves[0] > MAX_LEAVES:
        raise FilterError(where, f"more than {MAX_LEAVES} comparisons in one filter")
    if "field" not in node:
        raise FilterError(where, f"expected \"field\" and one operator of {list(OPERATORS)}, "
                          f"or one of {list(COMBINATORS)}; got keys {sorted(node)}")  # fmt: skip
    name = node["field"]
    if not isinstance(name, str):
        raise FilterError(f"{where}.field", f"expected a field name, got {name!r}")
    if name not in fields:
        raise FilterError(
            f"{where}.field", f"unknown field {name!r}; the index has {sorted(fields)}"
        )
    ops = [k for k in node if k != "field"]
    unknown = [k for k in ops if k not in OPERATORS]
    if unknown:
        problem = f"unknown operator {unknown[0]!r}; expected one of {list(OPERATORS)}"
        raise FilterError(f"{where}.{unknown[0]}", problem)
    if len(ops) != 1:
        raise FilterError(where, f"expected exactly one operator, got {ops or 'none'}")
    field, op = fields[name], ops[0]
    place = f"{where}.{op}"
    return _Leaf(field, op, _value(field, op, node[op], place))


def _value(field: Field, op: str, value: Any, place: str) -> Any:
    """The operand of `op` on `field`, converted to the column's type, or a FilterError."""
    if op == "exists":
        if not isinstance(value, bool):
            raise FilterError(place, f"expected true or false, got {value!r}")
        return value
    if op == "prefix":
        if field.kind != "string":
            raise FilterError(place, f"prefix is for text fields; {field.name!r} is {field.kind}")
        if not isinstance(value, str):
            raise FilterError(place, f"expected a string, got {value!r}")
        return value
    if op == "in":
        if not isinstance(value, list) or not value:
            raise FilterError(place, "expected a non-empty list of values")
        if len(value) > MAX_IN_VALUES:
            raise FilterError(place, f"more than {MAX_IN_VALUES} values")
        return [_scalar(field, v, f"{place}[{i}]") for i, v in enumerate(value)]
    if op in ("gt", "gte", "lt", "lte") and field.kind not in _ORDERED:
        raise FilterError(place, f"{op} does not apply to {field.kind} field {field.name!r}")
    return _scalar(field, value, place)


def _scalar(field: Field, value: Any, place: str) -> Any:
    kind = field.kind
    ok = {
        "string": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "timestamp": isinstance(value, str),
    }[kind]
    if not ok:
        wanted = _WANTED[kind]
        raise FilterError(
            place, f"field {field.name!r} is {kind}: expected {wanted}, got {value!r}"
        )
    if kind == "float":
        return float(value)
    if kind == "timestamp":
        return parse_instant(value, place)
    return value


def parse_instant(text: str, place: str = "value") -> dt.datetime:
    """An ISO 8601 date or time as an aware UTC datetime (no offset: UTC)."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise FilterError(place, f"{text!r} is not an ISO 8601 date or time "
                          "(e.g. 2023-06-01 or 2023-06-01T12:00:00+02:00)") from None  # fmt: skip
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def kind_of(type_: pa.DataType) -> Kind | None:
    """The filter kind of an Arrow column type; None for a column no filter can name."""
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "string"
    if pa.types.is_boolean(type_):
        return "bool"
    if pa.types.is_integer(type_):
        return "int"
    if pa.types.is_floating(type_):
        return "float"
    if pa.types.is_timestamp(type_):
        return "timestamp"
    return None


def json_schema(ref: str) -> dict[str, Any]:
    """The language as a JSON Schema whose nested conditions point at `ref` (where the
    schema itself is kept, e.g. "#/components/schemas/Filter" in an OpenAPI document). What
    a schema cannot say (which fields an index has, the kinds, the bounds on depth and
    length) is in its description; `parse` enforces it."""
    value = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}
    operand: dict[str, dict[str, Any]] = {
        **{op: value for op in ("eq", "ne")},
        **{op: {"anyOf": [{"type": "string"}, {"type": "number"}]} for op in _COMPARE},
        "in": {"type": "array", "minItems": 1, "maxItems": MAX_IN_VALUES, "items": value},
        "prefix": {"type": "string"},
        "exists": {"type": "boolean"},
    }
    leaves = [
        {
            "type": "object",
            "title": f"{op} comparison",
            "properties": {"field": {"type": "string", "minLength": 1}, op: operand[op]},
            "required": ["field", op],
            "additionalProperties": False,
        }
        for op in OPERATORS
    ]
    nested = [
        {
            "type": "object",
            "title": key,
            "properties": {
                key: {"$ref": ref}
                if key == "not"
                else {"type": "array", "minItems": 1, "items": {"$ref": ref}}
            },
            "required": [key],
            "additionalProperties": False,
        }
        for key in COMBINATORS
    ]
    return {
        "title": "Filter",
        "description": 'A leaf {"field": NAME, OP: VALUE} with one OP of '
        f"{', '.join(OPERATORS)}; and / or (lists) and not combine them. NAME is a built-in "
        "field (folder, taken_at, taken_at_source, camera_make, camera_model, lat, lon, "
        "width, height, image_id) or a column of the list the index was built from; the "
        "value's type must be the field's (taken_at: ISO 8601, compared as instants). At "
        f"most {MAX_DEPTH} levels and {MAX_LEAVES} comparisons. A field the index lacks, a "
        "value of the wrong type or a malformed date is answered 400 naming the place.",
        "oneOf": [*leaves, *nested],
    }
