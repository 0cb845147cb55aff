"""The streaming sink from Kafka to PostgreSQL."""

from spark_jobs.sink._decode import contract_struct, decode, render
from spark_jobs.sink._query import QUERY_NAME, SinkConfig, SinkStats, TransactionSink, await_query

__all__ = [
    "QUERY_NAME",
    "SinkConfig",
    "SinkStats",
    "TransactionSink",
    "await_query",
    "contract_struct",
    "decode",
    "render",
]
