"""Check failures as the Dagster UI shows them best: a markdown table of sample failing rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from dagster import MetadataValue
from pandera.errors import SchemaErrors

#: Failing rows a check's metadata shows (the count says how many there are in all).
SAMPLE_ROWS = 10


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    # a pipe would end the cell, a newline the row
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, object]], limit: int = SAMPLE_ROWS) -> MetadataValue:
    """The first ``limit`` of ``rows`` (dicts sharing their keys) as a markdown table, with how many were left out."""
    if not rows:
        return MetadataValue.md("_no failing rows_")
    columns = list(rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"\n_{len(rows) - limit} more failing row(s) not shown_")
    return MetadataValue.md("\n".join(lines))


def pandera_failures(frame: pd.DataFrame, exc: SchemaErrors, limit: int = SAMPLE_ROWS) -> dict[str, MetadataValue]:
    """Metadata of a failed Pandera validation: counts, and the failing rows (with what each failed) as markdown.

    Row-level failures show the row itself; failures of a whole column or of the frame (a missing
    column, a wrong dtype) have no row and are listed as they are.
    """
    cases = exc.failure_cases
    failed: dict[object, list[str]] = {}
    table_level: list[dict[str, object]] = []
    for case in cases.itertuples(index=False):
        index = getattr(case, "index", None)
        what = f"{case.column}: {case.check}" if case.column is not None else str(case.check)
        if index is None or pd.isna(index) or index not in frame.index:
            table_level.append({"failed": what, "failure_case": case.failure_case})
        else:
            failed.setdefault(index, []).append(what)
    rows = [{"failed": "; ".join(checks), **frame.loc[index].to_dict()} for index, checks in failed.items()]
    return {
        "rows_checked": MetadataValue.int(len(frame)),
        "failure_cases": MetadataValue.int(len(cases)),
        "failing_rows": MetadataValue.int(len(rows)),
        "sample_failing_rows": markdown_table(rows + table_level, limit),
    }
