"""Child processes of the local stack: start detached, track by pid file, stop without leftovers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tx_platform.errors import StackError


def tail(path: Path, lines: int = 25) -> str:
    """Last lines of a log file, for error messages."""
    try:
        content = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log yet)"
    return "\n".join(content[-lines:])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port_block(size: int, first: int = 27_000, step: int = 97, last: int = 32_700) -> int:
    """The first port of ``size`` consecutive ports on 127.0.0.1 that can all be bound now, trying
    blocks from ``first`` every ``step`` ports up to ``last`` (for private stacks beside others).

    The default range stays below Linux's ephemeral ports (32768-60999): a port that is free now
    in that range can be taken a moment later by any outgoing connection's local end, which is
    how a fixed test port there once failed with a BindException."""
    for base in range(first, last, step):
        if all(_bindable(port) for port in range(base, base + size)):
            return base
    msg = f"no block of {size} free ports between {first} and {last}"
    raise RuntimeError(msg)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


@dataclass(frozen=True)
class ManagedProcess:
    """One long-running service process, known by its pid file and a marker in its command line."""

    name: str
    pid_file: Path
    log_file: Path
    marker: str  # a string unique to this service's command line, guards against pid reuse
    stop_signal: int = signal.SIGTERM

    def pid(self) -> int | None:
        """Pid of the running process, or None (stale pid files are removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        # a live process is read again a few times before its pid file is declared stale: right
        # after a start, one reading failed to match and the live service lost its pid file
        for attempt in range(5):
            if not _alive(pid):
                break
            if self.marker in _cmdline(pid):
                return pid
            time.sleep(0.05 * (attempt + 1))
        self.pid_file.unlink(missing_ok=True)
        return None

    def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        cwd: Path | None = None,
    ) -> int:
        """Start detached in its own session, output appended to the log file."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S%z')} starting {self.name}\n".encode())
            log.flush()
            proc = subprocess.Popen(  # noqa: S603 - argv is built by us, never from user text
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                user=user,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    def wait_ready(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``check`` until true; fail with the log's tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            if self.pid() is None:
                msg = (
                    f"{self.name} exited during start-up ({what}); "
                    f"last lines of {self.log_file}:\n{tail(self.log_file)}"
                )
                raise StackError(msg)
            if check():
                return
            if time.monotonic() > deadline:
                msg = (
                    f"{self.name} was not ready within {timeout:.0f} s ({what}); "
                    f"last lines of {self.log_file}:\n{tail(self.log_file)}"
                )
                raise StackError(msg)
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def stop(self, timeout: float = 30.0) -> bool:
        """Signal the process group, wait, then kill what is left. True if something was running."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.killpg(pid, self.stop_signal)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                break
            time.sleep(0.2)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # the leader is gone; anything left in its process group goes too
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        # reap if it was our own child (status / down in the same process as up)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        self.pid_file.unlink(missing_ok=True)
        return True
