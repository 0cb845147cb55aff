"""The data contract: the Avro schema file and what derives from it."""

from tx_platform.contract._avro import (
    COMPATIBILITY,
    AvroRecordSerializer,
    Registration,
    SchemaIncompatibleError,
    register_contract,
    registry_client,
    split_wire_format,
)
from tx_platform.contract._rules import (
    EARLIEST_EVENT_TIME,
    ERROR_CODES,
    MAX_FUTURE_SECONDS,
    MCC_PATTERN,
    MCC_REGEX,
    UUID_PATTERN,
    UUID_REGEX,
    country_codes,
    currency_codes,
    java_full_match,
    python_full_match,
)
from tx_platform.contract._schema import SUBJECT, Contract, Field, load_contract, parse_contract, subject_for
from tx_platform.contract._serde import Record, Serializer

__all__ = [
    "COMPATIBILITY",
    "AvroRecordSerializer",
    "Registration",
    "SchemaIncompatibleError",
    "register_contract",
    "registry_client",
    "split_wire_format",
    "subject_for",
    "EARLIEST_EVENT_TIME",
    "ERROR_CODES",
    "MAX_FUTURE_SECONDS",
    "MCC_PATTERN",
    "MCC_REGEX",
    "UUID_PATTERN",
    "UUID_REGEX",
    "country_codes",
    "currency_codes",
    "java_full_match",
    "python_full_match",
    "SUBJECT",
    "Contract",
    "Field",
    "Record",
    "Serializer",
    "load_contract",
    "parse_contract",
]
