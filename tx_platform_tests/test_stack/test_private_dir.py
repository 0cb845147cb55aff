"""A checkout in a directory only its owner can enter (``/root``, ``mktemp -d``).

As root the server runs as ``nobody``, which cannot reach such a directory; this test starts only
PostgreSQL (no Kafka, no jars) from a state dir inside a 0700 directory, uses it, purges it and
checks that nothing is left, inside or outside that directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from tx_platform.stack import LocalStack, StackLayout
from tx_platform.stack._postgres import OWNER_ROLE, WAREHOUSE_DB

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


@pytest.fixture
def private_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="txp-private-"))
    path.chmod(0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _stack(state_dir: Path, port: int) -> LocalStack:
    return LocalStack(state_dir, state_dir.parent / "jars", StackLayout(postgres_port=port))


def _start_and_query(stack: LocalStack) -> None:
    pg = stack.postgres
    pg.start(timeout=60)
    (row,) = [r for r in stack.status() if r.name == "postgres"]
    assert row.running, "status must find the running server"
    # the warehouse's owner creates tables (the pipeline role only writes rows)
    with psycopg2.connect(pg.dsn(OWNER_ROLE, WAREHOUSE_DB)) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS private_dir_probe (x int)")
        cur.execute("INSERT INTO private_dir_probe VALUES (1)")
        cur.execute("SELECT current_user, count(*) FROM private_dir_probe")
        assert cur.fetchone() == (OWNER_ROLE, 1)
    conn.close()


def test_postgres_runs_from_a_private_directory_and_purge_leaves_nothing(private_dir: Path) -> None:
    state_dir = private_dir / "checkout" / ".txp"
    port = _free_port()
    stack = _stack(state_dir, port)
    data_dir = stack.postgres.data_dir
    try:
        _start_and_query(stack)
        if os.geteuid() == 0:
            assert private_dir not in data_dir.parents, "nobody cannot reach a data dir in a 0700 directory"
        assert stack.postgres.process.pid_file.is_relative_to(state_dir)
        assert stack.postgres.log_file.is_relative_to(state_dir)

        # a state dir deleted without --purge (make clean, rm -rf .txp) must not block the next start
        assert stack.down() == ["postgres"]
        shutil.rmtree(state_dir)
        stack = _stack(state_dir, port)
        assert stack.postgres.data_dir == data_dir
        _start_and_query(stack)

        assert stack.down(purge=True) == ["postgres"]
    finally:
        stack.down(purge=True)
    assert _processes_mentioning(str(data_dir)) == []
    assert not state_dir.exists()
    assert not data_dir.exists()
    assert not stack.postgres.home.exists()
