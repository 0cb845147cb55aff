"""The PostgreSQL warehouse: schema, connections, the sink's exactly-once commit and its ledger."""

from tx_platform.warehouse._db import (
    connect,
    describe_dsn,
    ensure_schema,
    transaction,
)
from tx_platform.warehouse._ddl import (
    MAX_CHECK_VALUES,
    SOURCE_COLUMNS,
    rule_constraints,
    sql_check,
    sync_constraints,
    table_columns,
    table_ddl,
)
from tx_platform.warehouse._ledger import (
    Gap,
    LedgerEntry,
    PartitionRange,
    SinkLease,
    acquire_lease,
    check_batch,
    check_lease,
    forget_topic,
    plan_start,
    prepare_ledger,
    read_ledger,
)
from tx_platform.warehouse._sink_writer import (
    QUARANTINE_COLUMNS,
    BatchResult,
    commit_batch,
    committed_offsets,
    copy_isolating,
    staged_columns,
)

__all__ = [
    "MAX_CHECK_VALUES",
    "QUARANTINE_COLUMNS",
    "SOURCE_COLUMNS",
    "BatchResult",
    "Gap",
    "LedgerEntry",
    "PartitionRange",
    "SinkLease",
    "acquire_lease",
    "check_batch",
    "check_lease",
    "commit_batch",
    "committed_offsets",
    "connect",
    "copy_isolating",
    "describe_dsn",
    "ensure_schema",
    "forget_topic",
    "plan_start",
    "prepare_ledger",
    "read_ledger",
    "transaction",
    "rule_constraints",
    "sql_check",
    "staged_columns",
    "table_columns",
    "sync_constraints",
    "table_ddl",
]
