"""PostgreSQL for the local stack: the system's server binaries, run as an ordinary process.

No root and no system service: ``initdb`` makes a cluster under the state directory and
``postgres`` runs in the foreground as our child. When we are root (CI containers), the server
runs as ``nobody`` because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from psycopg2 import sql

from tx_platform.errors import StackError
from tx_platform.stack._process import ManagedProcess, port_in_use

#: Roles and databases of the local stack. Passwords are generated per state directory.
PIPELINE_ROLE = "txp_pipeline"
ANALYST_ROLE = "txp_analyst"
DAGSTER_ROLE = "txp_dagster"
REGISTRY_ROLE = "txp_registry"
WAREHOUSE_DB = "txp"
DAGSTER_DB = "dagster"
REGISTRY_DB = "registry"
SUPERUSER = "postgres"


def find_pg_bindir() -> Path:
    """Directory with ``initdb`` and ``postgres``: PATH first, then Debian's versioned dirs."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    msg = (
        "PostgreSQL server binaries (initdb, postgres) were not found — "
        "install them (Debian: `apt-get install postgresql`) or put them on PATH"
    )
    raise StackError(msg)


def _run_as() -> str | None:
    return "nobody" if os.geteuid() == 0 else None


def _chown_for(user: str | None, *paths: Path) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for path in paths:
        os.chown(path, entry.pw_uid, entry.pw_gid)


@dataclass(frozen=True)
class PostgresService:
    """One PostgreSQL server bound to 127.0.0.1."""

    root: Path
    port: int
    log_file: Path
    passwords: dict[str, str]

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess(
            name="postgres",
            pid_file=self.root / "postgres.pid",
            log_file=self.log_file,
            marker=str(self.data_dir),
            stop_signal=signal.SIGINT,  # "fast" shutdown: does not wait for clients to leave
        )

    def dsn(self, role: str, database: str) -> str:
        """libpq URL for a role of this server."""
        return f"postgresql://{role}:{self.passwords[role]}@127.0.0.1:{self.port}/{database}"

    def _initdb(self, bindir: Path, user: str | None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.root / "superuser.pw"
        pwfile.write_text(self.passwords[SUPERUSER] + "\n")
        pwfile.chmod(0o600)
        _chown_for(user, self.root, self.data_dir, pwfile)
        cmd = [
            str(bindir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
            f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, user=user, check=False)  # noqa: S603
        pwfile.unlink()
        if result.returncode != 0:
            msg = f"initdb failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
            raise StackError(msg)

    def start(self, timeout: float = 60.0) -> None:
        """Initialise on first use, start, wait until it accepts connections, create roles and dbs."""
        proc = self.process
        if proc.pid() is not None:
            self._bootstrap()  # idempotent: repairs a stack whose first start was interrupted
            return
        if port_in_use(self.port):
            msg = f"port {self.port} on 127.0.0.1 is already in use — stop what uses it or choose another port"
            raise StackError(msg)
        bindir = find_pg_bindir()
        user = _run_as()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bindir, user)
        argv = [
            str(bindir / "postgres"), "-D", str(self.data_dir),
            "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
            "-c", "unix_socket_directories=", "-c", "max_connections=200",
            "-c", "shared_buffers=256MB", "-c", "log_min_messages=warning",
        ]  # fmt: skip
        proc.start(argv, user=user, cwd=self.root)
        proc.wait_ready(self._accepts, timeout, f"accepting connections on 127.0.0.1:{self.port}")
        self._bootstrap()

    def _accepts(self) -> bool:
        try:
            psycopg2.connect(self.dsn(SUPERUSER, "postgres"), connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    def _bootstrap(self) -> None:
        """Roles: pipeline (owns the warehouse), analyst (read-only), dagster and registry (own databases)."""
        conn = psycopg2.connect(self.dsn(SUPERUSER, "postgres"))
        conn.autocommit = True
        with conn.cursor() as cur:
            for role in (PIPELINE_ROLE, ANALYST_ROLE, DAGSTER_ROLE, REGISTRY_ROLE):
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(
                    sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                        sql.SQL(verb), sql.Identifier(role), sql.Literal(self.passwords[role])
                    )
                )
            for database, owner in (
                (WAREHOUSE_DB, PIPELINE_ROLE),
                (DAGSTER_DB, DAGSTER_ROLE),
                (REGISTRY_DB, REGISTRY_ROLE),
            ):
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if not cur.fetchone():
                    cur.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(owner))
                    )
                cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)))
                cur.execute(
                    sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(sql.Identifier(database), sql.Identifier(owner))
                )
            cur.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(WAREHOUSE_DB), sql.Identifier(ANALYST_ROLE)
                )
            )
        conn.close()
        conn = psycopg2.connect(self.dsn(SUPERUSER, WAREHOUSE_DB))
        conn.autocommit = True
        with conn.cursor() as cur:
            # only the pipeline creates objects; the analyst reads what the pipeline creates
            cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            cur.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(PIPELINE_ROLE)))
            cur.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(ANALYST_ROLE)))
            cur.execute(
                sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT SELECT ON TABLES TO {}").format(
                    sql.Identifier(PIPELINE_ROLE), sql.Identifier(ANALYST_ROLE)
                )
            )
            cur.execute(
                sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(ANALYST_ROLE))
            )
        conn.close()
