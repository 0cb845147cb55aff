"""Versioned migrations: plain SQL files applied in order, once, and recorded in ``schema_migrations``.

Shared tables: ``tx_platform/warehouse/migrations/``; a pipeline's own: the spec's ``migrations``
folder (``tx_platform/pipelines/<pipeline>/migrations/``). Files are named ``NNNN_<name>.sql``;
each is applied in its own transaction, under an advisory lock that serialises concurrent runs,
and recorded with its SHA-256: a recorded file whose text changed afterwards is refused
(``[MIGRATION_CHANGED]``), because the warehouse no longer says what the file says.

A pipeline's table is generated from its spec (columns from the contract, CHECKs from the rules, see
``_ddl.py``): its baseline migration holds the directive ``-- @pipeline_table``, rendered at apply time
by :func:`table_ddl`; the checksum covers the file as written. The rules are written once, in the
spec, and not copied into files: every :func:`migrate` brings the table's CHECKs to the spec's rules
with :func:`sync_constraints`, and the ``late`` flag (directive ``-- @late_column``) to the spec's
``allowed_lateness`` with :func:`sync_late_flag`. A column change to the contract needs a migration
file (``ALTER TABLE``).

Run time runs no DDL: the sink and the Spark jobs call :func:`verify_migrated`, which only reads.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from tx_platform.errors import TxPlatformError
from tx_platform.pipelines import PipelineSpec
from tx_platform.warehouse._ddl import late_column_ddl, sync_constraints, sync_late_flag, table_ddl

#: Scope of the shared tables' migrations (a pipeline's scope is its name).
SHARED_SCOPE = "warehouse"
#: The line of a pipeline's migration replaced by the pipeline's generated table.
PIPELINE_TABLE_DIRECTIVE = "-- @pipeline_table"
#: The line replaced by the ``late`` flag's column, with the spec's allowed lateness.
LATE_COLUMN_DIRECTIVE = "-- @late_column"

_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_LOCK = "tx_platform.migrate"
_RECORD = "INSERT INTO schema_migrations (scope, version, name, checksum) VALUES (%s, %s, %s, %s)"

SCHEMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    scope      text        NOT NULL,
    version    integer     NOT NULL,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, version)
);
-- the record is the owner's alone: default privileges may have given another role (the pipeline) its rows
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT DISTINCT a.grantee::regrole::text AS grantee
             FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = 'schema_migrations'::regclass AND a.grantee NOT IN (0, c.relowner)
               AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE') LOOP
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON schema_migrations FROM %s', r.grantee);
    END LOOP;
END
$$;
"""


class MigrationError(TxPlatformError, RuntimeError):
    """The warehouse's schema and the migration files disagree."""


class MigrationChangedError(MigrationError):
    """A migration already applied has been edited since: its recorded checksum differs."""


class SchemaNotMigratedError(MigrationError):
    """Known migrations are not applied: run ``txp db migrate`` (the run-time code runs no DDL)."""


@dataclass(frozen=True)
class Migration:
    """One migration file: ``scope`` (``warehouse`` or a pipeline's name), version, name and SQL."""

    scope: str
    version: int
    name: str
    sql: str
    #: The pipeline a pipeline-scoped migration belongs to (renders ``-- @pipeline_table``).
    spec: PipelineSpec | None = None

    @property
    def checksum(self) -> str:
        """SHA-256 of the file as written (the rendered pipeline table is not part of it)."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()

    @property
    def label(self) -> str:
        """``scope/NNNN_name``, for messages."""
        return f"{self.scope}/{self.version:04d}_{self.name}"

    def rendered(self) -> str:
        """The SQL to execute: the file, with the pipeline's generated table in place of the directive."""
        if self.spec is None:
            return self.sql
        text = self.sql.replace(PIPELINE_TABLE_DIRECTIVE, table_ddl(self.spec))
        return text.replace(LATE_COLUMN_DIRECTIVE, late_column_ddl(self.spec))


@dataclass(frozen=True)
class AppliedMigration:
    """A row of ``schema_migrations``."""

    scope: str
    version: int
    name: str
    checksum: str
    applied_at: datetime


