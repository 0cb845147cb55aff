"""A pipeline's data contract, loaded from its ``.avsc`` file; everything else derives from it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from tx_platform.errors import ContractError


def subject_for(topic: str) -> str:
    """Registry subject of a topic's record values (Confluent's TopicNameStrategy)."""
    return f"{topic}-value"


@dataclass(frozen=True)
class Field:
    """One field of the contract with its types in every system that holds it."""

    name: str
    avro_type: Any
    nullable: bool
    spark_type: str
    postgres_type: str
    enum_symbols: tuple[str, ...] = ()


def _unwrap_union(avro_type: Any) -> tuple[Any, bool]:
    if isinstance(avro_type, list):
        branches = [t for t in avro_type if t != "null"]
        if len(branches) != 1:
            msg = f"only [null, T] unions are supported, got {avro_type}"
            raise ContractError(msg)
        return branches[0], True
    return avro_type, False


def _map_type(avro_type: Any) -> tuple[str, str, tuple[str, ...]]:
    """Return (Spark DDL type, Postgres type, enum symbols) for one Avro type."""
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        base = avro_type["type"]
        if logical == "decimal":
            precision, scale = avro_type["precision"], avro_type.get("scale", 0)
            return f"DECIMAL({precision},{scale})", f"numeric({precision},{scale})", ()
        if logical == "uuid":
            return "STRING", "uuid", ()
        if logical in {"timestamp-millis", "timestamp-micros"}:
            return "TIMESTAMP", "timestamptz", ()
        if base == "enum":
            return "STRING", "text", tuple(avro_type["symbols"])
        return _map_type(base)
    primitives = {
        "string": ("STRING", "text"),
        "double": ("DOUBLE", "double precision"),
        "float": ("FLOAT", "real"),
        "long": ("BIGINT", "bigint"),
        "int": ("INT", "integer"),
        "boolean": ("BOOLEAN", "boolean"),
        "bytes": ("BINARY", "bytea"),
    }
    if avro_type not in primitives:
        msg = f"Avro type {avro_type!r} has no mapping in the contract"
        raise ContractError(msg)
    spark, pg = primitives[avro_type]
    return spark, pg, ()


@dataclass(frozen=True)
class Contract:
    """A parsed Avro record schema: the fields with their types in Spark and Postgres."""

    schema: dict[str, Any]
    fields: tuple[Field, ...]

    @property
    def schema_str(self) -> str:
        """The schema as canonical-ish JSON text (what the registry stores)."""
        return json.dumps(self.schema, separators=(",", ":"))

    @property
    def field_names(self) -> tuple[str, ...]:
        """Field names in schema order."""
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> Field:
        """One field by name."""
        for f in self.fields:
            if f.name == name:
                return f
        msg = f"no field {name!r} in the contract"
        raise ContractError(msg)

    def spark_ddl(self) -> str:
        """Spark DDL struct string, e.g. ``transaction_id STRING, amount DECIMAL(18,2), ...``."""
        return ", ".join(f"`{f.name}` {f.spark_type}" for f in self.fields)


def parse_contract(schema: dict[str, Any]) -> Contract:
    """Build a :class:`Contract` from a parsed Avro record schema."""
    if schema.get("type") != "record" or not isinstance(schema.get("fields"), list):
        msg = "the contract must be an Avro record schema with fields"
        raise ContractError(msg)
    fields = []
    for raw in schema["fields"]:
        avro_type, nullable = _unwrap_union(raw["type"])
        spark, pg, symbols = _map_type(avro_type)
        fields.append(Field(raw["name"], raw["type"], nullable, spark, pg, symbols))
    return Contract(schema=schema, fields=tuple(fields))


#: Parsed contracts by path: every pipeline object that asks for its contract shares one.
_LOADED: dict[str, Contract] = {}


def load_contract(path: Traversable | Path | str) -> Contract:
    """Load and parse an ``.avsc`` file (cached per path)."""
    key = str(path)
    if key not in _LOADED:
        source = Path(path) if isinstance(path, str) else path
        try:
            text = source.read_text("utf-8")
        except OSError as exc:
            msg = f"cannot read the contract {path}: {exc}"
            raise ContractError(msg) from exc
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as exc:
            msg = f"{path} is not valid JSON: {exc}"
            raise ContractError(msg) from exc
        _LOADED[key] = parse_contract(schema)
    return _LOADED[key]
