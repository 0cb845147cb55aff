"""Records -> Confluent wire-format Avro, compiled once per registered schema.

confluent-kafka's ``AvroSerializer`` looks the schema up, runs fastavro's generic writer on a new
buffer and prefixes the id, for every record: the largest cost of producing. Here the 5-byte
header is built once from the id the registry returned, and a flat record schema (primitive and
logical fields, ``null`` unions, enums) is compiled into one Python function that writes the fields
in order; low-cardinality strings (entity ids, cities, codes) are encoded once and cached. Any
value the compiled function does not take as is goes through fastavro's writer with the same
parsed schema, which either encodes it (the bytes are the same either way: the test suite checks
both against fastavro) or raises fastavro's own error. Schemas with nested records, arrays or
maps use fastavro's writer for every record.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import fastavro

from tx_platform.contract import Record
from tx_platform.errors import ContractError

MAGIC_BYTE = 0
#: Distinct values cached per string field; beyond it (ids unique per record) values are encoded each time.
STRING_CACHE_LIMIT = 50_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DOUBLE = struct.Struct("<d").pack
_FLOAT = struct.Struct("<f").pack
_PRIMITIVE_KINDS = {"string", "bytes", "long", "int", "double", "float", "boolean"}


def _zigzag_varint(n: int) -> bytes:
    """Avro's int/long encoding: zigzag, then base-128 varint, least significant group first."""
    if not -(1 << 63) <= n < 1 << 63:
        msg = "out of Avro's long range"
        raise OverflowError(msg)
    n = (n << 1) ^ (n >> 63)
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes([n]) for n in range(0x80)]
#: Length prefixes of strings and bytes shorter than 64 (zigzag 2n < 0x80: one byte).
_LENGTH = [bytes([2 * n]) for n in range(64)]


def _decimal_bytes(value: Decimal, scale: int, precision: int) -> bytes:
    """The unscaled two's-complement big-endian bytes fastavro writes for a Decimal (its checks too)."""
    _sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int) or len(digits) > precision or exponent + scale < 0:
        msg = "decimal out of the schema's precision or scale"  # fastavro's writer gives its own error
        raise ValueError(msg)
    numerator, denominator = value.as_integer_ratio()
    unscaled = numerator * 10**scale // denominator
    body = unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)
    return _length(len(body)) + body


def _other(value: object) -> bytes:
    """A value of a type the compiled writer leaves to fastavro's writer."""
    msg = f"{type(value).__name__} left to the generic writer"
    raise TypeError(msg)


def _length(n: int) -> bytes:
    return _LENGTH[n] if n < 64 else _zigzag_varint(n)


def _millis(value: datetime) -> int:
    delta = value - _EPOCH  # TypeError for naive datetimes and non-datetimes: fastavro decides those
    return (delta.days * 86_400 + delta.seconds) * 1_000 + int(delta.microseconds / 1_000)


