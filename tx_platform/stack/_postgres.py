"""PostgreSQL for the local stack: the system's server binaries, run as an ordinary process.

No root and no system service: ``initdb`` makes a cluster under the state directory and
``postgres`` runs in the foreground as our child. When we are root (CI containers), the server
runs as ``nobody`` because PostgreSQL refuses to run as root, and its data directory lives in a
per-state-dir directory under ``/var/lib/txp`` instead: ``nobody`` cannot reach a checkout in a
private directory such as ``/root`` or one made by ``mktemp -d``. The pid file and the log stay
under the state directory; ``txp stack down --purge`` deletes both places.
"""

from __future__ import annotations

import glob
import hashlib
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
#: Owns the warehouse's schema and tables: ``txp db migrate`` (and ``txp stack up``) run as it.
OWNER_ROLE = "txp_owner"
#: Writes the pipelines' rows (SELECT, INSERT, UPDATE, DELETE, TRUNCATE); creates nothing in the schema.
PIPELINE_ROLE = "txp_pipeline"
ANALYST_ROLE = "txp_analyst"
DAGSTER_ROLE = "txp_dagster"
REGISTRY_ROLE = "txp_registry"
#: Read-only statistics for postgres_exporter (member of pg_monitor, owns nothing).
MONITOR_ROLE = "txp_monitor"
WAREHOUSE_DB = "txp"
DAGSTER_DB = "dagster"
REGISTRY_DB = "registry"
SUPERUSER = "postgres"

#: Parent of the clusters made as root. Root-owned and not world-writable, so no other user can
#: plant a directory or a link at a name we are about to use.
ROOT_HOMES_DIR = Path("/var/lib/txp")
#: In the state directory: the path of the cluster's home when it is outside the state directory.
_HOME_RECORD = "home"
#: In such a home: the state directory's postgres dir it belongs to (for humans and for sweeping).
_OWNER_FILE = "owner"


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


