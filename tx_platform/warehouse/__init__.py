"""The PostgreSQL warehouse: schema, connections, the sink's exactly-once commit, derived tables."""

from tx_platform.warehouse._db import (
    connect,
    describe_dsn,
    ensure_schema,
    read_daily_merchant_summary,
    read_recent_transactions,
    rebuild_daily_merchant_summary,
    transaction,
)
from tx_platform.warehouse._sink_writer import (
    QUARANTINE_COLUMNS,
    BatchResult,
    PartitionRange,
    commit_batch,
    committed_offsets,
    transaction_columns,
)

__all__ = [
    "QUARANTINE_COLUMNS",
    "BatchResult",
    "PartitionRange",
    "commit_batch",
    "committed_offsets",
    "connect",
    "describe_dsn",
    "ensure_schema",
    "read_daily_merchant_summary",
    "read_recent_transactions",
    "rebuild_daily_merchant_summary",
    "transaction",
    "transaction_columns",
]