def _micros(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _kind(schema: Any) -> tuple[str, dict[str, Any]]:
    """``(kind, schema dict)`` of a field type the compiled writer handles, kind "" when it does not."""
    if isinstance(schema, str):
        return (schema, {"type": schema}) if schema in _PRIMITIVE_KINDS else ("", {})
    if not isinstance(schema, dict):
        return "", {}
    base, logical = schema.get("type"), schema.get("logicalType")
    if base == "enum":
        return "enum", schema
    if base == "bytes" and logical == "decimal":
        return "decimal", schema
    if base == "long" and logical in ("timestamp-millis", "timestamp-micros"):
        return logical, schema
    if base in _PRIMITIVE_KINDS and logical in (None, "uuid") and not (logical == "uuid" and base != "string"):
        return str(base), schema
    return "", {}


class _Compiler:
    """Writes the source of one function ``encode(r) -> bytes`` (the Avro body) for a flat record schema."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, object] = {
            "_zigzag_varint": _zigzag_varint,
            "_decimal_bytes": _decimal_bytes,
            "_length": _length,
            "_millis": _millis,
            "_micros": _micros,
            "_DOUBLE": _DOUBLE,
            "_FLOAT": _FLOAT,
            "_LENGTH": _LENGTH,
            "_LIMIT": STRING_CACHE_LIMIT,
            "_other": _other,
        }

    def value(self, kind: str, schema: dict[str, Any], var: str, out: str, indent: str, n: int) -> None:
        """Append lines setting ``out`` to the encoding of ``var``."""
        add = self.lines.append
        if kind == "string":
            if schema.get("logicalType") == "uuid":  # unique per record: caching would only fill memory
                add(f"{indent}e = {var}.encode()")
                add(f"{indent}{out} = _LENGTH[len(e)] + e if len(e) < 64 else _length(len(e)) + e")
                return
            cache = f"_cache{n}"
            self.names[cache] = {}
            add(f"{indent}{out} = {cache}.get({var})")
            add(f"{indent}if {out} is None:")
            add(f"{indent}    e = {var}.encode()")
            add(f"{indent}    {out} = _LENGTH[len(e)] + e if len(e) < 64 else _length(len(e)) + e")
            add(f"{indent}    if len({cache}) < _LIMIT:")
            add(f"{indent}        {cache}[{var}] = {out}")
        elif kind == "bytes":
            add(f"{indent}{out} = _length(len({var})) + bytes({var}) if type({var}) is bytes else _other({var})")
        elif kind in ("long", "int"):
            add(f"{indent}{out} = _zigzag_varint({var}) if type({var}) is int else _other({var})")
        elif kind == "double":
            add(f"{indent}{out} = _DOUBLE({var})")
        elif kind == "float":
            add(f"{indent}{out} = _FLOAT({var})")
        elif kind == "boolean":
            add(f"{indent}{out} = b'\\x01' if {var} is True else b'\\x00' if {var} is False else _other({var})")
        elif kind == "enum":
            table = f"_enum{n}"
            self.names[table] = {s: _zigzag_varint(i) for i, s in enumerate(schema["symbols"])}
            add(f"{indent}{out} = {table}[{var}]")
        elif kind == "decimal":
            scale, precision = int(schema.get("scale", 0)), int(schema["precision"])
            encoded = f"_decimal_bytes({var}, {scale}, {precision})"
            add(f"{indent}{out} = {encoded} if type({var}) is _Decimal else _other({var})")
            self.names["_Decimal"] = Decimal
        elif kind == "timestamp-millis":
            add(f"{indent}{out} = _zigzag_varint(_millis({var}))")
        elif kind == "timestamp-micros":
            add(f"{indent}{out} = _zigzag_varint(_micros({var}))")
        else:  # pragma: no cover - _kind only returns the kinds above
            raise AssertionError(kind)


def _compile(schema: dict[str, Any]) -> Callable[[Record], bytes] | None:
    """The compiled body writer of a flat record schema, or None when it has other field types."""
    if schema.get("type") != "record":
        return None
    compiler = _Compiler()
    parts: list[str] = []
    for n, fld in enumerate(schema["fields"]):
        var, out = f"v{n}", f"p{n}"
        compiler.lines.append(f"    {var} = r[{fld['name']!r}]")
        ftype = fld["type"]
        if isinstance(ftype, list):
            branches = [_kind(b) for b in ftype]
            nulls = [i for i, b in enumerate(ftype) if b == "null"]
            others = [i for i, b in enumerate(ftype) if b != "null"]
            if len(ftype) != 2 or len(nulls) != 1 or not branches[others[0]][0]:
                return None
            kind, sub = branches[others[0]]
            compiler.lines.append(f"    if {var} is None:")
            compiler.lines.append(f"        {out} = {_zigzag_varint(nulls[0])!r}")
            compiler.lines.append("    else:")
            compiler.value(kind, sub, var, out, "        ", n)
            compiler.lines.append(f"        {out} = {_zigzag_varint(others[0])!r} + {out}")
        else:
            kind, sub = _kind(ftype)
            if not kind:
                return None
            compiler.value(kind, sub, var, out, "    ", n)
        parts.append(out)
    source = "def encode(r):\n" + "\n".join(compiler.lines) + f"\n    return b''.join(({', '.join(parts)},))\n"
    namespace: dict[str, Any] = dict(compiler.names)
    exec(compile(source, f"<avro writer {schema.get('name')}>", "exec"), namespace)  # noqa: S102 - our own source
    encode: Callable[[Record], bytes] = namespace["encode"]
    return encode


class WireEncoder:
    """Record -> Confluent wire-format bytes (magic byte, schema id, Avro body) for one registered schema.

    A drop-in for :class:`tx_platform.contract.AvroRecordSerializer` once the schema is registered:
    ``schema_id`` is the id the registry returned for ``schema_str`` under the subject.
    """

    def __init__(self, schema_str: str, schema_id: int) -> None:
        self.schema_id = schema_id
        self._header = struct.pack(">bI", MAGIC_BYTE, schema_id)
        try:
            self._parsed = fastavro.parse_schema(json.loads(schema_str))
        except (ValueError, fastavro.schema.SchemaParseException) as exc:
            msg = f"not a valid Avro schema: {exc}"
            raise ContractError(msg) from exc
        self._compiled = _compile(json.loads(schema_str))

    @property
    def compiled(self) -> bool:
        """True when records go through the compiled writer (False: fastavro's writer for every record)."""
        return self._compiled is not None

    def generic(self, record: Record) -> bytes:
        """The bytes through fastavro's writer alone (what the compiled writer must equal)."""
        buffer = io.BytesIO()
        buffer.write(self._header)
        try:
            fastavro.schemaless_writer(buffer, self._parsed, record)
        except (ValueError, TypeError, AttributeError, KeyError, OverflowError, struct.error) as exc:
            msg = f"the record does not match the schema: {exc}"
            raise ContractError(msg) from exc
        return buffer.getvalue()

    def __call__(self, record: Record) -> bytes:
        """Serialise one record."""
        if self._compiled is not None:
            try:
                return self._header + self._compiled(record)
            except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError, struct.error):
                pass  # a value the compiled writer does not take as is: fastavro encodes it or says why not
        return self.generic(record)