def _server_running(data_dir: Path) -> int | None:
    """Pid of a postmaster serving ``data_dir``, from its own postmaster.pid (None if none runs)."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if str(data_dir) in cmdline else None


def _remove_home(home: Path) -> None:
    if home.parent != ROOT_HOMES_DIR:
        msg = f"refusing to delete {home}: a PostgreSQL home of the stack must be directly under {ROOT_HOMES_DIR}"
        raise StackError(msg)
    pid = _server_running(home / "data")
    if pid is not None:
        msg = (
            f"PostgreSQL (pid {pid}) still runs on {home / 'data'}, so it cannot be deleted — "
            f"stop it with `txp stack down` (or `kill -INT {pid}`) and retry"
        )
        raise StackError(msg)
    shutil.rmtree(home)


def sweep_orphaned_homes() -> list[Path]:
    """Delete homes under ROOT_HOMES_DIR whose state directory no longer records them.

    They are left when a state directory is deleted without ``--purge`` (``rm -rf .txp``, a
    removed checkout); their passwords went with it, so nobody can use them again.
    """
    removed: list[Path] = []
    for home in sorted(ROOT_HOMES_DIR.glob("postgres-*")):
        try:
            owner = Path((home / _OWNER_FILE).read_text().strip())
        except OSError:
            continue  # being created right now by another launcher (it writes the owner file last)
        try:
            recorded = Path((owner / _HOME_RECORD).read_text().strip())
        except (FileNotFoundError, NotADirectoryError):
            recorded = None
        except OSError:
            continue  # cannot tell, so keep it
        if recorded != home and _server_running(home / "data") is None:
            _remove_home(home)
            removed.append(home)
    return removed


@dataclass(frozen=True)
class PostgresService:
    """One PostgreSQL server bound to 127.0.0.1."""

    root: Path
    port: int
    log_file: Path
    passwords: dict[str, str]

    @property
    def _record(self) -> Path:
        return self.root / _HOME_RECORD

    @property
    def home(self) -> Path:
        """Directory of the cluster's files (data dir, server cwd): ``root``, or outside it as root."""
        try:
            return Path(self._record.read_text().strip())
        except FileNotFoundError:
            pass
        # a cluster that an earlier version made as root under a traversable state dir stays there
        if os.geteuid() != 0 or (self.root / "data" / "PG_VERSION").exists():
            return self.root
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16]
        return ROOT_HOMES_DIR / f"postgres-{digest}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

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

    def _prepare_home(self, user: str | None) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        home = self.home
        if home == self.root:
            return home
        if not self._record.exists():
            sweep_orphaned_homes()
            if home.exists():
                _remove_home(home)  # left by an earlier state dir at this path, with other passwords
            # recorded before it exists, so status, down and purge find it whatever happens next
            self._record.write_text(f"{home}\n")
        ROOT_HOMES_DIR.mkdir(parents=True, exist_ok=True)
        ROOT_HOMES_DIR.chmod(0o755)
        home.mkdir(mode=0o700, exist_ok=True)
        _chown_for(user, home)
        (home / _OWNER_FILE).write_text(f"{self.root.resolve()}\n")
        return home

    def _initdb(self, bindir: Path, home: Path, user: str | None) -> None:
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        pwfile = home / "superuser.pw"
        pwfile.write_text(self.passwords[SUPERUSER] + "\n")
        pwfile.chmod(0o600)
        _chown_for(user, home, self.data_dir, pwfile)
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
        home = self._prepare_home(user)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bindir, home, user)
        argv = [
            str(bindir / "postgres"), "-D", str(self.data_dir),
            "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
            "-c", "unix_socket_directories=", "-c", "max_connections=200",
            "-c", "shared_buffers=256MB", "-c", "log_min_messages=warning",
        ]  # fmt: skip
        proc.start(argv, user=user, cwd=home)
        proc.wait_ready(self._accepts, timeout, f"accepting connections on 127.0.0.1:{self.port}")
        self._bootstrap()

    def purge(self) -> None:
        """Delete the cluster's files outside the state directory (the caller deletes the state dir)."""
        home = self.home
        if home == self.root:
            return
        if home.exists():
            _remove_home(home)
        self._record.unlink(missing_ok=True)
        try:
            ROOT_HOMES_DIR.rmdir()  # ours to remove once no stack uses it
        except OSError:
            pass

    def _accepts(self) -> bool:
        try:
            psycopg2.connect(self.dsn(SUPERUSER, "postgres"), connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    def _bootstrap(self) -> None:
        """Roles: owner (owns the warehouse's schema; migrations run as it), pipeline (writes rows, no DDL),
        analyst (read-only), dagster and registry (own databases).

        The monitor role reads server statistics for postgres_exporter through pg_monitor. Idempotent, and
        it upgrades a warehouse whose tables the pipeline role owned (before the owner role existed).
        """
        conn = psycopg2.connect(self.dsn(SUPERUSER, "postgres"))
        conn.autocommit = True
        with conn.cursor() as cur:
            for role in (OWNER_ROLE, PIPELINE_ROLE, ANALYST_ROLE, DAGSTER_ROLE, REGISTRY_ROLE, MONITOR_ROLE):
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(
                    sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                        sql.SQL(verb), sql.Identifier(role), sql.Literal(self.passwords[role])
                    )
                )
            cur.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(MONITOR_ROLE)))
            for database, owner in (
                (WAREHOUSE_DB, OWNER_ROLE),
                (DAGSTER_DB, DAGSTER_ROLE),
                (REGISTRY_DB, REGISTRY_ROLE),
            ):
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if not cur.fetchone():
                    cur.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(owner))
                    )
                cur.execute(
                    sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(owner))
                )
                cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)))
                cur.execute(
                    sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(sql.Identifier(database), sql.Identifier(owner))
                )
            # the pipeline: its sessions' temporary staging tables; CREATE on the database lets it make a schema
            # of its own (the tests' scratch schemas), never objects in the warehouse's schema
            cur.execute(
                sql.SQL("GRANT CONNECT, TEMPORARY, CREATE ON DATABASE {} TO {}").format(
                    sql.Identifier(WAREHOUSE_DB), sql.Identifier(PIPELINE_ROLE)
                )
            )
            cur.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(WAREHOUSE_DB), sql.Identifier(ANALYST_ROLE)
                )
            )
        conn.close()
        conn = psycopg2.connect(self.dsn(SUPERUSER, WAREHOUSE_DB))
        conn.autocommit = True
        owner, pipeline, analyst = (sql.Identifier(r) for r in (OWNER_ROLE, PIPELINE_ROLE, ANALYST_ROLE))
        with conn.cursor() as cur:
            # only the owner creates objects in the schema; the pipeline writes rows, the analyst reads
            cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            cur.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(owner))
            cur.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(pipeline))
            # a warehouse from before the owner role: its tables and views move to the owner
            cur.execute(
                "SELECT c.relkind, c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace "
                "AND c.relowner = %s::regrole AND c.relkind IN ('r', 'p', 'v', 'm') ORDER BY c.oid",
                (PIPELINE_ROLE,),
            )
            for kind, name in cur.fetchall():
                what = sql.SQL("VIEW" if kind == "v" else "MATERIALIZED VIEW" if kind == "m" else "TABLE")
                cur.execute(sql.SQL("ALTER {} {} OWNER TO {}").format(what, sql.Identifier(name), owner))
            cur.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}, {}").format(pipeline, analyst))
            for grant in (
                "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON {what} TO {pipeline}",
                "GRANT USAGE, SELECT, UPDATE ON {seqs} TO {pipeline}",
                "GRANT SELECT ON {what} TO {analyst}",
            ):
                for scope, prefix in (
                    ("ALL {} IN SCHEMA public", ""),
                    ("{}", "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "),
                ):
                    statement = prefix + grant.replace("{what}", scope.format("TABLES")).replace(
                        "{seqs}", scope.format("SEQUENCES")
                    )
                    cur.execute(sql.SQL(statement).format(owner=owner, pipeline=pipeline, analyst=analyst))
            # the migrations' record is the owner's alone (the grants above gave the pipeline rows of it)
            cur.execute("SELECT to_regclass('public.schema_migrations') IS NOT NULL")
            if cur.fetchone()[0]:
                cur.execute(
                    sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON schema_migrations FROM {}").format(pipeline)
                )
        conn.close()
