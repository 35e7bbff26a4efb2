"""`focoos-edge reload --pid PID` (the unit's ExecReload): SIGHUP, then the daemon's answer through
$RUNTIME_DIRECTORY/reload; exit 0 when applied, 1 when the config was refused (the daemon keeps
running the old one). Real daemon, broker and inference server; the real systemd runs the same in
tests/test_vm_systemd.py."""

from __future__ import annotations

import os
import subprocess
import sys

from daemon_infra import TOPIC, daemon_command, daemon_config, stop_daemon


def _reload(pid: int, runtime: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "focoos_edge", "reload", "--pid", str(pid), "--timeout", "60"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RUNTIME_DIRECTORY": runtime})


def test_reload_waits_for_the_daemons_answer(marker_clip, local_server, mosquitto, mqtt_sub, spawn, tmp_path):
    sub = mqtt_sub(mosquitto.port, "focoos/#")
    runtime = tmp_path / "run"
    runtime.mkdir()
    config = daemon_config(tmp_path, api_url=local_server.url, mqtt_port=mosquitto.port,
                           cameras=[{"name": "a", "source": f"file://{marker_clip.path}", "sample_fps": 2}])
    daemon = spawn(daemon_command(config), name="daemon", env={**os.environ, "RUNTIME_DIRECTORY": str(runtime)})
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/a/detections", 30, "detections", watch=[daemon])

    applied = _reload(daemon.pid, str(runtime))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "focoos-edge: reload 1 applied"
    assert "reload 1 applied" in daemon.stderr_text()  # answered after the daemon applied it

    config.write_text(config.read_text() + "\nbogus_key: 1\n")
    refused = _reload(daemon.pid, str(runtime))
    assert refused.returncode == 1 and "refused" in refused.stderr, refused.stderr
    assert (runtime / "reload").read_text() == "2 refused\n"
    mark = sub.count
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/a/detections", 20, "still running the old config", since=mark)
    stop_daemon(daemon, sub)


def test_reload_of_a_missing_process_fails(tmp_path):
    result = _reload(99999999, str(tmp_path))  # above the kernel's pid_max: no such process
    assert result.returncode == 1 and "no process 99999999" in result.stderr
