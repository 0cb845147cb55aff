"""Output checks: Pandera schemas and the reconciliation queries behind Dagster's asset checks."""

from tx_platform.checks._reconcile import LossReport, daily_reconciliation, loss_report
from tx_platform.checks._schemas import daily_merchant_summary_schema, pandera_check, pipeline_schema

__all__ = [
    "LossReport",
    "daily_merchant_summary_schema",
    "daily_reconciliation",
    "loss_report",
    "pandera_check",
    "pipeline_schema",
]
