"""Daily partitions of a pipeline's table (``PARTITION BY RANGE`` on its event time), kept ahead of the data.

Partitions are created by the table's owner, never by the sink at commit time (the pipeline role runs
no DDL): :func:`migrate` (so ``txp stack up`` and ``txp db migrate``) creates one per UTC day from
:data:`DAYS_BEHIND` days ago to :data:`DAYS_AHEAD` days ahead, and one for every day that has rows in the
DEFAULT partition. The DEFAULT partition is the safety net: a record whose day has no partition (very
late, far ahead, or a warehouse not migrated for a week) is stored there, never refused. Creating the
partition of a day moves that day's rows out of DEFAULT in the same transaction (PostgreSQL refuses to
create a partition whose rows sit in DEFAULT): rows copied aside, deleted from DEFAULT, the partition
created, the rows inserted through the parent, so they land in it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from psycopg2 import sql

from tx_platform.pipelines import PipelineSpec
from tx_platform.warehouse._ddl import SOURCE_COLUMNS, key_registry

#: Partitions created behind today (late data) and ahead of it, by every migrate.
DAYS_BEHIND = 2
DAYS_AHEAD = 7


def partition_name(table: str, day: date) -> str:
    """``transactions_p20261125``: the partition of ``table`` holding ``day`` (UTC)."""
    return f"{table}_p{day:%Y%m%d}"


def default_partition(table: str) -> str:
    """The DEFAULT partition of ``table``: rows whose day has no partition."""
    return f"{table}_default"


def is_partitioned(cur: Any, table: str) -> bool:  # noqa: ANN401 - a cursor
    """Whether ``table`` (in the search path) is a partitioned table."""
    cur.execute("SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(%s))", (table,))
    return bool(cur.fetchone()[0])


def _insertable_columns(cur: Any, table: str) -> list[str]:  # noqa: ANN401
    """The columns of ``table`` a row can be inserted with (generated ones are computed again)."""
    cur.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
        "AND attgenerated = '' ORDER BY attnum",
        (table,),
    )
    return [name for (name,) in cur.fetchall()]


def _existing(cur: Any, table: str) -> set[str]:  # noqa: ANN401
    cur.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
        (table,),
    )
    return {name for (name,) in cur.fetchall()}


def _create_day(cur: Any, spec: PipelineSpec, day: date) -> int:  # noqa: ANN401
    """Create ``day``'s partition, moving its rows out of DEFAULT; returns how many rows moved."""
    table, column = spec.table, spec.time_column
    low = datetime.combine(day, time(), UTC)
    high = low + timedelta(days=1)
    default = default_partition(table)
    ident = sql.Identifier
    # nothing may reach DEFAULT for this day between the move and the partition's creation
    cur.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(ident(default)))
    cur.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE {} >= %s AND {} < %s").format(
            ident(default), ident(column), ident(column)
        ),
        (low, high),
    )
    moving = int(cur.fetchone()[0])
    columns = sql.SQL(", ").join(map(ident, _insertable_columns(cur, table)))
    if moving:
        cur.execute(
            sql.SQL(
                "CREATE TEMP TABLE txp_moving ON COMMIT DROP AS SELECT {} FROM {} WHERE {} >= %s AND {} < %s"
            ).format(columns, ident(default), ident(column), ident(column)),
            (low, high),
        )
        cur.execute(
            sql.SQL("DELETE FROM {} WHERE {} >= %s AND {} < %s").format(ident(default), ident(column), ident(column)),
            (low, high),
        )
    cur.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM (%s) TO (%s)").format(
            ident(partition_name(table, day)), ident(table)
        ),
        (low, high),
    )
    if moving:
        cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM txp_moving").format(ident(table), columns, columns))
        # deleting the rows from DEFAULT released their keys (the registry's trigger): the same records claim them again
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (key_registry(spec),))
        if cur.fetchone()[0]:
            claim = sql.SQL(", ").join(map(ident, (spec.natural_key, column, *SOURCE_COLUMNS)))
            cur.execute(
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM txp_moving ON CONFLICT DO NOTHING").format(
                    ident(key_registry(spec)), claim, claim
                )
            )
        cur.execute("DROP TABLE txp_moving")
    return moving


def ensure_partitions(cur: Any, spec: PipelineSpec, days: Iterable[date]) -> dict[str, int]:  # noqa: ANN401
    """Create the missing daily partitions of ``spec``'s table for ``days``; returns {partition: rows moved}.

    Run by the table's owner, inside the caller's transaction. Rows of those days found in the DEFAULT
    partition are moved into their new partition. Nothing happens when the table is not partitioned.
    """
    if not is_partitioned(cur, spec.table):
        return {}
    existing = _existing(cur, spec.table)
    created: dict[str, int] = {}
    for day in sorted(set(days)):
        name = partition_name(spec.table, day)
        if name not in existing:
            created[name] = _create_day(cur, spec, day)
    return created


def days_in_default(cur: Any, spec: PipelineSpec) -> list[date]:  # noqa: ANN401
    """The UTC days that have rows in the DEFAULT partition (a partition for each is due)."""
    cur.execute(
        sql.SQL("SELECT DISTINCT ({} AT TIME ZONE 'UTC')::date FROM {} ORDER BY 1").format(
            sql.Identifier(spec.time_column), sql.Identifier(default_partition(spec.table))
        )
    )
    return [day for (day,) in cur.fetchall()]


def maintain_partitions(cur: Any, spec: PipelineSpec, today: date | None = None) -> dict[str, int]:  # noqa: ANN401
    """Partitions from ``DAYS_BEHIND`` days ago to ``DAYS_AHEAD`` days ahead, and for every day in DEFAULT."""
    if not is_partitioned(cur, spec.table):
        return {}
    today = today or datetime.now(UTC).date()
    days = [today + timedelta(days=n) for n in range(-DAYS_BEHIND, DAYS_AHEAD + 1)]
    return ensure_partitions(cur, spec, [*days, *days_in_default(cur, spec)])
