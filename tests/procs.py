"""Real helper processes for the tests: waits, child processes, servers that can be restarted.

Everything listens on 127.0.0.1 only, on free ports. Every wait has a timeout and fails with a
message that includes the captured stderr tail of the process concerned, because on a noisy CI
machine "timed out" alone says nothing. Children write stdout/stderr to files (never pipes, which
block a child whose reader is slow) and run in their own session, so Ctrl+C in pytest does not
reach them; the conftest fixtures terminate them at teardown.

To keep modules small the servers live next door and are re-exported here, so tests need
only ``from procs import ...``: ``mqtt_infra.py`` (Mosquitto, MqttSubscriber, Message,
topic_matches) and ``rtsp_infra.py`` (RtspServer, rtsp_options_ok).
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
STDERR_TAIL_BYTES = 3000


class InfraError(RuntimeError):
    """A helper process or tool could not be started or used."""


class WaitTimeout(AssertionError):
    """A wait ran out of time (an AssertionError, so pytest reports a failure, not an error)."""


class ProcessExited(AssertionError):
    """A process a wait was watching exited before the wait was over."""


def check_alive(watch: Sequence[ChildProcess], waiting_for: str) -> None:
    """Raise ProcessExited (with its stderr tail) if any watched process has exited."""
    __tracebackhide__ = True
    for proc in watch:
        if not proc.alive:
            raise ProcessExited(f"{proc.describe()}\nexited while waiting for {waiting_for}")


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_accepts(port: int, host: str = LOOPBACK, timeout_s: float = 0.5) -> bool:
    """True if a TCP connection to host:port succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], Any],
    timeout_s: float,
    interval_s: float = 0.05,
    message: str | Callable[[], str] = "",
    watch: Sequence[ChildProcess] = (),
) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that value.

    ``message`` (a string, or a callable evaluated only on failure so it can show fresh
    stderr) goes into the WaitTimeout. A predicate may raise to abort the wait early; so
    does the exit of any ``watch`` process (ProcessExited, e.g. the daemon under test died).
    """
    __tracebackhide__ = True  # pytest: show the caller's line, not this helper's
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        expired = time.monotonic() >= deadline
        if expired or not all(proc.alive for proc in watch):
            text = (message() if callable(message) else message) or repr(predicate)
            check_alive(watch, text)
            raise WaitTimeout(f"timed out after {timeout_s:.1f} s: {text}")
        # A poll with nothing to wake it early: the only reason to stop is the deadline.
        time.sleep(interval_s)


def wait_for_port(
    port: int, timeout_s: float, proc: ChildProcess | None = None, host: str = LOOPBACK
) -> None:
    """Wait until host:port accepts TCP connections; fail at once if ``proc`` dies meanwhile."""
    __tracebackhide__ = True

    def ready() -> bool:
        if proc is not None and not proc.alive:
            raise InfraError(f"{proc.describe()}\nexited while waiting for port {port}")
        return port_accepts(port, host)

    wait_until(
        ready,
        timeout_s,
        message=lambda: f"port {host}:{port} never accepted a connection"
        + (f"\n{proc.describe()}" if proc else ""),
    )


def require_tool(name: str, apt_package: str) -> str:
    """Path of an executable, or InfraError naming the apt package that provides it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise InfraError(f"{name} not found: install it with `apt-get install -y {apt_package}`")
    return path