def _read_folder(folder: Traversable | Path, scope: str, spec: PipelineSpec | None) -> list[Migration]:
    found: dict[int, Migration] = {}
    if not folder.is_dir():
        return []
    for entry in folder.iterdir():
        match = _FILE.fullmatch(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            names = f"{found[version].name}, {match.group(2)}"
            msg = f"[MIGRATION_CONFLICT] {scope}: two migrations numbered {version:04d} ({names})"
            raise MigrationError(msg)
        found[version] = Migration(scope, version, match.group(2), entry.read_text("utf-8"), spec)
    return [found[v] for v in sorted(found)]


def shared_migrations() -> list[Migration]:
    """The shared tables' migrations, in version order."""
    return _read_folder(resources.files("tx_platform.warehouse").joinpath("migrations"), SHARED_SCOPE, None)


def pipeline_migrations(spec: PipelineSpec) -> list[Migration]:
    """The migrations of ``spec``'s own tables, in version order (none when it declares no folder)."""
    if spec.migrations is None:
        return []
    return _read_folder(spec.migrations, spec.name, spec)


def known_migrations(specs: Iterable[PipelineSpec] = ()) -> list[Migration]:
    """Every migration :func:`migrate` applies for ``specs``, in the order it applies them."""
    result = shared_migrations()
    seen: set[str] = set()
    for spec in specs:
        if spec.name not in seen:  # one pipeline on several topics (tests) shares its tables
            seen.add(spec.name)
            result += pipeline_migrations(spec)
    return result


def _default_specs() -> list[PipelineSpec]:
    from tx_platform.pipelines import PIPELINES

    return list(PIPELINES.values())


def _recorded(cur: Any) -> dict[tuple[str, int], AppliedMigration]:  # noqa: ANN401 - a cursor
    cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not cur.fetchone()[0]:
        return {}
    cur.execute("SELECT scope, version, name, checksum, applied_at FROM schema_migrations")
    return {(row[0], row[1]): AppliedMigration(*row) for row in cur.fetchall()}


def _check_unchanged(migration: Migration, recorded: AppliedMigration) -> None:
    if recorded.checksum != migration.checksum:
        msg = (
            f"[MIGRATION_CHANGED] {migration.label} was applied on {recorded.applied_at:%Y-%m-%d %H:%M} UTC with "
            f"checksum {recorded.checksum[:12]}, the file now has {migration.checksum[:12]}: an applied migration is "
            "never edited; restore the file and write the change as a new migration"
        )
        raise MigrationChangedError(msg)


#: What runs after a pipeline's migrations, by the table owner, on every migrate (e.g. partitions ahead).
Maintenance = Callable[[Any, PipelineSpec], None]


def migrate(
    dsn: str,
    specs: Iterable[PipelineSpec] | None = None,
    *,
    dry_run: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[Migration]:
    """Apply the pending migrations, shared first, then each pipeline's, in version order; return them.

    Run as the role that owns the warehouse. ``specs`` default to every shipped pipeline. Each file runs
    in its own transaction and is recorded in ``schema_migrations`` with its checksum; the whole run holds
    an advisory lock, so two runs at once apply each file once. A recorded file whose checksum changed
    stops the run with ``[MIGRATION_CHANGED]`` before anything is applied. Idempotent: a second run
    applies nothing. After the migrations, each pipeline's table gets the CHECKs of its spec's rules
    (:func:`sync_constraints`) and its time partitions ahead (:func:`ensure_partitions`). With
    ``dry_run``, returns what is pending and changes nothing.
    """
    from tx_platform.warehouse._db import connect
    from tx_platform.warehouse._partitions import maintain_partitions

    chosen = _default_specs() if specs is None else list(specs)
    wanted = known_migrations(chosen)
    conn = connect(dsn)
    applied: list[Migration] = []
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(hashtext(%s))", (_LOCK,))
            try:
                recorded = _recorded(cur)
                for migration in wanted:
                    if (migration.scope, migration.version) in recorded:
                        _check_unchanged(migration, recorded[(migration.scope, migration.version)])
                pending = [m for m in wanted if (m.scope, m.version) not in recorded]
                if dry_run:
                    return pending
                if pending and not recorded:
                    cur.execute(SCHEMA_MIGRATIONS_DDL)
                for migration in pending:
                    with conn.cursor() as step:
                        step.execute("BEGIN")
                        try:
                            step.execute(migration.rendered())
                            step.execute(
                                _RECORD,
                                (migration.scope, migration.version, migration.name, migration.checksum),
                            )
                        except Exception:
                            step.execute("ROLLBACK")
                            raise
                        step.execute("COMMIT")
                    applied.append(migration)
                    if log is not None:
                        log(f"applied {migration.label}")
                seen: set[str] = set()
                for spec in chosen:
                    if spec.name in seen or spec.migrations is None:
                        continue
                    seen.add(spec.name)
                    cur.execute("BEGIN")
                    try:
                        added, dropped = sync_constraints(cur, spec)
                        if sync_late_flag(cur, spec) and log is not None:
                            log(f"{spec.table}: late flag rebuilt for allowed lateness {spec.allowed_lateness}")
                        maintain_partitions(cur, spec)
                    except Exception:
                        cur.execute("ROLLBACK")
                        raise
                    cur.execute("COMMIT")
                    if (added or dropped) and log is not None:
                        log(f"{spec.table}: CHECKs added {added}, dropped {dropped}")
            finally:
                cur.execute("SELECT pg_advisory_unlock(hashtext(%s))", (_LOCK,))
    finally:
        conn.close()
    return applied


def migration_status(
    dsn: str, specs: Iterable[PipelineSpec] | None = None
) -> tuple[list[AppliedMigration], list[Migration]]:
    """(applied, pending): what ``schema_migrations`` records, and the known migrations it lacks."""
    from tx_platform.warehouse._db import connect

    wanted = known_migrations(_default_specs() if specs is None else specs)
    conn = connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            recorded = _recorded(cur)
    finally:
        conn.close()
    for migration in wanted:
        if (migration.scope, migration.version) in recorded:
            _check_unchanged(migration, recorded[(migration.scope, migration.version)])
    applied = sorted(recorded.values(), key=lambda a: (a.scope != SHARED_SCOPE, a.scope, a.version))
    return applied, [m for m in wanted if (m.scope, m.version) not in recorded]


def verify_migrated(dsn: str, specs: Iterable[PipelineSpec] = ()) -> None:
    """Raise ``[SCHEMA_NOT_MIGRATED]`` unless every known migration of ``specs`` is applied, unchanged.

    What the sink and the Spark jobs call at start instead of creating tables: reads only, so the
    pipeline role (which may not create anything) can run it.
    """
    from tx_platform.warehouse._db import connect

    conn = connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            recorded = _recorded(cur)
    finally:
        conn.close()
    wanted = known_migrations(specs)
    missing = [m.label for m in wanted if (m.scope, m.version) not in recorded]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        msg = f"[SCHEMA_NOT_MIGRATED] run txp db migrate: the warehouse lacks {shown}"
        raise SchemaNotMigratedError(msg)
    for migration in wanted:
        _check_unchanged(migration, recorded[(migration.scope, migration.version)])
