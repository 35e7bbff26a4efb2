"""The state_dir: one daemon at a time (flock), mode 0700, a foreign SQLite file moved aside;
and a clean stop without paho's "Client is not connected" ERROR (real daemons, real signals)."""

from __future__ import annotations

import sqlite3
import stat

from daemon_infra import TOPIC, stop_daemon
from test_fault_matrix import long_clip, rig  # noqa: F401 - fixtures used by name

from focoos_edge.delivery.spool import Spool
from focoos_edge.delivery.spool_files import check_schema


def test_second_daemon_on_the_same_state_dir_exits_naming_the_pid(rig, long_clip):  # noqa: F811 - fixtures
    rig.state_dir.mkdir(mode=0o755)
    rig.state_dir.chmod(0o755)  # as an older version (or an admin) left it
    foreign = rig.state_dir / "spool.db"
    with sqlite3.connect(foreign) as db:  # a valid SQLite file with another program's tables
        db.execute("CREATE TABLE frames (x INTEGER)")
        db.execute("INSERT INTO frames VALUES (1)")
    first = rig.start(long_clip)
    rig.sub.wait_count(f"{TOPIC}/cam/detections", 2, 60, watch=[first])
    assert stat.S_IMODE(rig.state_dir.stat().st_mode) == 0o700
    moved = list(rig.state_dir.glob("spool.db.corrupt-*"))
    assert moved and "moved aside" in first.stderr_text(), first.describe()

    second = rig.restart()
    assert second.wait(60) == 1, second.describe()
    assert f"PID {first.pid}" in second.stderr_text(), second.describe()
    assert first.alive

    mark = rig.sub.count
    stop_daemon(first, rig.sub)
    assert rig.sub.messages(f"{TOPIC}/availability", mark)[-1].payload == "offline"
    # A clean stop: none of paho's "Client is not connected" ERROR lines.
    assert "Client is not connected" not in first.stderr_text(), first.describe()
    assert " ERROR " not in first.stderr_text().split("stopping", 1)[1], first.describe()


def test_spool_schema_version_is_checked(tmp_path):
    db_path = tmp_path / "spool.db"
    Spool(db_path, max_bytes=8 * 1024 * 1024, max_age_s=60).close()
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    spool = Spool(db_path, max_bytes=8 * 1024 * 1024, max_age_s=60)  # a future version's file: moved aside
    try:
        assert spool.quarantined and spool.snapshot().frames.count == 0
        check_schema(spool._db)
    finally:
        spool.close()
