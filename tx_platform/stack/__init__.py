"""The local stack launcher (`txp stack up|down|status|env`) and JVM artifact resolution."""

from tx_platform.stack._artifacts import Artifacts, pyspark_version, require_java, resolve_artifacts
from tx_platform.stack._launcher import DAGSTER_YAML, LocalStack, ServiceStatus, StackLayout
from tx_platform.stack._process import ManagedProcess, free_port_block, port_in_use, tail

__all__ = [
    "DAGSTER_YAML",
    "Artifacts",
    "LocalStack",
    "ManagedProcess",
    "ServiceStatus",
    "StackLayout",
    "free_port_block",
    "port_in_use",
    "pyspark_version",
    "require_java",
    "resolve_artifacts",
    "tail",
]
