"""journald priorities without python3-systemd: when stderr is the journal stream (JOURNAL_STREAM
names its device:inode), every line starts with "<N>", which journald turns into PRIORITY.
The real journald reads them in tests/test_vm_systemd.py (`journalctl -p warning`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import logging, sys
from focoos_edge.service.logs import setup_logging
setup_logging("debug", secrets=["s3cret-key"])
log = logging.getLogger("focoos_edge.test")
log.debug("a debug line")
log.info("an info line")
log.warning("camera %s lost, key %s", "door", "s3cret-key")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("an error with a traceback")
"""


def _run(tmp_path: Path, journal: bool) -> list[str]:
    """The child's stderr lines; JOURNAL_STREAM names that very file when `journal`."""
    err = tmp_path / "stderr"
    with err.open("wb") as sink:
        info = os.fstat(sink.fileno())
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}" if journal else f"{info.st_dev}:{info.st_ino + 1}"
        subprocess.run([sys.executable, "-c", SCRIPT], stderr=sink, env=env, timeout=60, check=True)
    return err.read_text().splitlines()


def test_lines_carry_the_syslog_priority_when_stderr_is_the_journal(tmp_path: Path) -> None:
    lines = _run(tmp_path, journal=True)
    assert lines[0] == "<7>DEBUG focoos_edge.test: a debug line"
    assert lines[1] == "<6>INFO focoos_edge.test: an info line"
    assert lines[2] == "<4>WARNING focoos_edge.test: camera door lost, key ***"
    assert lines[3] == "<3>ERROR focoos_edge.test: an error with a traceback"
    # The traceback's own lines keep the error priority (journald reads a prefix per line).
    assert len(lines) > 4 and all(line.startswith("<3>") for line in lines[3:])
    assert lines[-1] == "<3>ZeroDivisionError: division by zero"


def test_no_prefix_but_a_timestamp_when_stderr_is_not_that_stream(tmp_path: Path) -> None:
    """A child whose stderr was redirected inherits JOURNAL_STREAM: it must not write "<N>"."""
    lines = _run(tmp_path, journal=False)
    assert not any(line.startswith("<") for line in lines)
    assert " WARNING focoos_edge.test: camera door lost, key ***" in lines[2]
    assert lines[2][:4].isdigit()  # asctime
