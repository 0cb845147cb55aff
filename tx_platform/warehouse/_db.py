"""Connections to the warehouse: bounded retries with jitter, then a domain error."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg2
from psycopg2.extensions import connection as Connection

from tx_platform.errors import ServiceUnavailableError
from tx_platform.pipelines import PipelineSpec


def describe_dsn(dsn: str) -> str:
    """``host:port/db`` of a DSN, without credentials, for messages."""
    parts = urlsplit(dsn)
    return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


def connect(dsn: str, attempts: int = 6, base_delay: float = 0.25) -> Connection:
    """Connect with bounded exponential backoff and jitter; raise ServiceUnavailableError after."""
    attempt = 0
    while True:
        try:
            return psycopg2.connect(dsn, connect_timeout=5, application_name="tx_platform")
        except psycopg2.OperationalError as exc:
            if "authentication failed" in str(exc) or "does not exist" in str(exc):
                msg = (
                    f"PostgreSQL on {describe_dsn(dsn)} refused the login ({str(exc).strip()}) — "
                    "check TXP_POSTGRES_DSN, or run `txp stack env` for the local stack's settings"
                )
                raise ServiceUnavailableError(msg) from exc
            if attempt == attempts - 1:
                msg = (
                    f"PostgreSQL did not answer on {describe_dsn(dsn)} after {attempts} attempts ({exc}".strip()
                    + ") — is the stack up? run `make up`"
                )
                raise ServiceUnavailableError(msg) from exc
            time.sleep(base_delay * 2**attempt * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
            attempt += 1


@contextmanager
def transaction(dsn: str) -> Iterator[Connection]:
    """A connection in one transaction: committed on success, rolled back on error, then closed."""
    conn = connect(dsn)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def ensure_schema(dsn: str, specs: Iterable[PipelineSpec] = ()) -> None:
    """Apply the pending migrations of the shared tables and of ``specs`` (:func:`migrate`), if any.

    Kept for callers from before versioned migrations. A warehouse already migrated runs nothing here
    (not even the CHECKs' and partitions' upkeep, which is ``migrate``'s), so the pipeline role, which
    may create nothing, can call it; with migrations pending, it needs the owner's DSN.
    """
    from tx_platform.warehouse._migrate import migrate, migration_status

    chosen = list(specs)
    if migration_status(dsn, chosen)[1]:
        migrate(dsn, chosen)