class ChildProcess:
    """A started command whose stdout/stderr go to files; usable as a context manager.

    ``returncode`` is negative for a signal (``-9`` after SIGKILL), as in ``subprocess``.
    """

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        name: str,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.cmd = [str(part) for part in cmd]
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = _fresh_log_paths(log_dir, name)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            try:
                self._popen = subprocess.Popen(
                    self.cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise InfraError(f"cannot start {name} ({self.cmd[0]}): {exc}") from exc
        log.debug("started %s pid %d: %s", name, self._popen.pid, self.cmd)

    @property
    def pid(self) -> int:
        """Process id."""
        return self._popen.pid

    @property
    def alive(self) -> bool:
        """True while the process has not exited."""
        return self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status, None while running."""
        return self._popen.poll()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process (only the process, not its group)."""
        if not self.alive:
            raise InfraError(f"cannot send signal {sig}: {self.describe()}")
        os.kill(self.pid, sig)

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to exit and return its status."""
        __tracebackhide__ = True
        try:
            return self._popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise WaitTimeout(
                f"{self.describe()}\ndid not exit within {timeout_s:.1f} s"
            ) from None

    def kill(self, timeout_s: float = 5.0) -> int:
        """SIGKILL the process group (the process and anything it started) and reap it."""
        if self.alive:
            self._kill_group()
        return self.wait(timeout_s)

    def terminate(self, timeout_s: float = 5.0) -> int:
        """SIGTERM, then SIGKILL if still running after ``timeout_s``; returns the exit status."""
        if self.alive:
            self._popen.send_signal(signal.SIGTERM)
            try:
                return self._popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.1f s: killing it", self.name, timeout_s)
                self._kill_group()
        return self.wait(timeout_s)

    def _kill_group(self) -> None:
        # Only while the leader is unreaped: its pid (= the group id) cannot have been reused.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stdout_text(self, tail_bytes: int | None = None) -> str:
        """What the process wrote to stdout (the last ``tail_bytes`` if given)."""
        return _read_text(self.stdout_path, tail_bytes)

    def stderr_text(self, tail_bytes: int | None = None) -> str:
        """What the process wrote to stderr (the last ``tail_bytes`` if given)."""
        return _read_text(self.stderr_path, tail_bytes)

    def cpu_seconds(self) -> float:
        """User + system CPU time consumed so far (from /proc/PID/stat; live processes only)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return ticks / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        """Resident set size now (from /proc/PID/status)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise InfraError(f"no VmRSS for {self.name} (pid {self.pid})")

    def describe(self, tail_bytes: int = STDERR_TAIL_BYTES) -> str:
        """One paragraph for failure messages: name, pid, state, stderr tail (stdout if empty)."""
        code = self.returncode
        state = "running" if code is None else f"exited with status {code}"
        stream, tail = "stderr", self.stderr_text(tail_bytes).strip()
        if not tail:
            stream, tail = "stdout", self.stdout_text(tail_bytes).strip()
        return f"{self.name} (pid {self.pid}, {state}); {stream} tail:\n{tail or '<empty>'}"

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"<ChildProcess {self.name} pid={self.pid} returncode={self.returncode}>"


def _fresh_log_paths(log_dir: Path, name: str) -> tuple[Path, Path]:
    """stdout/stderr paths not used before, so a restarted process keeps its predecessor's logs."""
    for n in range(1000):
        base = log_dir / (name if n == 0 else f"{name}.{n}")
        out = base.with_name(base.name + ".stdout.log")
        err = base.with_name(base.name + ".stderr.log")
        if not out.exists() and not err.exists():
            return out, err
    raise InfraError(f"too many {name} logs in {log_dir}")


def _read_text(path: Path, tail_bytes: int | None) -> str:
    with open(path, "rb") as fh:
        if tail_bytes is not None:
            fh.seek(max(0, path.stat().st_size - tail_bytes))
        return fh.read().decode("utf-8", errors="replace")


class RestartableServer:
    """A server process that can be killed and started again on the same port."""

    name = "server"
    port: int
    proc: ChildProcess | None = None

    def start(self) -> Any:
        """Start the process and return once it serves."""
        raise NotImplementedError

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.alive

    def kill(self) -> None:
        """SIGKILL (an outage: no clean shutdown, connections reset)."""
        if self.proc is not None:
            self.proc.kill()

    def terminate(self, timeout_s: float = 5.0) -> None:
        """SIGTERM (SIGKILL after ``timeout_s``)."""
        if self.proc is not None:
            self.proc.terminate(timeout_s)

    def restart(self) -> Any:
        """Kill if running, then start again on the same port."""
        self.kill()
        return self.start()

    def describe(self) -> str:
        """Failure-message paragraph about the current process."""
        return self.proc.describe() if self.proc else f"{self.name} (never started)"

    def _check_not_running(self) -> None:
        if self.alive:
            raise InfraError(f"{self.name} on port {self.port} is already running")


class ProcessRegistry:
    """What a test started: stopped in reverse order at teardown, described on failure."""

    def __init__(self) -> None:
        self.items: list[tuple[object, Callable[[], object]]] = []

    def add(self, item: object, stop: Callable[[], object]) -> None:
        """Track ``item``; ``stop`` is called at teardown."""
        self.items.append((item, stop))

    def stop_all(self) -> list[str]:
        """Stop everything (even if one stop fails); return the failures."""
        errors = []
        for item, stop in reversed(self.items):
            try:
                stop()
            except Exception as exc:  # keep stopping the others; the caller reports these
                errors.append(f"{item!r}: {exc}")
        return errors

    def sections(self) -> list[tuple[str, str]]:
        """(title, text) per process, for a failed test's report."""
        return [(f"infra: {_name(item)}", _describe(item)) for item, _ in self.items]


def _name(item: object) -> str:
    return str(getattr(item, "name", type(item).__name__))


def _describe(item: object) -> str:
    describe = getattr(item, "describe", None)
    try:
        return describe() if describe else repr(item)
    except OSError as exc:  # a report section must never break the report
        return f"{item!r} (cannot describe: {exc})"


_REEXPORTS = {
    "Mosquitto": "mqtt_infra",
    "MqttSubscriber": "mqtt_infra",
    "Message": "mqtt_infra",
    "topic_matches": "mqtt_infra",
    "RtspServer": "rtsp_infra",
    "rtsp_options_ok": "rtsp_infra",
    "rtsp_describe_status": "rtsp_infra",
}


def __getattr__(name: str) -> Any:
    """Lazy re-exports (PEP 562): those modules import this one, so no import at load time."""
    module = _REEXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "ChildProcess",
    "InfraError",
    "ProcessExited",
    "ProcessRegistry",
    "RestartableServer",
    "WaitTimeout",
    "check_alive",
    "free_port",
    "port_accepts",
    "require_tool",
    "wait_for_port",
    "wait_until",
    *_REEXPORTS,
]
