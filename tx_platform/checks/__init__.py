"""Output checks: Pandera schemas compiled from a pipeline's rules, and the queries behind Dagster's asset checks.

The Dagster asset checks themselves are built per pipeline in :mod:`tx_platform.checks.asset_checks`.
"""

from tx_platform.checks._audit import Audit, AuditError, audit_pipeline, read_coordinates
from tx_platform.checks._reconcile import LossReport, loss_report, read_newest_rows
from tx_platform.checks._schemas import pandera_check, pipeline_schema

__all__ = [
    "Audit",
    "AuditError",
    "LossReport",
    "audit_pipeline",
    "loss_report",
    "pandera_check",
    "pipeline_schema",
    "read_coordinates",
    "read_newest_rows",
]
