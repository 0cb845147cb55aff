"""Spark code of tx_platform: the streaming sink, runnable from Dagster or with spark-submit."""
