"""Validation rules of the contract, as data: the sink turns them into Spark expressions.

Each rule has a stable error code (what the quarantine table and the DLQ headers carry).
"""

from __future__ import annotations

from functools import cache

import pycountry

#: Error codes of records the sink rejects, in the order they are checked.
ERROR_CODES = (
    "NULL_VALUE",
    "NOT_WIRE_FORMAT",
    "UNKNOWN_SCHEMA_ID",
    "UNDECODABLE_AVRO",
    "MISSING_FIELD",
    "INVALID_UUID",
    "INVALID_ENUM",
    "FIELD_TOO_LONG",
    "NON_POSITIVE_AMOUNT",
    "UNKNOWN_CURRENCY",
    "UNKNOWN_COUNTRY",
    "INVALID_MERCHANT_CATEGORY",
    "INVALID_COORDINATES",
    "EVENT_TIME_IN_FUTURE",
    "DUPLICATE_TRANSACTION_ID",
)

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
MCC_PATTERN = r"^[0-9]{4}$"
#: How far in the future an event time may be (clock skew between producers and the sink).
MAX_FUTURE_SECONDS = 300


@cache
def currency_codes() -> frozenset[str]:
    """ISO 4217 alphabetic codes."""
    return frozenset(c.alpha_3 for c in pycountry.currencies)


@cache
def country_codes() -> frozenset[str]:
    """ISO 3166-1 alpha-2 codes."""
    return frozenset(c.alpha_2 for c in pycountry.countries)
