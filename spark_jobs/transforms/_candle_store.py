"""The Postgres side of the candle query: one transaction per micro-batch, candles and ledger together.

A micro-batch's candles are upserted into the candle table and its row is written into the
``stream_batches`` ledger in the same transaction, so after a crash either both are there or
neither is. Spark replays a batch whose commit it did not record: the ledger tells it apart.

- The ledger holds the batch with the **same end offsets**: a replay, nothing is written.
- The ledger holds the batch with **other end offsets**: the batch was planned again after a crash
  (see :func:`spark_jobs.sink._query.drop_uncommitted_batches`) and covers more records. Its
  candles are complete (Spark's state store holds each minute whole), so they are upserted and the
  ledger row takes the new end offsets.
- Otherwise the batch is new: upsert, then insert its ledger row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg2 import sql
from psycopg2.extensions import connection as Connection
from psycopg2.extras import Json, execute_values

#: Columns of a candle row as the writer passes them (``vwap`` and ``updated_at`` are computed in SQL).
CANDLE_COLUMNS = (
    "symbol", "minute", "open", "high", "low", "close", "volume", "notional", "trade_count",
    "first_trade_time", "last_trade_time",
)  # fmt: skip

#: One candle: values in :data:`CANDLE_COLUMNS` order (decimals as Decimal, times as aware datetimes).
CandleRow = tuple[str, datetime, Decimal, Decimal, Decimal, Decimal, Decimal, Decimal, int, datetime, datetime]


@dataclass(frozen=True)
class BatchOutcome:
    """What committing one micro-batch did."""

    rows: int  # candle rows upserted (0 for a replay)
    replayed: bool  # the ledger already held this batch with these end offsets: nothing written
    replanned: bool = False  # the ledger held this batch id with other end offsets (re-planned after a crash)


def commit_candles(
    conn: Connection,
    *,
    table: str,
    ledger: str,
    query: str,
    source_topic: str,
    batch_id: int,
    end_offsets: dict[str, Any],
    candles: Sequence[CandleRow],
) -> BatchOutcome:
    """Upsert ``candles`` into ``table`` and record the batch in ``ledger``, in one transaction.

    The candle row of a ``(symbol, minute, source_topic)`` is replaced whole: each emitted row is
    the complete candle of its minute as of this batch. ``vwap`` is ``notional / volume``, in
    Postgres' numeric arithmetic.
    """
    with conn, conn.cursor() as cur:
        # lock this batch's ledger slot first: a concurrent writer of the same batch waits, then sees it
        cur.execute(
            sql.SQL("SELECT end_offsets FROM {} WHERE query = %s AND source_topic = %s AND batch_id = %s FOR UPDATE")
            .format(sql.Identifier(ledger)),
            (query, source_topic, batch_id),
        )  # fmt: skip
        found = cur.fetchone()
        if found is not None and found[0] == end_offsets:
            return BatchOutcome(rows=0, replayed=True)
        if candles:
            # execute_values expands the one VALUES placeholder; the topic is a composed literal
            columns = sql.SQL(", ").join(map(sql.Identifier, CANDLE_COLUMNS))
            execute_values(
                cur,
                sql.SQL(
                    """
                    INSERT INTO {table} ({columns}, vwap, updated_at, source_topic)
                    SELECT v.*, v.notional / v.volume, now(), {topic}
                    FROM (VALUES %s) AS v ({columns})
                    ON CONFLICT (symbol, minute, source_topic) DO UPDATE SET
                        open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
                        volume = EXCLUDED.volume, notional = EXCLUDED.notional, trade_count = EXCLUDED.trade_count,
                        vwap = EXCLUDED.vwap, first_trade_time = EXCLUDED.first_trade_time,
                        last_trade_time = EXCLUDED.last_trade_time, updated_at = EXCLUDED.updated_at
                    """
                )
                .format(table=sql.Identifier(table), columns=columns, topic=sql.Literal(source_topic))
                .as_string(cur),
                candles,
                template=_VALUES_TEMPLATE,
                page_size=1_000,
            )
        cur.execute(
            sql.SQL(
                """
                INSERT INTO {ledger} (query, source_topic, batch_id, end_offsets, rows)
                VALUES (%s, %s, %s, %s, %s)
                ON CONFLICT (query, source_topic, batch_id) DO UPDATE SET
                    end_offsets = EXCLUDED.end_offsets, rows = EXCLUDED.rows, committed_at = now()
                """
            ).format(ledger=sql.Identifier(ledger)),
            (query, source_topic, batch_id, Json(end_offsets), len(candles)),
        )
    return BatchOutcome(rows=len(candles), replayed=False, replanned=found is not None)


#: Casts keep VALUES typed as the table's columns (numeric, timestamptz) whatever Python passes.
_VALUES_TEMPLATE = (
    "(%s::text, %s::timestamptz, %s::numeric, %s::numeric, %s::numeric, %s::numeric, %s::numeric, %s::numeric, "
    "%s::bigint, %s::timestamptz, %s::timestamptz)"
)


def forget_ledger(conn: Connection, *, ledger: str, query: str, source_topic: str) -> int:
    """Delete the ledger rows of ``query`` on ``source_topic`` (its checkpoint is gone); returns how many."""
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("DELETE FROM {} WHERE query = %s AND source_topic = %s").format(sql.Identifier(ledger)),
            (query, source_topic),
        )
        return int(cur.rowcount)


def last_ledger_batch(conn: Connection, *, ledger: str, query: str, source_topic: str) -> int | None:
    """Highest batch id the ledger holds for ``query`` on ``source_topic``, None when it holds none."""
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT max(batch_id) FROM {} WHERE query = %s AND source_topic = %s").format(
                sql.Identifier(ledger)
            ),
            (query, source_topic),
        )
        row = cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])
