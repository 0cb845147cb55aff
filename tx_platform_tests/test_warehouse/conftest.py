"""Fixtures of the warehouse tests: a scratch schema per test, so migrations start from nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql
from psycopg2.extensions import make_dsn

from tx_platform.config import Settings


@pytest.fixture
def scratch_dsn(settings: Settings, unique: str) -> Iterator[str]:
    """A DSN whose tables go to an empty schema of this test's own (``search_path``; dropped after)."""
    schema = f"scratch_{unique}"
    conn = psycopg2.connect(settings.dsn())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield make_dsn(settings.dsn(), options=f"-c search_path={schema}")
    finally:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        conn.close()


def rows(dsn: str, query: str, args: Any = None) -> list[tuple[Any, ...]]:  # noqa: ANN401 - query parameters
    """Every row ``query`` returns on a connection of its own."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(query, args)
            return list(cur.fetchall())
    finally:
        conn.close()
